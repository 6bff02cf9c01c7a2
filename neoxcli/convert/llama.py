"""Hugging Face ``LlamaForCausalLM`` (LLaMA-1/2, grouped-query attention) <-> our state dict.

Llama is our sequential block with RMSNorm (weight only), SwiGLU, full rotary
in the rotate-half convention (Hugging Face's Llama weights already use it)
and no biases. q/k/v fuse into our grouped rows; gate/up stack as ``[gate; up]``.
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
    rope_settings,
    split_qkv,
    strip_prefix,
)
from neoxcli.model.gpt import mlp_width


def hf_llama_to_neox(state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Any], StateDict]:
    """Map a Llama state dict and config to ``(ModelConfig kwargs, our state dict)``."""
    hf = config_dict(hf_config)
    n, hidden, heads = int(hf["num_hidden_layers"]), int(hf["hidden_size"]), int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or heads)
    if hf.get("head_dim") not in (None, hidden // heads):
        raise ConversionError(f"head_dim {hf['head_dim']} != hidden_size / heads is not supported")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ConversionError(f"Llama with hidden_act {hf['hidden_act']!r} is not supported")
    pct, base = rope_settings(hf, default_pct=1.0)
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    tied = bool(hf.get("tie_word_embeddings", False))
    kwargs: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": kv if kv != heads else None,
        # Hugging Face gives one branch's width; GPT-NeoX's size is three times it (see mlp_width).
        "intermediate_size": 3 * int(hf["intermediate_size"]),
        "seq_length": int(hf["max_position_embeddings"]),
        "max_position_embeddings": int(hf["max_position_embeddings"]),
        "pos_emb": "rotary",
        "rotary_pct": pct,
        "rotary_emb_base": base,
        "norm": "rmsnorm",
        "rms_norm_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "activation": "swiglu",
        "use_bias_in_norms": False,
        "use_bias_in_attn_linear": attn_bias,
        "use_bias_in_mlp": mlp_bias,
        "no_weight_tying": not tied,
        "make_vocab_size_divisible_by": 1,
        "init_method_std": float(hf.get("initializer_range", 0.02)),
    }
    sd = strip_prefix(state_dict, ("model.",))
    emb, final, head = block(n)
    out: StateDict = {emb + "word_embeddings.weight": sd["embed_tokens.weight"]}
    used = {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    for i in range(n):
        src, dst = f"layers.{i}.", f"layers.{i + 1}."
        kinds = ["weight"] + (["bias"] if attn_bias else [])
        for kind in kinds:
            q, k, v = (sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv")
            out[dst + f"attention.query_key_value.{kind}"] = fuse_qkv(q, k, v, heads, kv)
            out[dst + f"attention.dense.{kind}"] = sd[src + f"self_attn.o_proj.{kind}"]
            used.update(src + f"self_attn.{p}_proj.{kind}" for p in "qkvo")
        for kind in ["weight"] + (["bias"] if mlp_bias else []):
            gate, up = sd[src + f"mlp.gate_proj.{kind}"], sd[src + f"mlp.up_proj.{kind}"]
            out[dst + f"mlp.dense_h_to_4h.{kind}"] = torch.cat([gate, up], dim=0)
            out[dst + f"mlp.dense_4h_to_h.{kind}"] = sd[src + f"mlp.down_proj.{kind}"]
            used.update(src + f"mlp.{p}_proj.{kind}" for p in ("gate", "up", "down"))
        out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "post_attention_layernorm.weight"]
        used.update({src + "input_layernorm.weight", src + "post_attention_layernorm.weight"})
    out[final + "norm.weight"] = sd["norm.weight"]
    if not tied:
        out[head + "final_linear.weight"] = sd["lm_head.weight"]
    check_consumed(sd, used, ignore=("rotary_emb.inv_freq",))
    return kwargs, out


def neox_to_hf_llama(
    cfg: ModelConfig, state_dict: Mapping[str, Tensor], vocab_size: int | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Map our model to ``(config.json dict, HF state dict)`` for ``LlamaForCausalLM``; refuses what Llama lacks."""
    problems = ["muP multipliers"] if cfg.use_mup else []
    if cfg.pos_emb != "rotary" or cfg.rotary_pct != 1.0:
        problems.append("positions other than full rotary")
    if cfg.norm != "rmsnorm" or cfg.use_bias_in_norms:
        problems.append("norms other than weight-only RMSNorm")
    if cfg.mlp_activation != "swiglu":
        problems.append(f"activation {cfg.mlp_activation!r} (Llama is SwiGLU)")
    if cfg.gpt_j_residual or cfg.gpt_j_tied:
        problems.append("parallel residual")
    if "local" in cfg.attention_types or cfg.use_bias_in_output_layer:
        problems.append("local attention or an output-layer bias")
    if problems:
        raise ConversionError("Hugging Face Llama cannot express: " + "; ".join(problems))
    n, heads, kv = cfg.num_layers, cfg.num_attention_heads, cfg.kv_heads
    emb, final, head = block(n)
    embed = state_dict[emb + "word_embeddings.weight"]
    out: StateDict = {"model.embed_tokens.weight": embed}
    for i in range(n):
        src, dst = f"layers.{i + 1}.", f"model.layers.{i}."
        for kind in ["weight"] + (["bias"] if cfg.use_bias_in_attn_linear else []):
            q, k, v = split_qkv(state_dict[src + f"attention.query_key_value.{kind}"], heads, kv)
            out.update({dst + f"self_attn.q_proj.{kind}": q, dst + f"self_attn.k_proj.{kind}": k})
            out[dst + f"self_attn.v_proj.{kind}"] = v
            out[dst + f"self_attn.o_proj.{kind}"] = state_dict[src + f"attention.dense.{kind}"]
        for kind in ["weight"] + (["bias"] if cfg.use_bias_in_mlp else []):
            gate, up = state_dict[src + f"mlp.dense_h_to_4h.{kind}"].chunk(2, dim=0)
            out[dst + f"mlp.gate_proj.{kind}"], out[dst + f"mlp.up_proj.{kind}"] = gate.clone(), up.clone()
            out[dst + f"mlp.down_proj.{kind}"] = state_dict[src + f"mlp.dense_4h_to_h.{kind}"]
        out[dst + "input_layernorm.weight"] = state_dict[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state_dict[src + "post_attention_layernorm.weight"]
    out["model.norm.weight"] = state_dict[final + "norm.weight"]
    if cfg.no_weight_tying:
        out["lm_head.weight"] = state_dict[head + "final_linear.weight"]
    hf: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size or embed.shape[0],
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": n,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": mlp_width(cfg),
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.rms_norm_epsilon,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "attention_bias": cfg.use_bias_in_attn_linear,
        "mlp_bias": cfg.use_bias_in_mlp,
        "attention_dropout": cfg.attention_dropout,
        "initializer_range": cfg.init_method_std,
        "rope_theta": cfg.rotary_emb_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_emb_base},
    }
    return hf, out
