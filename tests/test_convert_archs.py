"""Logit parity with Transformers for GPT-J, Llama (GQA) and GPT-2, both directions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from neoxcli.config.schema import ModelConfig  # noqa: E402
from neoxcli.convert import ConversionError, from_hf, load_hf_dir, save_hf_dir, to_hf  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402

V = 96


def _randomise_affine(model: torch.nn.Module) -> None:
    """HF initialises biases to 0 and norms to 1; perturb them so that every map is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)


def make_hf(model_type: str, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    if model_type == "gptj":
        kw: dict[str, Any] = dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64)
        cls, cfg_cls = transformers.GPTJForCausalLM, transformers.GPTJConfig
    elif model_type == "llama":
        kw = dict(
            vocab_size=V,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=64,
            rms_norm_eps=1e-6,
            rope_theta=5000.0,
        )
        cls, cfg_cls = transformers.LlamaForCausalLM, transformers.LlamaConfig
    else:
        kw = dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        cls, cfg_cls = transformers.GPT2LMHeadModel, transformers.GPT2Config
    kw.update(overrides)
    model = cls(cfg_cls(**kw)).eval()
    _randomise_affine(model)
    return model


def ours_from(hf: torch.nn.Module) -> GPTModel:
    kwargs, sd = from_hf(hf.state_dict(), hf.config)
    model = GPTModel(ModelConfig(**kwargs), sd["layers.0.word_embeddings.weight"].shape[0]).eval()
    model.load_state_dict(sd, strict=True)
    return model


def max_diff(ours: GPTModel, hf: torch.nn.Module) -> float:
    ids = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        return (ours(ids) - hf(ids).logits).abs().max().item()


CASES = {
    "gptj": ("gptj", {}),
    "gptj-full-rotary-relu": ("gptj", dict(rotary_dim=16, activation_function="relu")),
    "llama-gqa": ("llama", {}),
    "llama-mha-tied": ("llama", dict(num_key_value_heads=8, tie_word_embeddings=True)),
    "llama-biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "gpt2": ("gpt2", {}),
    "gpt2-exact-gelu-untied": ("gpt2", dict(activation_function="gelu", tie_word_embeddings=False)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_logits_match(case: str) -> None:
    model_type, overrides = CASES[case]
    hf = make_hf(model_type, **overrides)
    assert max_diff(ours_from(hf), hf) <= 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_to_hf_round_trip(case: str, tmp_path: Path) -> None:
    model_type, overrides = CASES[case]
    ours = ours_from(make_hf(model_type, **overrides))
    config, sd = to_hf(model_type, ours.cfg, ours.state_dict())
    save_hf_dir(tmp_path, config, sd)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert max_diff(ours, hf.eval()) <= 1e-5
    # And back again: the directory reads as the same model.
    config2, sd2 = load_hf_dir(tmp_path)
    kwargs, ours_sd = from_hf(sd2, config2)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ours_sd[key]), key


def test_exports_refuse_mismatched_architectures() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary")
    sd = GPTModel(cfg, V).state_dict()
    for model_type, pattern in (("gptj", "shared LayerNorm"), ("llama", "RMSNorm"), ("gpt2", "learned")):
        with pytest.raises(ConversionError, match=pattern):
            to_hf(model_type, cfg, sd)
    with pytest.raises(ConversionError, match="unsupported"):
        from_hf({}, {"model_type": "bloom"})
