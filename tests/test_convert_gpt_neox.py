"""Logit parity with Transformers' GPTNeoXForCausalLM, both directions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from neoxcli.config.schema import ModelConfig  # noqa: E402
from neoxcli.convert import ConversionError, hf_gptneox_to_neox, neox_to_hf_gptneox, save_hf_dir  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402

V = 96


def hf_model(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs: dict[str, object] = dict(
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=160,
        max_position_embeddings=64,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_act="gelu",
    )
    kwargs.update(overrides)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**kwargs)).eval()
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise them so the map is tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_from(hf: torch.nn.Module) -> GPTModel:
    kwargs, sd = hf_gptneox_to_neox(hf.state_dict(), hf.config)
    model = GPTModel(ModelConfig(**kwargs), sd["layers.0.word_embeddings.weight"].shape[0]).eval()
    model.load_state_dict(sd, strict=True)
    return model


CASES = {
    "parallel-partial-rotary": {},
    "sequential": dict(use_parallel_residual=False),
    "tanh-gelu": dict(hidden_act="gelu_new"),
    "tied-full-rotary": dict(tie_word_embeddings=True, rotary_pct=1.0, rotary_emb_base=500),
    "no-attention-bias": dict(attention_bias=False, use_parallel_residual=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_logits_match(case: str) -> None:
    hf = hf_model(**CASES[case])
    ours = ours_from(hf)
    ids = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("case", ["parallel-partial-rotary", "sequential", "tanh-gelu", "tied-full-rotary"])
def test_to_hf_round_trip_loads_cleanly(case: str, tmp_path: Path) -> None:
    ours = ours_from(hf_model(**CASES[case]))
    config, sd = neox_to_hf_gptneox(ours.cfg, ours.state_dict())
    save_hf_dir(tmp_path, config, sd)
    hf, info = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.rope_parameters["partial_rotary_factor"] == ours.cfg.rotary_pct
    ids = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        assert (ours(ids) - hf.eval()(ids).logits).abs().max().item() <= 1e-5


def test_export_refuses_what_gpt_neox_cannot_express() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="alibi")
    model = GPTModel(cfg, V)
    with pytest.raises(ConversionError, match="alibi"):
        neox_to_hf_gptneox(cfg, model.state_dict())
    cfg = ModelConfig(
        num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary", gpt_j_tied=True
    )
    with pytest.raises(ConversionError, match="tied"):
        neox_to_hf_gptneox(cfg, GPTModel(cfg, V).state_dict())
