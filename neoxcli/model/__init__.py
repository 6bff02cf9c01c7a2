"""The transformer: ``GPTModel`` built from a ``ModelConfig``, plus its KV cache."""

from neoxcli.model.gpt import (
    MLP,
    Attention,
    Block,
    EmbeddingLayer,
    FinalNorm,
    GPTModel,
    Head,
    HeadInputs,
    LayerNorm,
    RMSNorm,
    mlp_width,
    num_parameters,
)
from neoxcli.model.kv_cache import KVCache
from neoxcli.model.mup import param_groups
from neoxcli.model.positions import RotaryEmbedding, alibi_slopes

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "EmbeddingLayer",
    "FinalNorm",
    "GPTModel",
    "Head",
    "HeadInputs",
    "KVCache",
    "LayerNorm",
    "RMSNorm",
    "RotaryEmbedding",
    "alibi_slopes",
    "mlp_width",
    "num_parameters",
    "param_groups",
]
