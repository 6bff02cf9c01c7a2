"""Sampling filters and KV-cached generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neoxcli.config.schema import ModelConfig
from neoxcli.generation import filter_logits, generate, sample_next
from neoxcli.model import GPTModel

V = 64


def model(pos_emb: str = "rotary", seq_length: int = 32) -> GPTModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=seq_length, pos_emb=pos_emb
    )
    return GPTModel(cfg, V)


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.9)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_top_k_and_top_p_per_row() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=1))
    assert kept.tolist() == [[False, False, True], [True, False, False]]


def test_sample_next_greedy_and_filtered() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0.0).tolist() == [1, 0]
    assert sample_next(logits, greedy=True).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits[:1], temperature=1.0, top_k=2, generator=g)[0]) for _ in range(200)}
    assert draws == {1, 2}


def test_sampling_is_deterministic_under_seed_and_ignores_global_rng() -> None:
    m = model()
    a = generate(m, [1, 2, 3], 12, temperature=1.0, seed=7)
    torch.manual_seed(123)
    torch.rand(10)
    b = generate(m, [1, 2, 3], 12, temperature=1.0, seed=7)
    c = generate(m, [1, 2, 3], 12, temperature=1.0, seed=8)
    assert a == b and len(a) == 12
    assert a != c


def test_greedy_generation_matches_full_forward_argmax() -> None:
    m = model().eval()
    prompt = [5, 9, 2, 11]
    out = generate(m, prompt, 10, greedy=True)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt) :]


def test_eos_stops_and_stream_sees_tokens() -> None:
    m = model()
    first = generate(m, [1, 2], 6, temperature=1.0, seed=3)
    cut = next(i for i in range(1, 6) if first[i] not in first[:i])
    seen: list[int] = []
    out = generate(m, [1, 2], 6, temperature=1.0, seed=3, eos_id=first[cut], stream=seen.append)
    assert out == first[:cut] == seen


def test_prompt_is_truncated_to_fit_context() -> None:
    m = model(pos_emb="learned", seq_length=16)
    long_prompt = list(range(1, 40))
    out = generate(m, long_prompt, 5, greedy=True)
    assert out == generate(m, long_prompt[-11:], 5, greedy=True)
    # Asking for more than the context holds stops when it is full: 3 prompt tokens, 13 fed, 1 more drawn.
    assert len(generate(m, [1, 2, 3], 100, greedy=True)) == 14


def test_asking_for_many_tokens_keeps_the_prompt() -> None:
    """max_new_tokens >= the context must not cut the prompt down to its last token."""
    m = model(pos_emb="learned", seq_length=16)
    prompt = [7, 3, 9, 5]
    out = generate(m, prompt, 100, greedy=True)
    assert len(out) == 16 - len(prompt) + 1  # the whole prompt holds positions
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(out)):
            ids.append(int(m(torch.tensor([ids[-16:]]))[0, -1].argmax()))
    assert out == ids[len(prompt) :]
    # A prompt longer than half the context keeps half of it, not one token.
    long_prompt = list(range(1, 40))
    assert len(generate(m, long_prompt, 100, greedy=True)) == 16 - 8 + 1


def test_generate_restores_training_mode() -> None:
    m = model().train()
    generate(m, torch.tensor([[1, 2]]), 2, seed=0)
    assert m.training


def test_generate_arguments_are_checked_before_the_checkpoint_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreadable prompt files, unwritable outputs and ignored options are one error line each."""
    from neoxcli.cli import main

    ckpt = str(tmp_path / "no-checkpoint")  # never reached: each argument error comes first
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "prompts.txt").write_text("a\n")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--input-file", str(tmp_path / "empty.txt")], "holds no prompts"),
        (["--input-file", str(tmp_path / "latin1.txt")], "not UTF-8"),
        (["-p", "x", "--output-file", str(tmp_path / "outdir")], "is a directory"),
        (["-p", "x", "--output-file", str(tmp_path / "afile" / "o.jsonl")], "is a file"),
        (["-i", "-p", "x"], "--interactive"),
        (["-p", "x", "--input-file", str(tmp_path / "prompts.txt")], "not both"),
    ]
    for args, message in cases:
        assert main(["generate", "-c", ckpt, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "afile",
        "empty.txt",
        "latin1.txt",
        "outdir",
        "prompts.txt",
    ]


BATCH_MODELS = {
    "rotary": dict(pos_emb="rotary", rotary_pct=0.5),
    "alibi": dict(pos_emb="alibi"),
    "learned": dict(pos_emb="learned", activation="gelu_tanh"),
    "gqa-swiglu": dict(pos_emb="rotary", num_kv_heads=2, activation="swiglu", norm="rmsnorm"),
    "local": dict(pos_emb="alibi", attention_config=[[["global", "local"], 1]], sliding_window_width=8),
}


@pytest.mark.parametrize("variant", sorted(BATCH_MODELS))
@pytest.mark.parametrize("greedy", [True, False])
def test_batched_generation_equals_each_prompt_alone(variant: str, greedy: bool) -> None:
    """8 prompts of different lengths in one left-padded batch give exactly the tokens each gets alone."""
    from neoxcli.generation import generate_batch

    torch.manual_seed(0)
    cfg = ModelConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, **BATCH_MODELS[variant]
    )
    net = GPTModel(cfg, V).eval()
    rng = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, V, (n,), generator=rng).tolist() for n in (1, 5, 3, 12, 7, 2, 20, 9)]
    seeds = list(range(100, 108))
    opts = dict(greedy=greedy, temperature=0.9, top_k=20, eos_id=1, min_new_tokens=2)
    batched = generate_batch(net, prompts, 10, seeds=seeds, **opts)
    for prompt, seed, got in zip(prompts, seeds, batched, strict=True):
        (alone,) = generate_batch(net, [prompt], 10, seeds=[seed], **opts)
        assert got.tokens == alone.tokens and got.reason == alone.reason
    # and the one-prompt API is the same decode loop
    plain = generate_batch(net, prompts[:3], 10, seeds=seeds[:3], greedy=greedy, temperature=0.9, top_k=20)
    for prompt, seed, got in zip(prompts, seeds, plain, strict=False):
        assert got.tokens == generate(net, prompt, 10, seed=seed, greedy=greedy, temperature=0.9, top_k=20)


