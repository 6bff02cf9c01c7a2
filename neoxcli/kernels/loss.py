"""The vocabulary head and its cross-entropy in one pass, without the full fp32 logits.

``linear_cross_entropy(x, weight, bias, labels)`` equals
``F.cross_entropy(F.linear(x, weight, bias).float(), labels)`` (mean over the
tokens whose label is not ``ignore_index``; no label smoothing, no z-loss: the
loss neox trains with). For small models the ``[tokens, vocab]`` fp32 logits
are the largest activation of the step; here they exist one chunk of rows at a
time, and the gradients of ``x``, ``weight`` and ``bias`` are computed in the
forward pass, chunk by chunk, so nothing of the logits is kept for backward.

Backends: liger-kernel's fused linear cross-entropy (same semantics: logits
upcast to fp32, mean over non-ignored tokens, ``lse_square_scale`` and
``label_smoothing`` left at 0) on CUDA; the chunked PyTorch function here
everywhere else and for the vocab-parallel case, where each tensor-parallel
rank holds a block of vocabulary rows and the softmax statistics are
all-reduced per chunk (Megatron's vocab-parallel cross-entropy, as
``neoxcli.parallel.tensor`` computes it on full logits).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from neoxcli.kernels.backend import resolve
from neoxcli.kernels.gemm import _onednn, uses_onednn

# Rows per chunk are chosen so that one chunk's fp32 logits hold about this many elements (64 MiB).
CHUNK_ELEMENTS = 1 << 24


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    group: Any = None,
    backend: str = "auto",
    chunk_rows: int | None = None,
) -> Tensor:
    """Mean cross-entropy of ``x @ weight^T + bias`` (fp32) against ``labels``; see the module doc.

    ``x`` is ``[..., hidden]`` and ``labels`` the matching ``[...]``. With a
    tensor-parallel ``group`` of more than one rank, ``weight``/``bias`` are this
    rank's contiguous block of vocabulary rows and ``x`` the replicated input
    (its gradient is this rank's share; the caller's ``copy_to_tp`` sums them).
    """
    flat = x.reshape(-1, x.shape[-1])
    target = labels.reshape(-1)
    parallel = group is not None and dist.get_world_size(group) > 1
    if not parallel and resolve(backend, x.device) == "liger":
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        out = LigerFusedLinearCrossEntropyFunction.apply(flat, weight, target, bias, None, ignore_index)
        return out[0] if isinstance(out, tuple) else out
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    onednn = uses_onednn(flat, weight, backend)
    return _ChunkedLinearCrossEntropy.apply(
        flat, weight, bias, target, ignore_index, group if parallel else None, rows, onednn
    )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and all three gradients computed in the forward pass, ``rows`` tokens at a time."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        ignore_index: int,
        group: Any,
        rows: int,
        onednn: bool = False,
    ) -> Tensor:
        keep = target != ignore_index
        count = keep.sum().clamp(min=1).to(torch.float32)
        block = weight.shape[0]
        start = dist.get_rank(group) * block if group is not None else 0
        need_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        grad_x = torch.empty_like(x) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        grad_b = (
            torch.zeros(block, dtype=torch.float32, device=weight.device)
            if need_grad and bias is not None
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for lo in range(0, x.shape[0], rows):
            xs, ts, ks = x[lo : lo + rows], target[lo : lo + rows], keep[lo : lo + rows]
            # oneDNN for the logits and the input gradient where training GEMMs use it (``gemm.py``).
            logits = (_onednn(xs, weight, bias) if onednn else F.linear(xs, weight, bias)).float()
            local = ts - start
            inside = (local >= 0) & (local < block) & ks
            local = local.masked_fill(~inside, 0)
            top = logits.max(dim=-1).values
            if group is not None:
                dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
            logits -= top[:, None]
            picked = logits.gather(1, local[:, None]).squeeze(1).masked_fill(~inside, 0.0)
            probs = logits.exp_()
            sums = probs.sum(dim=-1)
            if group is not None:
                dist.all_reduce(picked, group=group)
                dist.all_reduce(sums, group=group)
            total += ((sums.log() - picked) * ks).sum()
            if need_grad:
                # d(mean loss)/d(logits) = (softmax - onehot) / count on kept rows, 0 on ignored ones.
                probs /= sums[:, None]
                probs.scatter_add_(1, local[:, None], -inside.to(probs.dtype)[:, None])
                probs *= (ks.to(probs.dtype) / count)[:, None]
                g = probs.to(x.dtype)
                grad_x[lo : lo + rows] = _onednn(g, weight.t(), None) if onednn else g @ weight
                grad_w.addmm_(g.t().float(), xs.float()) if x.dtype != torch.float32 else grad_w.addmm_(
                    g.t(), xs
                )
                if grad_b is not None:
                    grad_b += probs.sum(dim=0)
        if need_grad:
            ctx.save_for_backward(
                grad_x, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype)
            )
        return total / count

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_x, grad_w, grad_b = ctx.saved_tensors
        scale = grad.to(grad_x.dtype)
        return (
            grad_x * scale,
            grad_w * grad.to(grad_w.dtype),
            None if grad_b is None else grad_b * grad.to(grad_b.dtype),
            None,
            None,
            None,
            None,
            None,
        )
