"""A GPT-NeoX-style decoder-only transformer, built only from a ``ModelConfig``.

The model is a flat sequence of layers so that pipeline parallelism can cut it
anywhere without touching this file::

    layers.0            EmbeddingLayer  word_embeddings.weight, [position_embeddings.weight]
    layers.1 .. L       Block           input_layernorm.{weight,bias}
                                        attention.query_key_value.{weight,bias}
                                        attention.dense.{weight,bias}
                                        post_attention_layernorm.{weight,bias}
                                        mlp.dense_h_to_4h.{weight,bias}
                                        mlp.dense_4h_to_h.{weight,bias}
    layers.L+1          FinalNorm       norm.{weight,bias}
    layers.L+2          Head            final_linear.{weight,bias} (untied only)

These are GPT-NeoX's own module names (its checkpoints number the same layers
``sequential.0, 2..L+1, L+3, L+4``), so state dicts map over by renumbering.

Conventions that matter for weight conversion:

* ``query_key_value`` rows are grouped per key/value head as
  ``[kv_heads, q_per_kv + 2, head_dim]``: the query heads of a group, then its
  key, then its value. Without GQA this is GPT-NeoX's ``[heads, 3, head_dim]``.
* GLU MLPs (SwiGLU, GEGLU) keep ``[gate; up]`` stacked in ``dense_h_to_4h``;
  the activation is applied to the gate half.
* With tied embeddings the head owns no weight: it multiplies by the embedding
  matrix, which appears in the state dict once.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from neoxcli import kernels
from neoxcli.config.derived import mlp_width
from neoxcli.config.schema import ModelConfig
from neoxcli.kernels.gemm import Linear
from neoxcli.model.init import init_function
from neoxcli.model.kv_cache import KVCache
from neoxcli.model.positions import RotaryEmbedding, alibi_slopes, sinusoidal_table

__all__ = [
    "Attention",
    "Block",
    "EmbeddingLayer",
    "FinalNorm",
    "GPTModel",
    "Head",
    "HeadInputs",
    "LayerNorm",
    "MLP",
    "RMSNorm",
    "mlp_width",
    "num_parameters",
]


# --------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): no centring, optional offset."""

    def __init__(self, dim: int, eps: float, bias: bool = False, kernels: str = "auto") -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        y = kernels.rms_norm(x, self.weight, self.eps, backend=self.kernels)
        return y + self.bias if self.bias is not None else y


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state dict) computed by ``kernels.layer_norm``."""

    def __init__(self, dim: int, eps: float, bias: bool = True, kernels: str = "auto") -> None:
        super().__init__(dim, eps=eps, bias=bias)
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, backend=self.kernels)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The configured norm, with GPT-NeoX's per-kind epsilon."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.hidden_size, cfg.rms_norm_epsilon, bias=cfg.use_bias_in_norms, kernels=cfg.kernels)
    return LayerNorm(cfg.hidden_size, cfg.layernorm_epsilon, bias=cfg.use_bias_in_norms, kernels=cfg.kernels)


# --------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Causal multi-head / grouped-query self-attention with one fused QKV projection."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.head_dim
        self.q_per_kv = self.num_heads // self.kv_heads
        qkv_out = (self.num_heads + 2 * self.kv_heads) * self.head_dim
        bias = cfg.use_bias_in_attn_linear
        self.query_key_value = Linear(cfg.hidden_size, qkv_out, bias=bias, kernels=cfg.kernels)
        self.dense = Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias, kernels=cfg.kernels)
        self.dropout_p = cfg.attention_dropout
        # muP scales scores by 1/d_head (not 1/sqrt(d_head)) so that they stay O(1) as width grows.
        self.scale: float | None = 1.0 / self.head_dim if cfg.use_mup else None

        self.rotary: RotaryEmbedding | None = None
        if cfg.pos_emb == "rotary":
            self.rotary = RotaryEmbedding(int(self.head_dim * cfg.rotary_pct), cfg.rotary_emb_base)
        self.alibi: Tensor | None
        if cfg.pos_emb == "alibi":
            self.register_buffer("alibi", alibi_slopes(self.num_heads), persistent=False)
        else:
            self.alibi = None
        local = cfg.attention_types[layer_idx] == "local"
        self.window: int | None = cfg.sliding_window_width if local else None
        self.kernels = cfg.kernels
        # Selective activation checkpointing: recompute softmax(QK^T)V in the backward pass.
        self.recompute_core = False

    def forward(
        self,
        x: Tensor,
        position_ids: Tensor,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        key_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, self.kv_heads, self.q_per_kv + 2, self.head_dim)
        # One split, not three slices: its backward concatenates the three gradients instead of
        # zero-filling a full-size gradient for each.
        q, k, v = qkv.split([self.q_per_kv, 1, 1], dim=3)
        q = q.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.squeeze(3).transpose(1, 2)
        v = v.squeeze(3).transpose(1, 2)

        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(position_ids)
            q, k = kernels.rotary(q, k, cos, sin, self.rotary.dim, backend=self.kernels)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v, start_pos)

        core = functools.partial(
            kernels.causal_attention,
            alibi=self.alibi,
            window=self.window,
            key_mask=key_mask,
            document_ids=document_ids,
            dropout_p=self.dropout_p if self.training else 0.0,
            scale=self.scale,
            backend=self.kernels,
        )
        if self.recompute_core and self.training and torch.is_grad_enabled():
            y = torch.utils.checkpoint.checkpoint(core, q, k, v, use_reentrant=False)
        else:
            y = core(q, k, v)
        return self.dense(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _mask(
        self, t_q: int, t_k: int, device: torch.device, dtype: torch.dtype, key_mask: Tensor | None = None
    ) -> tuple[Tensor | None, bool]:
        """The dense (mask, is_causal) this layer's attention applies (``kernels.dense_causal_mask``)."""
        return kernels.dense_causal_mask(
            t_q, t_k, device, dtype, alibi=self.alibi, window=self.window, key_mask=key_mask
        )


