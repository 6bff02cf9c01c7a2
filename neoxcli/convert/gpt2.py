"""Hugging Face ``GPT2LMHeadModel`` <-> our state dict.

GPT-2 is our sequential block with learned positions, tanh GELU and tied
embeddings. Its ``Conv1D`` layers store weights as ``[in, out]`` (transposed
against ``nn.Linear``) and its fused ``c_attn`` rows are ``[all q | all k | all v]``,
which we regroup per head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import (
    ConversionError,
    StateDict,
    block,
    check_consumed,
    config_dict,
    fuse_qkv,
    hf_activation,
    split_qkv,
    strip_prefix,
    to_hf_activation,
)
from neoxcli.model.gpt import mlp_width

_LINEARS = {
    "attn.c_proj": "attention.dense",
    "mlp.c_fc": "mlp.dense_h_to_4h",
    "mlp.c_proj": "mlp.dense_4h_to_h",
}
_NORMS = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}


def hf_gpt2_to_neox(state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Any], StateDict]:
    """Map a GPT-2 state dict and config to ``(ModelConfig kwargs, our state dict)``."""
    hf = config_dict(hf_config)
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ConversionError("GPT-2 attention scaling variants are not supported")
    n, hidden, heads = int(hf["n_layer"]), int(hf["n_embd"]), int(hf["n_head"])
    tied = bool(hf.get("tie_word_embeddings", True))
    kwargs: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": int(hf.get("n_inner") or 4 * hidden),
        "seq_length": int(hf["n_positions"]),
        "max_position_embeddings": int(hf["n_positions"]),
        "pos_emb": "learned",
        "layernorm_epsilon": float(hf.get("layer_norm_epsilon", 1e-5)),
        "activation": hf_activation(hf.get("activation_function", "gelu_new")),
        "no_weight_tying": not tied,
        "make_vocab_size_divisible_by": 1,
        "init_method_std": float(hf.get("initializer_range", 0.02)),
    }
    sd = strip_prefix(state_dict, ("transformer.",))
    emb, final, head = block(n)
    out: StateDict = {
        emb + "word_embeddings.weight": sd["wte.weight"],
        emb + "position_embeddings.weight": sd["wpe.weight"],
    }
    used = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"}
    for i in range(n):
        src, dst = f"h.{i}.", f"layers.{i + 1}."
        q, k, v = sd[src + "attn.c_attn.weight"].t().chunk(3, dim=0)
        out[dst + "attention.query_key_value.weight"] = fuse_qkv(q, k, v, heads, heads)
        qb, kb, vb = sd[src + "attn.c_attn.bias"].chunk(3, dim=0)
        out[dst + "attention.query_key_value.bias"] = fuse_qkv(qb, kb, vb, heads, heads)
        used.update({src + "attn.c_attn.weight", src + "attn.c_attn.bias"})
        for a, b in _LINEARS.items():
            out[dst + b + ".weight"] = sd[src + a + ".weight"].t().contiguous()
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
            used.update({src + a + ".weight", src + a + ".bias"})
        for a, b in _NORMS.items():
            for kind in ("weight", "bias"):
                out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
                used.add(src + f"{a}.{kind}")
    out[final + "norm.weight"], out[final + "norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    if not tied:
        out[head + "final_linear.weight"] = sd["lm_head.weight"]
    check_consumed(sd, used, ignore=("attn.bias", "attn.masked_bias"))
    return kwargs, out


def neox_to_hf_gpt2(
    cfg: ModelConfig, state_dict: Mapping[str, Tensor], vocab_size: int | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Map our model to ``(config.json dict, HF state dict)`` for ``GPT2LMHeadModel``; refuses what GPT-2 lacks."""
    problems = ["muP multipliers"] if cfg.use_mup else []
    if cfg.pos_emb != "learned":
        problems.append(f"pos_emb={cfg.pos_emb!r} (GPT-2 has learned positions)")
    if cfg.gpt_j_residual or cfg.gpt_j_tied:
        problems.append("parallel residual")
    if cfg.norm != "layernorm" or not (
        cfg.use_bias_in_norms and cfg.use_bias_in_attn_linear and cfg.use_bias_in_mlp
    ):
        problems.append("norms other than LayerNorm, or missing biases")
    if cfg.kv_heads != cfg.num_attention_heads or "local" in cfg.attention_types:
        problems.append("grouped-query or local attention")
    if cfg.use_bias_in_output_layer:
        problems.append("an output-layer bias")
    if problems:
        raise ConversionError("Hugging Face GPT-2 cannot express: " + "; ".join(problems))
    n, heads = cfg.num_layers, cfg.num_attention_heads
    emb, final, head = block(n)
    embed = state_dict[emb + "word_embeddings.weight"]
    out: StateDict = {
        "transformer.wte.weight": embed,
        "transformer.wpe.weight": state_dict[emb + "position_embeddings.weight"],
    }
    for i in range(n):
        src, dst = f"layers.{i + 1}.", f"transformer.h.{i}."
        q, k, v = split_qkv(state_dict[src + "attention.query_key_value.weight"], heads, heads)
        out[dst + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t().contiguous()
        out[dst + "attn.c_attn.bias"] = torch.cat(
            split_qkv(state_dict[src + "attention.query_key_value.bias"], heads, heads)
        )
        for a, b in _LINEARS.items():
            out[dst + a + ".weight"] = state_dict[src + b + ".weight"].t().contiguous()
            out[dst + a + ".bias"] = state_dict[src + b + ".bias"]
        for a, b in _NORMS.items():
            for kind in ("weight", "bias"):
                out[dst + f"{a}.{kind}"] = state_dict[src + f"{b}.{kind}"]
    out["transformer.ln_f.weight"] = state_dict[final + "norm.weight"]
    out["transformer.ln_f.bias"] = state_dict[final + "norm.bias"]
    if cfg.no_weight_tying:
        out["lm_head.weight"] = state_dict[head + "final_linear.weight"]
    hf: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size or embed.shape[0],
        "n_embd": cfg.hidden_size,
        "n_layer": n,
        "n_head": heads,
        "n_inner": mlp_width(cfg),
        "n_positions": cfg.max_positions,
        "activation_function": to_hf_activation(cfg),
        "layer_norm_epsilon": cfg.layernorm_epsilon,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "initializer_range": cfg.init_method_std,
        "resid_pdrop": cfg.hidden_dropout,
        "embd_pdrop": cfg.hidden_dropout,
        "attn_pdrop": cfg.attention_dropout,
    }
    return hf, out
