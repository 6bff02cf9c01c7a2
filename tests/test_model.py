"""Unit tests of the transformer: shapes, masks, positions, cache, init and counts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model_config

from neoxcli.config.schema import ModelConfig
from neoxcli.model import GPTModel, KVCache, RotaryEmbedding, alibi_slopes, mlp_width, num_parameters

V = 96


tiny = tiny_model_config


VARIANTS = {
    "rotary-parallel": dict(gpt_j_residual=True, rotary_pct=0.25),
    "rotary-tied-ln": dict(gpt_j_residual=True, gpt_j_tied=True, activation="gelu", bias_gelu_fusion=True),
    "learned-gpt2": dict(pos_emb="learned", activation="gelu_tanh"),
    "sinusoidal-relu": dict(pos_emb="sinusoidal", activation="relu"),
    "none": dict(pos_emb="none"),
    "alibi": dict(pos_emb="alibi", num_attention_heads=8, hidden_size=48),
    "alibi-6-heads": dict(pos_emb="alibi", num_attention_heads=6, hidden_size=48),
    "llama-gqa": dict(
        norm="rmsnorm",
        activation="swiglu",
        num_kv_heads=2,
        use_bias_in_norms=False,
        use_bias_in_attn_linear=False,
        use_bias_in_mlp=False,
        no_weight_tying=True,
        rotary_pct=1.0,
    ),
    "geglu-mqa": dict(activation="geglu", num_kv_heads=1, mlp_multiple_of=16),
    "local-global": dict(attention_config=[[["local", "global"], 1]], sliding_window_width=4),
    "gptj-bias-head": dict(gpt_j_tied=True, use_bias_in_output_layer=True, no_weight_tying=True),
}


def build(cfg: ModelConfig, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(cfg, V).eval()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shapes_and_backward(name: str) -> None:
    model = build(tiny(**VARIANTS[name]))
    ids = torch.randint(0, V, (3, 11))
    logits = model(ids)
    assert logits.shape == (3, 11, V) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_layers_are_flat_with_readable_keys() -> None:
    cfg = tiny(num_layers=3, no_weight_tying=True)
    model = build(cfg)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["EmbeddingLayer", "Block", "Block", "Block", "FinalNorm", "Head"]
    keys = set(model.state_dict())
    assert "layers.0.word_embeddings.weight" in keys
    assert "layers.3.attention.query_key_value.weight" in keys
    assert "layers.4.norm.weight" in keys and "layers.5.final_linear.weight" in keys
    # Running the flat sequence by hand gives the model's output (what a pipeline stage does).
    ids = torch.randint(0, V, (1, 7))
    pos = torch.arange(7)[None]
    x = model.layers[0](ids, pos)
    for blk in model.layers[1:-2]:
        x = blk(x, pos)
    x = model.layers[-1](model.layers[-2](x))
    torch.testing.assert_close(x, model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["rotary-parallel", "learned-gpt2", "alibi", "local-global", "llama-gqa"])
def test_causal(name: str) -> None:
    model = build(tiny(**VARIANTS[name]))
    ids = torch.randint(0, V, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_local_attention_band() -> None:
    """A local layer sees exactly the last `sliding_window_width` positions."""
    cfg = tiny(num_layers=1, attention_config=[[["local"], 1]], sliding_window_width=3)
    attn = build(cfg).layers[1].attention
    mask, causal = attn._mask(6, 6, torch.device("cpu"), torch.float32)
    assert not causal
    expected = torch.tensor(
        [[1 if 0 <= i - j < 3 else 0 for j in range(6)] for i in range(6)], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    # One local layer: the first token stops mattering once it leaves every window.
    model = build(cfg)
    ids = torch.randint(0, V, (1, 10))
    other = ids.clone()
    other[0, 0] = (other[0, 0] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(other)
    assert not torch.allclose(a[:, :3], b[:, :3])
    assert torch.allclose(a[:, 3:], b[:, 3:])


def test_alibi_slopes() -> None:
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    six = alibi_slopes(6)  # 4 from the power-of-two series of 4, then 2 odd-indexed ones of 8
    expected = [2.0 ** -(2 * (i + 1)) for i in range(4)] + [2.0**-1, 2.0**-3]
    assert torch.allclose(six, torch.tensor(expected))
    attn = build(tiny(pos_emb="alibi", num_layers=1)).layers[1].attention
    bias, _ = attn._mask(4, 4, torch.device("cpu"), torch.float32)
    assert bias.shape == (1, 4, 4, 4)
    assert bias[0, 0, 3, 1].item() == pytest.approx(-alibi_slopes(4)[0].item() * 2)
    assert bias[0, 1, 1, 2].item() == float("-inf")


def test_rotary_partial_rotates_only_its_channels() -> None:
    rope = RotaryEmbedding(dim=4, base=10000.0)
    x = torch.randn(1, 1, 5, 8)
    cos, sin = rope.cos_sin(torch.arange(5)[None])
    y = rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])  # pass-through channels untouched
    # Rotate-half pairs channel i with i + dim/2 and turns it by pos * base^(-2i/dim).
    for pos in range(5):
        for i in range(2):
            theta = pos * 10000.0 ** (-2 * i / 4)
            a, b = x[0, 0, pos, i], x[0, 0, pos, i + 2]
            assert y[0, 0, pos, i].item() == pytest.approx(
                (a * math.cos(theta) - b * math.sin(theta)).item(), abs=1e-5
            )
            assert y[0, 0, pos, i + 2].item() == pytest.approx(
                (b * math.cos(theta) + a * math.sin(theta)).item(), abs=1e-5
            )


def test_rotary_scores_depend_on_relative_position() -> None:
    rope = RotaryEmbedding(dim=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope.cos_sin(torch.tensor([[pq]]))
        ck, sk = rope.cos_sin(torch.tensor([[pk]]))
        return (rope(q, cq, sq) * rope(k, ck, sk)).sum().item()

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)


@pytest.mark.parametrize(
    "name", ["rotary-parallel", "learned-gpt2", "alibi", "local-global", "llama-gqa", "sinusoidal-relu"]
)
def test_kv_cache_matches_full_forward(name: str) -> None:
    model = build(tiny(**VARIANTS[name]))
    ids = torch.randint(0, V, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_kv_cache(batch_size=2, max_len=16)
        steps = [model(ids[:, :5], kv_cache=cache)]  # prefill
        steps.append(model(ids[:, 5:9], kv_cache=cache, start_pos=5))  # a chunk after a prefix
        for t in range(9, 14):  # then one token at a time
            steps.append(model(ids[:, t : t + 1], kv_cache=cache, start_pos=t))
    incremental = torch.cat(steps, dim=1)
    assert (incremental - full).abs().max().item() < 1e-5


def test_kv_cache_overflow_is_an_error() -> None:
    cache = KVCache(1, 1, 2, 4, 8)
    with pytest.raises(ValueError, match="holds 4"):
        cache.update(0, torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), start_pos=2)


def test_learned_positions_refuse_overlong_input() -> None:
    model = build(tiny(pos_emb="learned", seq_length=8))
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_seeded_construction_is_deterministic() -> None:
    cfg = tiny(**VARIANTS["llama-gqa"])
    a, b, c = build(cfg, seed=3), build(cfg, seed=3), build(cfg, seed=4)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.layers[0].word_embeddings.weight, c.layers[0].word_embeddings.weight)


def test_tied_and_untied_parameter_counts() -> None:
    tied, untied = build(tiny()), build(tiny(no_weight_tying=True))
    assert num_parameters(untied) - num_parameters(tied) == V * 32
    assert num_parameters(tied, exclude_embeddings=True) == num_parameters(untied, exclude_embeddings=True)
    assert not any("final_linear" in k for k in tied.state_dict())
    # The tied head really is the embedding matrix: its gradient lands there.
    tied.train()
    tied(torch.randint(0, V, (1, 4))).sum().backward()
    assert tied.layers[0].word_embeddings.weight.grad.abs().sum() > 0


def test_pythia_70m_parameter_count_on_meta() -> None:
    cfg = ModelConfig(
        num_layers=6,
        hidden_size=512,
        num_attention_heads=8,
        seq_length=2048,
        pos_emb="rotary",
        rotary_pct=0.25,
        gpt_j_residual=True,
        no_weight_tying=True,
    )
    with torch.device("meta"):
        model = GPTModel(cfg, 50304)
    assert num_parameters(model) == 70_426_624
    assert num_parameters(model, exclude_embeddings=True) == 18_915_328


def test_mlp_width_rules() -> None:
    """GPT-NeoX's rule: 4h or intermediate_size; gated takes a third per branch; rounded to mlp_multiple_of."""
    assert mlp_width(tiny()) == 128
    llama = {"hidden_size": 4096, "num_attention_heads": 32, "activation": "swiglu", "mlp_multiple_of": 256}
    # GPT-NeoX's Llama-2-7B file: intermediate_size 32768 with multiple 256 gives Llama's 11008.
    assert mlp_width(ModelConfig(**llama, intermediate_size=32768)) == 11008
    # No intermediate_size: 4h scaled by 2/3 and split, int(16384 * 2 / 3) // 2 = 5461 -> 5632.
    assert mlp_width(ModelConfig(**llama)) == 5632
    # A Hugging Face width I is 3 * I here, exactly, with no rounding.
    assert mlp_width(tiny(activation="geglu", intermediate_size=3 * 40)) == 40
    assert mlp_width(tiny(activation="swiglu", intermediate_size=3 * 11007)) == 11007
    assert mlp_width(tiny(intermediate_size=100, mlp_multiple_of=8)) == 104


