"""Causal self-attention: SDPA where it needs no mask, flex attention where it would need a [T, T] one.

Plain causal attention goes to ``scaled_dot_product_attention``'s own causal
path (flash / memory-efficient on GPUs, a flash kernel on CPU). ALiBi, a local
band, document boundaries and left padding used to need a dense
``[heads, T_q, T_k]`` bias (2 GB per layer call at T = 8192 with 8 heads);
``flex_attention`` applies them inside the kernel instead: ALiBi is a
``score_mod`` (``score - slope[h] * (i - j)``) and the band, documents and
padding are a block mask, so whole blocks outside them are skipped and no
``[T, T]`` tensor exists once it is compiled.

The dense path stays, bit for bit what the model always computed: it is the
reference, the CPU default for short sequences, CPU training (flex attention
has no CPU backward), the path under attention dropout (flex has none), and
the decode path (one query against the cache: its
mask is ``[B, 1, T_k]``, small, and its length changes every step, which a
compiled block mask would not like).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# CPU sequences at least this long take the compiled flex path under ``auto``: below it the
# dense bias is small and compiling (seconds per shape) would cost more than it saves.
CPU_FLEX_MIN_KEYS = 4096
# On GPUs from this many keys on: a shorter dense bias is small, and short prompts of many
# lengths (generation) would otherwise each compile a kernel.
GPU_FLEX_MIN_KEYS = 512


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention over ``[B, H, T, D]`` tensors.

    ``k``/``v`` may have fewer heads than ``q`` (grouped-query attention); query
    head ``h`` then reads key/value head ``h // (H_q // H_kv)``. ``mask`` is a
    boolean "may attend" mask or an additive float bias, broadcast to
    ``[B, H, T_q, T_k]``.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        # Repeating is what the fused CPU kernel accepts everywhere; it costs one copy of K/V.
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None, scale=scale
    )


def dense_causal_mask(
    t_q: int,
    t_k: int,
    device: torch.device,
    dtype: torch.dtype,
    *,
    alibi: Tensor | None = None,
    window: int | None = None,
    key_mask: Tensor | None = None,
    document_ids: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for queries that are the last ``t_q`` of ``t_k`` positions.

    Plain causal attention uses the kernel's own causal path where it can;
    ALiBi (``alibi``: per-head slopes), a local band of ``window`` keys, a
    chunk appended to a cache, ``key_mask`` (``[B, t_k]``, False for left
    padding) or ``document_ids`` (``[B, t_k]``: attend within one's document)
    need an explicit mask. A query always sees itself, so no row is all masked
    (which would put NaN into the cache that later rows read).
    """
    offset = t_k - t_q
    if alibi is None and window is None and key_mask is None and document_ids is None:
        if offset == 0:
            return None, True
        if t_q == 1:
            return None, False
    q_pos = torch.arange(offset, t_k, device=device)
    distance = q_pos[:, None] - torch.arange(t_k, device=device)[None, :]  # i - j
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    per_row = key_mask is not None or document_ids is not None
    if per_row:
        allowed = allowed[None]  # [B, Tq, Tk]
        if document_ids is not None:
            allowed = allowed & (document_ids[:, offset:, None] == document_ids[:, None, :])
        if key_mask is not None:
            allowed = allowed & (key_mask[:, None, :] | (distance == 0)[None])
    if alibi is None:
        return (allowed[:, None] if per_row else allowed), False
    bias = -alibi.to(device)[:, None, None] * distance  # [H, Tq, Tk], -slope * (i - j)
    if per_row:
        return bias[None].masked_fill(~allowed[:, None], float("-inf")).to(dtype), False
    return bias.masked_fill(~allowed, float("-inf")).to(dtype)[None], False


def flex_available() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (2.5 and later)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def use_flex(
    backend: str,
    device: torch.device,
    t_q: int,
    t_k: int,
    *,
    special: bool,
    dropout_p: float,
    needs_grad: bool = False,
) -> bool:
    """Whether ``causal_attention`` takes the flex path (see the module doc for why not always).

    ``backend`` is the model's ``kernels`` setting: ``torch`` keeps the dense
    path everywhere; anything else (``auto``, ``liger``, ``triton``) uses flex
    on GPUs from ``GPU_FLEX_MIN_KEYS`` keys on, and on CPU only for
    sequences of ``CPU_FLEX_MIN_KEYS`` keys or more, and only without gradients
    (flex attention has no CPU backward: CPU training stays dense).
    """
    if not special or t_q == 1 or dropout_p > 0.0 or backend == "torch" or not flex_available():
        return False
    if needs_grad and device.type != "cuda":
        return False
    return t_k >= (GPU_FLEX_MIN_KEYS if device.type == "cuda" else CPU_FLEX_MIN_KEYS)


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alibi: Tensor | None = None,
    window: int | None = None,
    key_mask: Tensor | None = None,
    document_ids: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str = "auto",
    compiled: bool | None = None,
) -> Tensor:
    """Causal attention of ``q`` ``[B, H, T_q, D]`` (the last ``T_q`` positions) over ``k``/``v`` ``[B, H_kv, T_k, D]``.

    ``alibi`` (``[H]`` slopes), ``window``, ``key_mask`` and ``document_ids``
    are as in ``dense_causal_mask``. ``compiled`` (default: yes) compiles the
    flex kernel; uncompiled flex computes the same numbers through a dense
    score matrix, which tests use to check the mask and score functions quickly.
    """
    t_q, t_k = q.shape[2], k.shape[2]
    special = alibi is not None or window is not None or key_mask is not None or document_ids is not None
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if use_flex(backend, q.device, t_q, t_k, special=special, dropout_p=dropout_p, needs_grad=needs_grad):
        return flex_causal_attention(
            q,
            k,
            v,
            alibi=alibi,
            window=window,
            key_mask=key_mask,
            document_ids=document_ids,
            scale=scale,
            compiled=True if compiled is None else compiled,
        )
    mask, causal = dense_causal_mask(
        t_q,
        t_k,
        q.device,
        q.dtype,
        alibi=alibi,
        window=window,
        key_mask=key_mask,
        document_ids=document_ids,
    )
    return attention(q, k, v, mask=mask, is_causal=causal, dropout_p=dropout_p, scale=scale)