def test_batch_rows_stop_at_eod_stop_rule_and_context() -> None:
    from neoxcli.generation import generate_batch

    net = model(pos_emb="learned", seq_length=16).eval()
    first = generate(net, [3, 4, 5], 1, greedy=True)[0]
    out = generate_batch(
        net,
        [[3, 4, 5], [3, 4, 5], list(range(2, 12))],
        12,
        greedy=True,
        eos_id=first,
        should_stop=lambda row, toks: row == 1 and len(toks) == 2,
    )
    assert out[0].tokens == [] and out[0].reason == "eod" and out[0].finished
    # 12 new tokens do not fit: the prompt keeps half the context (8 of 10), then positions 8..15 are fed
    assert (out[2].prompt_tokens, out[2].truncated_prompt) == (8, 2)
    assert len(out[2].tokens) == 9 and out[2].reason == "context"
    assert out[1].reason in ("eod", "stop")


def test_repetition_penalty_discourages_seen_tokens() -> None:
    from neoxcli.generation.decode import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, [0, 1], 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


@pytest.mark.parametrize("variant", ["rotary", "alibi", "learned"])
def test_recompute_gives_the_cached_tokens(variant: str) -> None:
    """GPT-NeoX's recompute: no KV cache, the whole sequence every step; greedy tokens are the same."""
    from neoxcli.generation import generate_batch

    torch.manual_seed(0)
    cfg = ModelConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, **BATCH_MODELS[variant]
    )
    net = GPTModel(cfg, V).eval()
    prompts = [[5, 6, 7], [9] * 11, [3, 4]]
    cached = generate_batch(net, prompts, 12, greedy=True)
    again = generate_batch(net, prompts, 12, greedy=True, recompute=True)
    assert [c.tokens for c in cached] == [r.tokens for r in again]
