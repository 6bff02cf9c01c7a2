"""The static-cache decode step and its compiled form give the eager loop's tokens."""

from __future__ import annotations

import pytest
import torch

from neoxcli.config.schema import ModelConfig
from neoxcli.generation import generate_batch
from neoxcli.generation.decode import CompiledStep, static_supported
from neoxcli.model import GPTModel

V = 64
VARIANTS = {
    "rotary": dict(pos_emb="rotary", rotary_pct=0.5),
    "learned": dict(pos_emb="learned"),
    "gqa-swiglu": dict(pos_emb="rotary", num_kv_heads=2, activation="swiglu", norm="rmsnorm"),
}
LENGTHS = (1, 5, 3, 12, 7, 2, 20, 9)


def _net(layers: int = 2, **kw: object) -> GPTModel:
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=layers, hidden_size=32, num_attention_heads=4, seq_length=32, **kw)
    return GPTModel(cfg, V).eval()


def _prompts() -> list[list[int]]:
    rng = torch.Generator().manual_seed(1)
    return [torch.randint(2, V, (n,), generator=rng).tolist() for n in LENGTHS]


def _tokens(done: list) -> list[tuple[list[int], str]]:
    return [(c.tokens, c.reason) for c in done]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("greedy", [True, False])
def test_static_cache_step_equals_the_eager_loop(variant: str, greedy: bool) -> None:
    """Fixed shapes (rows masked, not removed; a scratch column) change no token, padded or sampled."""
    net = _net(**VARIANTS[variant])
    opts = dict(greedy=greedy, temperature=0.9, top_k=20, eos_id=1, min_new_tokens=2, seeds=list(range(8)))
    step = CompiledStep(net, enabled=False)
    # The second batch reuses the first one's cache buffers: what they still hold is never attended.
    for prompts in (_prompts(), [p[::-1] for p in reversed(_prompts())]):
        eager = generate_batch(net, prompts, 10, **opts)
        static = generate_batch(net, prompts, 10, step=step, **opts)
        assert _tokens(static) == _tokens(eager)
        assert any(len(c.tokens) == 10 for c in eager)  # the comparison covers full-length rows


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compiled_step_compiles_once_for_the_whole_generation(variant: str) -> None:
    """One graph for every decode step of a batch (no graph break, no per-step recompiles), eager tokens.

    A graph break inside the block loop (an op dynamo cannot trace, e.g. in rotary) makes dynamo skip
    the step and compile each block on its own, once per layer index: slower than eager at batch 8.
    """
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = _net(**VARIANTS[variant])
    counter = CompileCounter()
    step = CompiledStep(net, backend=counter)
    got = generate_batch(net, _prompts(), 12, greedy=True, step=step)
    assert counter.frame_count == 1 and counter.op_count > 0
    assert _tokens(got) == _tokens(generate_batch(net, _prompts(), 12, greedy=True))


def test_a_failing_compile_warns_once_and_decodes_eagerly(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_gm: object, _inputs: object) -> object:
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    net = _net()
    step = CompiledStep(net, backend=broken)
    first = generate_batch(net, _prompts(), 6, greedy=True, step=step)
    again = generate_batch(net, _prompts(), 6, greedy=True, step=step)
    eager = generate_batch(net, _prompts(), 6, greedy=True)
    assert _tokens(first) == _tokens(again) == _tokens(eager)
    err = capsys.readouterr().err
    assert err.count("warning: --compile") == 1 and "no compiler here" in err


def test_models_without_an_exact_static_step_decode_eagerly() -> None:
    alibi = _net(pos_emb="alibi")
    assert static_supported(alibi) == "ALiBi" and static_supported(_net()) is None
    prompts = _prompts()[:3]
    assert _tokens(generate_batch(alibi, prompts, 6, greedy=True, compile=True)) == _tokens(
        generate_batch(alibi, prompts, 6, greedy=True)
    )


@pytest.mark.slow
def test_inductor_compiled_greedy_tokens_equal_eager() -> None:
    """The real compiler (inductor, C++ on CPU). About 15 s with its cache warm, 60-100 s cold on 2 busy cores."""
    torch._dynamo.reset()
    net = _net(layers=1, pos_emb="rotary", rotary_pct=0.5)
    prompts = [[5, 6, 7], [9] * 11, [3, 4]]
    step = CompiledStep(net)
    got = generate_batch(net, prompts, 12, greedy=True, step=step)
    assert not step.failed, "inductor could not compile the decode step on this machine"
    assert _tokens(got) == _tokens(generate_batch(net, prompts, 12, greedy=True))
