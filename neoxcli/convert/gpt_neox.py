"""Hugging Face ``GPTNeoXForCausalLM`` (Pythia, GPT-NeoX-20B) <-> our state dict.

Our module names are GPT-NeoX's, and HF's fused ``query_key_value`` already
uses our per-head ``[heads, 3, head_dim]`` row order, so the map is a rename.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import (
    ConversionError,
    StateDict,
    block,
    check_consumed,
    config_dict,
    hf_activation,
    rope_config_entries,
    rope_settings,
    strip_prefix,
    to_hf_activation,
)
from neoxcli.model.gpt import mlp_width

_LAYER_NAMES = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "attention.dense.weight",
    "attention.dense.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
)
# Buffers some exported checkpoints carry; they hold no learned values.
_IGNORED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def hf_gptneox_to_neox(state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Any], StateDict]:
    """Map a GPT-NeoX state dict and config to ``(ModelConfig kwargs, our state dict)``.

    Accepts both the on-disk head name (``embed_out``) and transformers 5's
    in-memory one (``lm_head``). The vocabulary size is the embedding's row count.
    """
    hf = config_dict(hf_config)
    pct, base = rope_settings(hf, default_pct=0.25)
    n = int(hf["num_hidden_layers"])
    tied = bool(hf.get("tie_word_embeddings", False))
    kwargs: dict[str, Any] = {
        "num_layers": n,
        "hidden_size": int(hf["hidden_size"]),
        "num_attention_heads": int(hf["num_attention_heads"]),
        "intermediate_size": int(hf["intermediate_size"]),
        "seq_length": int(hf["max_position_embeddings"]),
        "max_position_embeddings": int(hf["max_position_embeddings"]),
        "pos_emb": "rotary",
        "rotary_pct": pct,
        "rotary_emb_base": base,
        "gpt_j_residual": bool(hf.get("use_parallel_residual", True)),
        "norm": "layernorm",
        "layernorm_epsilon": float(hf.get("layer_norm_eps", 1e-5)),
        "activation": hf_activation(hf.get("hidden_act", "gelu")),
        "use_bias_in_attn_linear": bool(hf.get("attention_bias", True)),
        "no_weight_tying": not tied,
        "make_vocab_size_divisible_by": 1,
        "init_method_std": float(hf.get("initializer_range", 0.02)),
    }
    sd = strip_prefix(state_dict, ("gpt_neox.",))
    emb, final, head = block(n)
    out: StateDict = {emb + "word_embeddings.weight": sd["embed_in.weight"]}
    used = {"embed_in.weight"}
    for i in range(n):
        for name in _LAYER_NAMES:
            src = f"layers.{i}.{name}"
            if src in sd:
                out[f"layers.{i + 1}.{name}"] = sd[src]
                used.add(src)
    for name in ("weight", "bias"):
        out[f"{final}norm.{name}"] = sd[f"final_layer_norm.{name}"]
        used.add(f"final_layer_norm.{name}")
    for head_key in ("embed_out.weight", "lm_head.weight"):
        if head_key in sd:
            used.add(head_key)
            if not tied:
                out[head + "final_linear.weight"] = sd[head_key]
    if not tied and head + "final_linear.weight" not in out:
        raise ConversionError("untied GPT-NeoX checkpoint without an output matrix (embed_out.weight)")
    check_consumed(sd, used, ignore=_IGNORED)
    return kwargs, out


def neox_to_hf_gptneox(
    cfg: ModelConfig, state_dict: Mapping[str, Tensor], vocab_size: int | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Map our model to ``(config.json dict, HF state dict)`` for ``GPTNeoXForCausalLM``.

    Refuses features GPT-NeoX in Transformers cannot express rather than
    writing a model that computes something else. The config carries both
    rotary spellings so that transformers 4.x and 5.x load the same model.
    """
    problems = ["muP multipliers"] if cfg.use_mup else []
    if cfg.pos_emb != "rotary":
        problems.append(f"pos_emb={cfg.pos_emb!r} (only rotary)")
    if cfg.norm != "layernorm" or not cfg.use_bias_in_norms:
        problems.append("norms other than LayerNorm with bias")
    if cfg.gpt_j_tied:
        problems.append("a shared (tied) LayerNorm per block")
    if cfg.kv_heads != cfg.num_attention_heads:
        problems.append("grouped-query attention")
    if not cfg.use_bias_in_mlp:
        problems.append("MLP without biases")
    if "local" in cfg.attention_types:
        problems.append("local attention layers")
    if cfg.use_bias_in_output_layer:
        problems.append("an output-layer bias")
    if problems:
        raise ConversionError("Hugging Face GPT-NeoX cannot express: " + "; ".join(problems))
    act = to_hf_activation(cfg)

    n = cfg.num_layers
    emb, final, head = block(n)
    embed = state_dict[emb + "word_embeddings.weight"]
    vocab = vocab_size or embed.shape[0]
    out: StateDict = {"gpt_neox.embed_in.weight": embed}
    for i in range(n):
        for name in _LAYER_NAMES:
            src = f"layers.{i + 1}.{name}"
            if src in state_dict:
                out[f"gpt_neox.layers.{i}.{name}"] = state_dict[src]
    for name in ("weight", "bias"):
        out[f"gpt_neox.final_layer_norm.{name}"] = state_dict[f"{final}norm.{name}"]
    if cfg.no_weight_tying:
        out["embed_out.weight"] = state_dict[head + "final_linear.weight"]

    hf: dict[str, Any] = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": vocab,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": n,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": mlp_width(cfg),
        "hidden_act": act,
        "max_position_embeddings": cfg.max_positions,
        "layer_norm_eps": cfg.layernorm_epsilon,
        "use_parallel_residual": cfg.gpt_j_residual,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "attention_bias": cfg.use_bias_in_attn_linear,
        "attention_dropout": cfg.attention_dropout,
        "hidden_dropout": cfg.hidden_dropout,
        "initializer_range": cfg.init_method_std,
        "use_cache": True,
        **rope_config_entries(cfg.rotary_pct, cfg.rotary_emb_base),
    }
    return hf, out
