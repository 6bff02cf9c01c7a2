"""Compute kernels behind one function each, so the model never picks a backend itself.

Every function takes the model's ``kernels`` setting (``backend``) and chooses
with ``neoxcli.kernels.backend.resolve``: exact PyTorch under ``torch``, fused
Triton kernels on CUDA under ``auto``. On CPU, ``auto`` is PyTorch too except in
a training step, whose head + loss is the chunked function of ``loss.py`` and
whose GEMMs may run through oneDNN (``gemm.py``), both within fp32 rounding of
the reference. The PyTorch branch of each is the reference the kernels are
tested against, and is what the model computed before kernels existed, bit for bit.

| op | liger backend | triton backend |
|---|---|---|
| RMSNorm | liger (``casting_mode="llama"``: ours) | ours |
| LayerNorm | liger when there is a bias, else ours | ours |
| gated activation (SwiGLU, GEGLU) | ours (reads ``[gate; up]`` in place; liger's GEGLU is tanh-GELU) | ours |
| rotary on the first ``dim`` channels | liger (rotate-half, partial ``rotary_dim``) | liger if installed |
| head + cross-entropy | liger's fused linear cross-entropy | chunked PyTorch (``loss.py``) |
| attention | SDPA / flex attention (``attn.py``) | same |
| linear layers (``gemm.py``) | PyTorch's op on GPUs; on CPU, training GEMMs by oneDNN where MKL is slow | same |

Plain activations (GELU, ReLU, SiLU) stay PyTorch: the bias add already runs
in the GEMM's epilogue and the activation is one kernel, so a fused bias+GELU
kernel would save nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from neoxcli.kernels.attn import attention, causal_attention, dense_causal_mask, flex_causal_attention
from neoxcli.kernels.backend import has_module, resolve
from neoxcli.kernels.gemm import linear
from neoxcli.kernels.loss import linear_cross_entropy

__all__ = [
    "attention",
    "causal_attention",
    "defers_head",
    "dense_causal_mask",
    "flex_causal_attention",
    "gated_activation",
    "layer_norm",
    "linear",
    "linear_cross_entropy",
    "resolve",
    "rms_norm",
    "rotary",
    "rotary_torch",
]

_GATED_TORCH = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def defers_head(backend: str, device: torch.device) -> bool:
    """Whether a training forward hands the vocabulary head to ``linear_cross_entropy`` instead of logits.

    Every fused backend does, and so does ``auto`` everywhere (on CPU, or a GPU without
    Triton, that is the chunked PyTorch loss): it computes the gradients in its forward
    pass, which saves the log-softmax's passes over the ``[tokens, vocab]`` fp32 logits
    (~10% of the head and loss) and never keeps them for backward. ``torch`` keeps the
    reference: logits, then ``F.cross_entropy``.
    """
    return backend == "auto" or resolve(backend, device) != "torch"


def rms_norm(x: Tensor, weight: Tensor | None, eps: float, *, backend: str = "auto") -> Tensor:
    """RMSNorm as Llama computes it: ``x / sqrt(mean(x^2) + eps)`` in fp32, rounded to ``x``'s dtype, ``* weight``."""
    kind = resolve(backend, x.device)
    if kind == "liger" and weight is not None:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        return LigerRMSNormFunction.apply(x, weight, eps, 0.0, "llama", False)
    if kind != "torch":
        from neoxcli.kernels import triton_ops

        return triton_ops.rms_norm(x, weight, eps)
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    return y * weight if weight is not None else y


def layer_norm(
    x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, *, backend: str = "auto"
) -> Tensor:
    """LayerNorm over the last dim (``nn.LayerNorm``'s arithmetic)."""
    kind = resolve(backend, x.device)
    if kind == "liger" and bias is not None:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction

        return LigerLayerNormFunction.apply(x, weight, bias, eps)
    if kind != "torch":
        from neoxcli.kernels import triton_ops

        return triton_ops.layer_norm(x, weight, bias, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def gated_activation(h: Tensor, act: str, *, backend: str = "auto") -> Tensor:
    """``act(gate) * up`` for ``h = [gate; up]`` stacked on the last dim (SwiGLU: silu, GEGLU: gelu)."""
    if resolve(backend, h.device) != "torch":
        from neoxcli.kernels import triton_ops

        return triton_ops.gated_activation(h, act)
    gate, up = h.chunk(2, dim=-1)
    return _GATED_TORCH[act](gate) * up


def rotary(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, dim: int, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary embedding (GPT-NeoX's and Hugging Face Llama's layout) on the first ``dim`` channels.

    ``q`` ``[B, H, T, D]``, ``k`` ``[B, H_kv, T, D]``; ``cos``/``sin``
    ``[B|1, 1, T, dim]`` fp32 (``RotaryEmbedding.cos_sin``). Channel ``i`` pairs
    with ``i + dim/2``; channels from ``dim`` on pass through (``rotary_pct``).
    """
    if resolve(backend, q.device) != "torch" and has_module("liger_kernel"):
        from liger_kernel.ops.rope import LigerRopeFunction

        # Liger rotates in place in a [B, T, H, D] layout: hand it its own copies.
        qc = q.transpose(1, 2).contiguous().transpose(1, 2)
        kc = k.transpose(1, 2).contiguous().transpose(1, 2)
        return LigerRopeFunction.apply(qc, kc, cos[:, 0], sin[:, 0])
    # Under torch.compile the reference traces into the graph (``_rotate``'s ``out=`` slices would break it).
    if cos.requires_grad or sin.requires_grad or torch.compiler.is_compiling():
        return rotary_torch(q, cos, sin, dim), rotary_torch(k, cos, sin, dim)
    return _Rotary.apply(q, cos, sin, dim), _Rotary.apply(k, cos, sin, dim)


def rotary_torch(x: Tensor, cos: Tensor, sin: Tensor, dim: int) -> Tensor:
    """The PyTorch rotary reference, in ``x``'s dtype."""
    rot, rest = x[..., :dim], x[..., dim:]
    half = dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    rot = rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, dim: int, sign: int) -> Tensor:
    """``rotary_torch``'s arithmetic (``sign=1``) or its transpose (``sign=-1``), written into one output.

    With ``a = x[:h], b = x[h:dim]``: forward ``[a*cos - b*sin, b*cos + a*sin]``,
    transpose ``[a*cos + b*sin, b*cos - a*sin]``. Each output element is the
    same two rounded products and one rounded sum that autograd through
    ``rotary_torch`` computes (``u + (-v)`` is ``u - v`` exactly, and the
    zero-filled slice gradients add nothing), so values and gradients are bit-identical.
    """
    half = dim // 2
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    a, b = x[..., :half], x[..., half:dim]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    lo, hi = out[..., :half], out[..., half:dim]
    torch.mul(a, c[..., :half], out=lo)
    torch.mul(b, c[..., half:], out=hi)
    if sign > 0:
        lo.sub_(b * s[..., :half])
        hi.add_(a * s[..., half:])
    else:
        lo.add_(b * s[..., half:])
        hi.sub_(a * s[..., :half])
    if dim < x.shape[-1]:
        out[..., dim:] = x[..., dim:]
    return out


class _Rotary(torch.autograd.Function):
    """Rotary as one forward and one backward pass: the backward rotates the gradient by the negative
    angle instead of replaying slices, negation and concatenation (each a zero-filled full-size
    gradient), and keeps only cos/sin, not the input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.dim = dim
        return _rotate(x, cos, sin, dim, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, ctx.dim, -1), None, None, None
