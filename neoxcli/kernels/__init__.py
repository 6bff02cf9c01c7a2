"""Compute kernels behind one function each, so the model never picks a backend itself.

Each function takes the model's ``kernels`` setting and chooses: exact PyTorch
everywhere under ``torch`` (and on CPU under ``auto``), fused kernels where the
device has them. ``scaled_dot_product_attention`` already dispatches to flash /
memory-efficient kernels on GPUs and to a flash kernel on CPU.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from neoxcli.kernels.attn import attention, causal_attention, dense_causal_mask, flex_causal_attention

__all__ = ["attention", "causal_attention", "dense_causal_mask", "flex_causal_attention", "rms_norm"]


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm as Llama computes it: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32 inside."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    return y * weight if weight is not None else y