@pytest.mark.parametrize(
    "method, std",
    [
        ("normal", 0.02),
        ("scaled_normal", 0.02 / math.sqrt(2 * 4)),
        ("small_init", math.sqrt(2 / (5 * 256))),
        ("wang_init", 2 / 4 / math.sqrt(256)),
    ],
)
def test_init_methods(method: str, std: float) -> None:
    cfg = ModelConfig(
        num_layers=4, hidden_size=256, num_attention_heads=4, seq_length=8, output_layer_init_method=method
    )
    model = build(cfg)
    dense = model.layers[1].attention.dense
    assert dense.weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.count_nonzero(dense.bias) == 0
    assert model.layers[1].attention.query_key_value.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.layers[1].input_layernorm.weight, torch.ones(256))


def test_orthogonal_and_xavier_inits_run() -> None:
    for method in ("orthogonal", "scaled_orthogonal", "xavier_uniform", "xavier_normal"):
        build(tiny(init_method=method, output_layer_init_method=method))


def test_mup_multipliers_and_init() -> None:
    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=16, no_weight_tying=True)
    plain = build(ModelConfig(**base))
    mup = build(ModelConfig(**base, use_mup=True, mup_width_scale=4.0, mup_embedding_mult=10.0))
    ids = torch.randint(0, V, (1, 5))
    assert torch.allclose(
        mup.embedding(ids, torch.arange(5)[None]), plain.embedding(ids, torch.arange(5)[None]) * 10
    )
    assert mup.layers[1].attention.scale == pytest.approx(1 / 16)
    assert mup.head.logit_scale == pytest.approx(0.25)
    qkv_std = mup.layers[1].attention.query_key_value.weight.std().item()
    assert qkv_std == pytest.approx(0.02 / 2, rel=0.1)  # std / sqrt(width multiplier)
    assert mup.head.final_linear.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_param_groups_decay_and_mup_lr() -> None:
    from neoxcli.model import param_groups

    model = build(tiny(use_mup=True, mup_width_scale=2.0, no_weight_tying=True))
    groups = param_groups(model, weight_decay=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    by_id = {id(p): g for g in groups for p in g["params"]}
    qkv = model.layers[1].attention.query_key_value
    assert by_id[id(qkv.weight)]["lr_scale"] == 0.5 and by_id[id(qkv.weight)]["weight_decay"] == 0.1
    assert by_id[id(qkv.bias)]["weight_decay"] == 0.0 and by_id[id(qkv.bias)]["lr_scale"] == 1.0
    assert by_id[id(model.layers[0].word_embeddings.weight)]["lr_scale"] == 1.0
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as is
