"""Helpers shared by the per-architecture state-dict maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from neoxcli.config.schema import ModelConfig
from neoxcli.errors import NeoxError

StateDict = dict[str, Tensor]


class ConversionError(NeoxError):
    """The source model uses something the target format cannot express."""


def config_dict(hf_config: Any) -> dict[str, Any]:
    """A plain dict from a ``PretrainedConfig``, a loaded config.json, or a dict."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a Hugging Face config or a dict, got {type(hf_config).__name__}")


def rope_settings(cfg: Mapping[str, Any], default_pct: float = 1.0) -> tuple[float, float]:
    """(rotary_pct, base) from either spelling: transformers 4's flat keys or 5's ``rope_parameters``."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ConversionError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    pct = rope.get(
        "partial_rotary_factor", cfg.get("rotary_pct", cfg.get("partial_rotary_factor", default_pct))
    )
    base = rope.get("rope_theta", cfg.get("rotary_emb_base", cfg.get("rope_theta", 10000.0)))
    return float(pct), float(base)


def rope_config_entries(pct: float, base: float) -> dict[str, Any]:
    """Both rotary spellings, so transformers 4.x (flat keys) and 5.x (``rope_parameters``) agree."""
    return {
        "rotary_pct": pct,
        "rotary_emb_base": base,
        "rope_theta": base,
        "partial_rotary_factor": pct,
        "rope_parameters": {"rope_type": "default", "rope_theta": base, "partial_rotary_factor": pct},
    }


def hf_activation(act: str) -> str:
    """Our activation name for a Hugging Face ``hidden_act``."""
    table = {
        "gelu": "gelu",
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_fast": "gelu_tanh",
        "relu": "relu",
        "silu": "silu",
        "swish": "silu",
    }
    if act not in table:
        raise ConversionError(f"activation {act!r} has no equivalent here")
    return table[act]


def to_hf_activation(cfg: ModelConfig) -> str:
    """The Hugging Face ``hidden_act`` that computes ``cfg.mlp_activation`` (tanh GELU is ``gelu_new``)."""
    table = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
    act = cfg.mlp_activation
    if act not in table:
        raise ConversionError(f"activation {act!r} cannot be expressed as a plain Hugging Face hidden_act")
    return table[act]


def strip_prefix(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> StateDict:
    """Drop a leading wrapper prefix (``gpt_neox.``, ``transformer.``, ``model.``) if present."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def block(num_layers: int) -> tuple[str, str, str]:
    """Key prefixes of the embedding, final norm and head in our flat ``layers`` list."""
    return "layers.0.", f"layers.{num_layers + 1}.", f"layers.{num_layers + 2}."


def check_consumed(source: Mapping[str, Tensor], used: set[str], ignore: tuple[str, ...] = ()) -> None:
    """Refuse a conversion that would silently drop weights."""
    left = [k for k in source if k not in used and not any(s in k for s in ignore)]
    if left:
        raise ConversionError(f"weights with no place in the converted model: {', '.join(sorted(left)[:8])}")


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, num_heads: int, kv_heads: int) -> Tensor:
    """Separate q/k/v projections (weights or biases) -> our fused ``[kv_heads, q_per_kv + 2, head_dim]`` rows."""
    head_dim = q.shape[0] // num_heads
    rest = q.shape[1:]
    groups = [
        q.reshape(kv_heads, num_heads // kv_heads, head_dim, *rest),
        k.reshape(kv_heads, 1, head_dim, *rest),
        v.reshape(kv_heads, 1, head_dim, *rest),
    ]
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def split_qkv(qkv: Tensor, num_heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`fuse_qkv`."""
    q_per_kv = num_heads // kv_heads
    rest = qkv.shape[1:]
    head_dim = qkv.shape[0] // (num_heads + 2 * kv_heads)
    grouped = qkv.reshape(kv_heads, q_per_kv + 2, head_dim, *rest)
    q = grouped[:, :q_per_kv].reshape(num_heads * head_dim, *rest)
    k = grouped[:, q_per_kv].reshape(kv_heads * head_dim, *rest)
    v = grouped[:, q_per_kv + 1].reshape(kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def cast_state(state: StateDict, dtype: torch.dtype | None) -> StateDict:
    """CPU, contiguous, unshared copies (floating tensors cast to ``dtype`` when given), ready to save."""
    out: StateDict = {}
    for key, value in state.items():
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[key] = t.contiguous().clone()
    return out
