"""Our lm-eval adapter against lm-eval's own ``hf`` backend on the Hugging Face export of the same checkpoint.

Every request of every output type (multiple_choice, loglikelihood,
loglikelihood_rolling, generate_until) must come back identical, not close:
fp32 on CPU, at batch size 1 and 4. The model is GPT-NeoX-shaped (Pythia's
block) and its context (64) is shorter than the longest rolling documents and
few-shot prompts, so truncation and multi-window scoring are exercised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from eval_tasks import write_checkpoint, write_tasks  # noqa: E402

from neoxcli.checkpoint import load_for_inference  # noqa: E402
from neoxcli.convert.cli_ops import export_hf  # noqa: E402
from neoxcli.evaluation.adapter import NeoxLM  # noqa: E402
from neoxcli.evaluation.tasks import _env_info_once  # noqa: E402

TASKS = ["tiny_mc", "tiny_ll", "tiny_rolling", "tiny_gen"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads, and loses much on a busy machine
    root = tmp_path_factory.mktemp("parity")
    run = write_checkpoint(root / "run")
    export_hf(run, root / "hf")
    yield {"run": run, "hf": root / "hf", "tasks": write_tasks(root / "tasks")}
    torch.set_num_threads(threads)


def responses(out: dict[str, Any]) -> dict[str, list[Any]]:
    """task -> each request's raw response, in document and request order."""
    found = {}
    for task, samples in out["samples"].items():
        found[task] = [(s["doc_id"], s["resps"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    return found


def evaluate(model: Any, paths: list[str], batch_size: int, **kw: Any) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=None, include_defaults=False)
    with _env_info_once():  # lm-eval's environment probe costs seconds per call
        return lm_eval.simple_evaluate(
            model=model,
            tasks=paths,
            batch_size=batch_size,
            device="cpu",
            log_samples=True,
            bootstrap_iters=0,
            task_manager=tm,
            **kw,
        )


@pytest.mark.parametrize("batch_size", [1, 4])
def test_every_request_matches_the_hf_backend(setup: dict[str, Any], batch_size: int) -> None:
    paths = [str(setup["tasks"][t]) for t in TASKS]
    theirs = evaluate("hf", paths, batch_size, model_args=f"pretrained={setup['hf']},dtype=float32")
    model, tokenizer, _ = load_for_inference(setup["run"])
    ours = evaluate(NeoxLM(model, tokenizer, batch_size=batch_size), paths, batch_size)

    a, b = responses(ours), responses(theirs)
    assert sorted(a) == sorted(TASKS)
    for task in TASKS:
        assert len(a[task]) == len(b[task]) > 0
        for mine, ref in zip(a[task], b[task], strict=True):
            assert mine == ref, f"{task}: {mine} != {ref}"
    for task in TASKS:
        assert ours["results"][task] == theirs["results"][task] or _same_metrics(
            ours["results"][task], theirs["results"][task]
        )
    gen = [r for _, r in a["tiny_gen"]]
    assert any(r[0][0] for r in gen), "generation produced only empty strings"


def test_few_shot_prompts_longer_than_the_context_match(setup: dict[str, Any]) -> None:
    """Three-shot prompts overflow the 64-token context: both sides truncate from the left alike."""
    paths = [str(setup["tasks"][t]) for t in ("tiny_mc", "tiny_gen")]
    theirs = evaluate("hf", paths, 4, model_args=f"pretrained={setup['hf']},dtype=float32", num_fewshot=3)
    model, tokenizer, _ = load_for_inference(setup["run"])
    ours = evaluate(NeoxLM(model, tokenizer, batch_size=4), paths, 4, num_fewshot=3)
    assert responses(ours) == responses(theirs)


def _same_metrics(x: dict[str, Any], y: dict[str, Any]) -> bool:
    keys = [k for k in x if k != "alias"]
    return all(x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]) for k in keys)