def flex_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alibi: Tensor | None = None,
    window: int | None = None,
    key_mask: Tensor | None = None,
    document_ids: Tensor | None = None,
    scale: float | None = None,
    compiled: bool = True,
) -> Tensor:
    """``causal_attention`` through ``flex_attention``: ALiBi as a score_mod, everything else a block mask."""
    t_q, t_k = q.shape[2], k.shape[2]
    offset = t_k - t_q
    mask_mod = _mask_mod(offset, window, key_mask, document_ids)
    if key_mask is None and document_ids is None:
        # Depends on shapes only: built once per (length, band, device) and reused by every layer and step.
        block_mask = _static_block_mask(t_q, t_k, offset, window, str(q.device))
    else:
        block_mask = _per_batch_block_mask(mask_mod, offset, window, key_mask, document_ids, q)
    score_mod = None
    if alibi is not None:
        slopes = alibi.to(device=q.device, dtype=torch.float32)

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score - slopes[h] * (q_idx + offset - kv_idx)

    fn = _compiled_flex() if compiled else _eager_flex()
    gqa = q.shape[1] != k.shape[1]
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def _mask_mod(offset: int, window: int | None, key_mask: Tensor | None, document_ids: Tensor | None) -> Any:
    """The flex ``mask_mod`` equal to ``dense_causal_mask``'s boolean mask (query ``i`` is position ``i + offset``)."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        pos = q_idx + offset
        allowed = pos >= kv_idx
        if window is not None:
            allowed = allowed & (pos - kv_idx < window)
        if document_ids is not None:
            allowed = allowed & (document_ids[b, pos] == document_ids[b, kv_idx])
        if key_mask is not None:
            allowed = allowed & (key_mask[b, kv_idx] | (pos == kv_idx))
        return allowed

    return mask_mod


# Block masks are built outside any compiled region (``compile: true`` compiles whole blocks):
# a graph break here keeps the cache below a plain Python cache and the mask a graph input.
@torch.compiler.disable
def _create_block_mask(mask_mod: Any, b: int | None, h: int | None, t_q: int, t_k: int, device: Any) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    # Compiled creation never builds the dense [B, T_q, T_k] mask; only CUDA is worth the compile.
    return create_block_mask(
        mask_mod, b, h, t_q, t_k, device=device, _compile=torch.device(device).type == "cuda"
    )


# The last per-batch block mask and what it was built from. Every layer of a forward (and its
# recomputation under activation checkpointing) passes the same id/mask tensors, so one entry
# saves rebuilding the mask in each layer. The entry holds those tensors, so ``is`` identity
# (plus their in-place version counters) cannot match a different batch.
_LAST_BATCH_MASK: list[Any] = []


@torch.compiler.disable
def _per_batch_block_mask(
    mask_mod: Any,
    offset: int,
    window: int | None,
    key_mask: Tensor | None,
    document_ids: Tensor | None,
    q: Tensor,
) -> Any:
    t_q = q.shape[2]
    versions = tuple(t._version if t is not None else None for t in (key_mask, document_ids))
    key = (offset, window, t_q, str(q.device), q.shape[0])
    if _LAST_BATCH_MASK:
        k_mask, docs, seen_versions, seen_key, mask = _LAST_BATCH_MASK
        if k_mask is key_mask and docs is document_ids and seen_versions == versions and seen_key == key:
            return mask
    t_k = offset + t_q
    mask = _create_block_mask(mask_mod, q.shape[0], None, t_q, t_k, q.device)
    _LAST_BATCH_MASK[:] = [key_mask, document_ids, versions, key, mask]
    return mask


@torch.compiler.disable
@functools.lru_cache(maxsize=32)
def _static_block_mask(t_q: int, t_k: int, offset: int, window: int | None, device: str) -> Any:
    return _create_block_mask(_mask_mod(offset, window, None, None), None, None, t_q, t_k, device)


def _eager_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    def run(*args: Any, **kwargs: Any) -> Tensor:
        # Uncompiled on purpose (tests, references): its "use torch.compile" advice is noise here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return run


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamism: the first new length recompiles with dynamic lengths, so prompts of many
    # lengths (generation) do not compile a kernel each.
    return torch.compile(flex_attention)
