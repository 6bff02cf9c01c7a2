"""Compute kernels behind one function each, so the model never picks a backend itself.

Every function here is exact PyTorch. ``scaled_dot_product_attention`` already
dispatches to flash / memory-efficient kernels on GPUs and to a flash kernel on
CPU, which is 3-8x faster than writing attention out by hand.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention", "rms_norm"]


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


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm as Llama computes it: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32 inside."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    return y * weight if weight is not None else y
