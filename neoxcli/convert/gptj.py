"""Hugging Face ``GPTJForCausalLM`` <-> our state dict.

GPT-J is a parallel-residual block with one shared LayerNorm (our
``gpt_j_tied``), bias-free attention, and an output head with a bias. Its
rotary embedding turns adjacent channel pairs (2i, 2i+1) where ours turns
(i, i + d/2); permuting the rotary rows of q and k per head maps one onto the
other exactly, because attention scores are dot products that a shared
permutation of q and k channels leaves unchanged.
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


def _pairs_to_halves(head_dim: int, rotary_dim: int) -> Tensor:
    """Channel order that turns GPT-J's interleaved rotary pairs into rotate-half halves."""
    order = list(range(0, rotary_dim, 2)) + list(range(1, rotary_dim, 2)) + list(range(rotary_dim, head_dim))
    return torch.tensor(order)


def _permute_heads(w: Tensor, num_heads: int, order: Tensor) -> Tensor:
    head_dim = order.numel()
    return w.reshape(num_heads, head_dim, *w.shape[1:])[:, order].reshape(w.shape)


def hf_gptj_to_neox(state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Any], StateDict]:
    """Map a GPT-J state dict and config to ``(ModelConfig kwargs, our state dict)``."""
    hf = config_dict(hf_config)
    n, hidden, heads = int(hf["n_layer"]), int(hf["n_embd"]), int(hf["n_head"])
    head_dim = hidden // heads
    rotary_dim = int(hf.get("rotary_dim") or head_dim)
    tied = bool(hf.get("tie_word_embeddings", False))
    kwargs: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": int(hf.get("n_inner") or 4 * hidden),
        "seq_length": int(hf["n_positions"]),
        "max_position_embeddings": int(hf["n_positions"]),
        "pos_emb": "rotary",
        "rotary_pct": rotary_dim / head_dim,
        "rotary_emb_base": 10000.0,
        "gpt_j_residual": True,
        "gpt_j_tied": True,
        "layernorm_epsilon": float(hf.get("layer_norm_epsilon", 1e-5)),
        "activation": hf_activation(hf.get("activation_function", "gelu_new")),
        "use_bias_in_attn_linear": False,
        "use_bias_in_output_layer": True,
        "no_weight_tying": not tied,
        "make_vocab_size_divisible_by": 1,
        "init_method_std": float(hf.get("initializer_range", 0.02)),
    }
    order = _pairs_to_halves(head_dim, rotary_dim)
    sd = strip_prefix(state_dict, ("transformer.",))
    emb, final, head = block(n)
    out: StateDict = {emb + "word_embeddings.weight": sd["wte.weight"]}
    used = {"wte.weight"}
    for i in range(n):
        src, dst = f"h.{i}.", f"layers.{i + 1}."
        q = _permute_heads(sd[src + "attn.q_proj.weight"], heads, order)
        k = _permute_heads(sd[src + "attn.k_proj.weight"], heads, order)
        out[dst + "attention.query_key_value.weight"] = fuse_qkv(
            q, k, sd[src + "attn.v_proj.weight"], heads, heads
        )
        renames = {
            "ln_1.weight": "input_layernorm.weight",
            "ln_1.bias": "input_layernorm.bias",
            "attn.out_proj.weight": "attention.dense.weight",
            "mlp.fc_in.weight": "mlp.dense_h_to_4h.weight",
            "mlp.fc_in.bias": "mlp.dense_h_to_4h.bias",
            "mlp.fc_out.weight": "mlp.dense_4h_to_h.weight",
            "mlp.fc_out.bias": "mlp.dense_4h_to_h.bias",
        }
        for a, b in renames.items():
            out[dst + b] = sd[src + a]
        used.update(src + a for a in renames)
        used.update(src + f"attn.{p}_proj.weight" for p in "qkv")
    out[final + "norm.weight"], out[final + "norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    used.update({"ln_f.weight", "ln_f.bias", "lm_head.weight", "lm_head.bias"})
    if not tied:
        out[head + "final_linear.weight"] = sd["lm_head.weight"]
        out[head + "final_linear.bias"] = sd["lm_head.bias"]
    else:
        out[head + "bias"] = sd["lm_head.bias"]
    check_consumed(sd, used, ignore=("attn.bias", "attn.masked_bias", "embed_positions"))
    return kwargs, out


def neox_to_hf_gptj(
    cfg: ModelConfig, state_dict: Mapping[str, Tensor], vocab_size: int | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Map our model to ``(config.json dict, HF state dict)`` for ``GPTJForCausalLM``; refuses what GPT-J lacks."""
    problems = ["muP multipliers"] if cfg.use_mup else []
    if cfg.pos_emb != "rotary" or cfg.rotary_emb_base != 10000.0:
        problems.append("positions other than rotary with base 10000")
    if not cfg.gpt_j_tied:
        problems.append("blocks without GPT-J's single shared LayerNorm (gpt_j_tied)")
    if cfg.norm != "layernorm" or not cfg.use_bias_in_norms or not cfg.use_bias_in_mlp:
        problems.append("norms or MLP without biases")
    if cfg.use_bias_in_attn_linear:
        problems.append("attention biases")
    if cfg.kv_heads != cfg.num_attention_heads or "local" in cfg.attention_types:
        problems.append("grouped-query or local attention")
    if problems:
        raise ConversionError("Hugging Face GPT-J cannot express: " + "; ".join(problems))
    heads, head_dim, n = cfg.num_attention_heads, cfg.head_dim, cfg.num_layers
    rotary_dim = int(head_dim * cfg.rotary_pct)
    inverse = torch.argsort(_pairs_to_halves(head_dim, rotary_dim))
    emb, final, head = block(n)
    embed = state_dict[emb + "word_embeddings.weight"]
    out: StateDict = {"transformer.wte.weight": embed}
    for i in range(n):
        src, dst = f"layers.{i + 1}.", f"transformer.h.{i}."
        q, k, v = split_qkv(state_dict[src + "attention.query_key_value.weight"], heads, heads)
        out[dst + "attn.q_proj.weight"] = _permute_heads(q, heads, inverse)
        out[dst + "attn.k_proj.weight"] = _permute_heads(k, heads, inverse)
        out[dst + "attn.v_proj.weight"] = v
        out[dst + "attn.out_proj.weight"] = state_dict[src + "attention.dense.weight"]
        out[dst + "ln_1.weight"] = state_dict[src + "input_layernorm.weight"]
        out[dst + "ln_1.bias"] = state_dict[src + "input_layernorm.bias"]
        for a, b in (("dense_h_to_4h", "fc_in"), ("dense_4h_to_h", "fc_out")):
            out[dst + f"mlp.{b}.weight"] = state_dict[src + f"mlp.{a}.weight"]
            out[dst + f"mlp.{b}.bias"] = state_dict[src + f"mlp.{a}.bias"]
    out["transformer.ln_f.weight"] = state_dict[final + "norm.weight"]
    out["transformer.ln_f.bias"] = state_dict[final + "norm.bias"]
    vocab = vocab_size or embed.shape[0]
    if cfg.no_weight_tying:
        out["lm_head.weight"] = state_dict[head + "final_linear.weight"]
    bias_key = head + ("final_linear.bias" if cfg.no_weight_tying else "bias")
    out["lm_head.bias"] = state_dict.get(bias_key, torch.zeros(vocab, dtype=embed.dtype))
    hf: dict[str, Any] = {
        "architectures": ["GPTJForCausalLM"],
        "model_type": "gptj",
        "vocab_size": vocab,
        "n_embd": cfg.hidden_size,
        "n_layer": n,
        "n_head": heads,
        "n_inner": mlp_width(cfg),
        "n_positions": cfg.max_positions,
        "rotary_dim": rotary_dim,
        "activation_function": to_hf_activation(cfg),
        "layer_norm_epsilon": cfg.layernorm_epsilon,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "initializer_range": cfg.init_method_std,
        "resid_pdrop": cfg.hidden_dropout,
        "embd_pdrop": cfg.hidden_dropout,
        "attn_pdrop": cfg.attention_dropout,
    }
    return hf, out