# --------------------------------------------------------------------------- MLP

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: ``dense_4h_to_h(act(dense_h_to_4h(x)))``, or its gated form."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp_activation in ("swiglu", "geglu")
        self.act = _ACTIVATIONS[cfg.mlp_activation]
        self.gate_act = {"swiglu": "silu", "geglu": "gelu"}.get(cfg.mlp_activation)
        self.kernels = cfg.kernels
        width = mlp_width(cfg)
        bias = cfg.use_bias_in_mlp
        self.dense_h_to_4h = Linear(
            cfg.hidden_size, 2 * width if self.gated else width, bias=bias, kernels=cfg.kernels
        )
        self.dense_4h_to_h = Linear(width, cfg.hidden_size, bias=bias, kernels=cfg.kernels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dense_h_to_4h(x)
        if self.gate_act is not None:
            h = kernels.gated_activation(h, self.gate_act, backend=self.kernels)
        else:
            h = self.act(h)
        return self.dense_4h_to_h(h)


# --------------------------------------------------------------------------- the layers


class EmbeddingLayer(nn.Module):
    """Token embedding, plus learned or sinusoidal absolute positions when configured."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, cfg.hidden_size)
        self.position_embeddings = (
            nn.Embedding(cfg.max_positions, cfg.hidden_size) if cfg.pos_emb == "learned" else None
        )
        self.sinusoidal = cfg.pos_emb == "sinusoidal"
        self.multiplier = cfg.mup_embedding_mult if cfg.use_mup else 1.0
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        elif self.sinusoidal:
            x = x + sinusoidal_table(position_ids, x.shape[-1])[..., : x.shape[-1]].to(x.dtype)
        if self.multiplier != 1.0:
            x = x * self.multiplier
        return self.dropout(x)


class Block(nn.Module):
    """One transformer layer, pre-norm.

    Sequential (GPT-2/3): ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))``.
    Parallel (GPT-J / GPT-NeoX, ``gpt_j_residual``): ``x + attn(ln1(x)) + mlp(ln2(x))``,
    with one shared norm under ``gpt_j_tied``.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.parallel = cfg.gpt_j_residual or cfg.gpt_j_tied
        self.input_layernorm = make_norm(cfg)
        self.attention = Attention(cfg, layer_idx)
        self.post_attention_layernorm = None if cfg.gpt_j_tied else make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        x: Tensor,
        position_ids: Tensor,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        key_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        h = self.input_layernorm(x)
        attn = self.dropout(self.attention(h, position_ids, kv_cache, start_pos, key_mask, document_ids))
        if self.parallel:
            h2 = h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
            # attn + mlp first, then the residual: GPT-NeoX's and Hugging Face's order, so that
            # exported models and their evaluations agree to the last bit.
            return x + (attn + self.dropout(self.mlp(h2)))
        x = x + attn
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class FinalNorm(nn.Module):
    """The norm after the last block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class HeadInputs(NamedTuple):
    """What the head would multiply, handed to the loss instead of logits (see ``Head.defer_logits``)."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    group: Any = None  # the tensor-parallel group when ``weight`` is a vocabulary block


