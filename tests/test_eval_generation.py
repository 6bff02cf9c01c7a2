"""The adapter's ``generate_until``: contexts of different lengths share a batch and decode as they would alone.

Rows are left-padded under the model's key mask (``neoxcli.generation.decode``),
so greedy and sampled generations at batch 4 equal those at batch 1, while the
number of decode batches drops to ``ceil(n / 4)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("lm_eval")

from eval_tasks import sentence, write_checkpoint  # noqa: E402

from neoxcli.checkpoint import load_for_inference  # noqa: E402


class _Request:
    """What lm-eval hands a model: ``args`` = (context, generation kwargs)."""

    def __init__(self, context: str, kwargs: dict[str, Any]) -> None:
        self.args = (context, kwargs)


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads
    model, tokenizer, _ = load_for_inference(write_checkpoint(tmp_path_factory.mktemp("gen") / "run"))
    yield model, tokenizer
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"until": ["."], "max_gen_toks": 10, "do_sample": False},
        {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 0.9, "top_k": 20},
    ],
    ids=["greedy", "sampled"],
)
def test_mixed_length_batches_decode_like_single_rows(
    model_and_tokenizer: tuple[Any, Any], kwargs: dict[str, Any]
) -> None:
    from neoxcli.evaluation.adapter import NeoxLM

    model, tokenizer = model_and_tokenizer
    contexts = [sentence(i, 1 + 3 * i) for i in range(7)]  # 7 different token lengths
    lengths = {len(tokenizer.encode(c)) for c in contexts}
    assert len(lengths) == len(contexts)
    requests = [_Request(c, dict(kwargs)) for c in contexts]

    alone = NeoxLM(model, tokenizer, batch_size=1, seed=7)
    batched = NeoxLM(model, tokenizer, batch_size=4, seed=7)
    expected = alone.generate_until(requests)
    got = batched.generate_until(requests)
    assert got == expected
    assert any(expected), "every generation came back empty"
    assert (alone.generation_batches, batched.generation_batches) == (7, 2)


def test_settings_never_share_a_batch(model_and_tokenizer: tuple[Any, Any]) -> None:
    """Requests with different stop strings or lengths go to different batches, each in request order."""
    from neoxcli.evaluation.adapter import NeoxLM

    model, tokenizer = model_and_tokenizer
    a = {"until": ["."], "max_gen_toks": 6}
    b = {"until": ["\n"], "max_gen_toks": 4}
    requests = [_Request(sentence(i, 2 + i), dict(a if i % 2 else b)) for i in range(6)]
    lm = NeoxLM(model, tokenizer, batch_size=8)
    got = lm.generate_until(requests)
    assert lm.generation_batches == 2
    single = [NeoxLM(model, tokenizer, batch_size=1).generate_until([r])[0] for r in requests]
    assert got == single