class Head(nn.Module):
    """Projection to vocabulary logits (fp32), by its own matrix or the tied embedding.

    With ``defer_logits`` set (training sets it when its loss understands it),
    a training forward on fused kernels (or ``auto`` on CPU: ``kernels.defers_head``)
    returns ``HeadInputs`` instead, and the loss computes
    ``kernels.linear_cross_entropy`` without the full fp32 logits.
    Evaluation, decoding and the ``torch`` backend always get logits.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, tied_to: EmbeddingLayer | None = None) -> None:
        super().__init__()
        bias = cfg.use_bias_in_output_layer
        self.final_linear = None if tied_to is not None else nn.Linear(cfg.hidden_size, vocab_size, bias=bias)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if tied_to is not None and bias else None
        # Kept out of the module tree on purpose: the embedding matrix must appear
        # once in parameters() and state_dict() (safetensors refuses shared tensors).
        object.__setattr__(self, "_tied_to", tied_to)
        # muP: logits shrink with width (1 / width multiplier) so the output layer learns at a width-free rate.
        self.logit_scale = 1.0 / cfg.mup_width_scale if cfg.use_mup else 1.0
        self.kernels = cfg.kernels
        self.defer_logits = False

    @property
    def tied(self) -> bool:
        return self._tied_to is not None

    def deferring(self, x: Tensor) -> bool:
        """Whether this forward returns ``HeadInputs`` (training, gradients on, ``kernels.defers_head``)."""
        return (
            self.defer_logits
            and self.training
            and torch.is_grad_enabled()
            and kernels.defers_head(self.kernels, x.device)
        )

    def forward(self, x: Tensor) -> Tensor | HeadInputs:
        if self.logit_scale != 1.0:
            x = x * self.logit_scale
        if self.deferring(x):
            if self.final_linear is not None:
                return HeadInputs(x, self.final_linear.weight, self.final_linear.bias)
            return HeadInputs(x, self._tied_to.word_embeddings.weight, self.bias)
        if self.final_linear is not None:
            return self.final_linear(x).float()
        return F.linear(x, self._tied_to.word_embeddings.weight, self.bias).float()


# --------------------------------------------------------------------------- the model


class GPTModel(nn.Module):
    """Embedding -> ``num_layers`` blocks -> final norm -> head, as ``self.layers``.

    ``vocab_size`` is the padded vocabulary. ``forward`` returns fp32 logits
    ``[B, T, vocab_size]``. For incremental decoding pass a cache from
    :meth:`make_kv_cache` and the number of tokens already in it as ``start_pos``.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        embedding = EmbeddingLayer(cfg, vocab_size)
        blocks = [Block(cfg, i) for i in range(cfg.num_layers)]
        head = Head(cfg, vocab_size, tied_to=None if cfg.no_weight_tying else embedding)
        self.layers = nn.ModuleList([embedding, *blocks, FinalNorm(cfg), head])
        self.reset_parameters()
        self.checkpoint_every = 0  # full activation checkpointing: blocks per checkpoint (0: off)

    def set_activation_checkpointing(self, granularity: str | None, num_layers: int = 1) -> None:
        """Trade compute for memory in training: recompute activations in the backward pass.

        ``full`` keeps only each group of ``num_layers`` blocks' input and reruns
        the group; ``selective`` keeps everything but the attention core
        (Megatron-LM's choice: its activations grow with T^2 on the dense path
        and are cheap to recompute); None turns both off. Dropout replays the
        same random numbers, so gradients do not change.
        """
        if granularity not in (None, "full", "selective"):
            raise ValueError(f"unknown activation checkpointing granularity {granularity!r}")
        self.checkpoint_every = num_layers if granularity == "full" else 0
        for block in self.blocks:
            block.attention.recompute_core = granularity == "selective"

    # Named views into the flat sequence.
    @property
    def embedding(self) -> EmbeddingLayer:
        return self.layers[0]

    @property
    def blocks(self) -> list[Block]:
        return list(self.layers[1:-2])

    @property
    def final_norm(self) -> FinalNorm:
        return self.layers[-2]

    @property
    def head(self) -> Head:
        return self.layers[-1]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-NeoX's init: ``init_method`` for embeddings and input projections,
        ``output_layer_init_method`` for residual-stream writers, zero biases, unit norms."""
        init_in = init_function(self.cfg.init_method, self.cfg)
        init_out = init_function(self.cfg.output_layer_init_method, self.cfg)
        # muP: hidden matrices (fan-in grows with width) get std / sqrt(width multiplier).
        hidden_scale = 1.0 / math.sqrt(self.cfg.mup_width_scale) if self.cfg.use_mup else 1.0
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("attention.dense", "mlp.dense_4h_to_h"))
                _init(module.weight, init_out if is_out else init_in)
                if hidden_scale != 1.0 and not name.endswith("final_linear"):
                    _init(module.weight, lambda t: t.mul_(hidden_scale))
                if module.bias is not None:
                    _init(module.bias, torch.nn.init.zeros_)
            elif isinstance(module, nn.Embedding):
                _init(module.weight, init_in)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                _init(module.weight, torch.nn.init.ones_)
                if module.bias is not None:
                    _init(module.bias, torch.nn.init.zeros_)
        if self.head.bias is not None:
            _init(self.head.bias, torch.nn.init.zeros_)

    def make_kv_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty cache sized for this model (``max_len`` defaults to ``max_positions``).

        Head counts come from the attention modules, not the config: a
        tensor-parallel shard holds only its local key/value heads.
        """
        attn = self.layers[1].attention
        ref = attn.query_key_value.weight
        return KVCache(
            num_layers=self.cfg.num_layers,
            batch_size=batch_size,
            kv_heads=attn.kv_heads,
            max_len=max_len or self.cfg.max_positions,
            head_dim=attn.head_dim,
            dtype=dtype or ref.dtype,
            device=device or ref.device,
        )

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        key_mask: Tensor | None = None,
        last_only: bool = False,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """fp32 logits ``[B, T, vocab]`` (``[B, 1, vocab]`` with ``last_only``: decoding needs no more).

        ``key_mask`` ``[B, start_pos + T]`` marks the real tokens of every position
        attended so far (False = left padding), so prompts of different lengths
        share one batch; ``position_ids`` ``[B, T]`` then give each row its own positions.
        ``document_ids`` ``[B, start_pos + T]`` keeps attention within each packed document.
        """
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(start_pos, start_pos + T, device=input_ids.device)[None]
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        if self.cfg.pos_emb == "learned" and int(position_ids.max()) >= self.cfg.max_positions:
            raise ValueError(
                f"{int(position_ids.max()) + 1} positions exceed max_position_embeddings ({self.cfg.max_positions})"
            )
        x = self.embedding(input_ids, position_ids)
        blocks = self.blocks
        if self.checkpoint_every and self.training and torch.is_grad_enabled():
            n = self.checkpoint_every
            for i in range(0, len(blocks), n):
                x = torch.utils.checkpoint.checkpoint(
                    _run_blocks,
                    blocks[i : i + n],
                    x,
                    position_ids,
                    key_mask,
                    document_ids,
                    use_reentrant=False,
                )
        else:
            for block in blocks:
                x = block(x, position_ids, kv_cache, start_pos, key_mask, document_ids)
        return self.head(self.final_norm(x[:, -1:] if last_only else x))


def _run_blocks(
    blocks: list[Block], x: Tensor, position_ids: Tensor, key_mask: Tensor | None, document_ids: Tensor | None
) -> Tensor:
    for block in blocks:
        x = block(x, position_ids, None, 0, key_mask, document_ids)
    return x


def _init(t: Tensor, fn: object) -> None:
    if not t.is_meta:  # counting parameters on the meta device needs no values
        fn(t)  # type: ignore[operator]


def num_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Count unique parameters.

    ``exclude_embeddings`` leaves out the input embeddings (word and learned
    positions) and an untied output matrix: Pythia's "non-embedding" count.
    """
    skip: set[int] = set()
    if exclude_embeddings:
        for module in model.modules():
            if isinstance(module, EmbeddingLayer):
                skip.update(id(p) for p in module.parameters())
            elif isinstance(module, Head) and module.final_linear is not None:
                skip.add(id(module.final_linear.weight))
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
