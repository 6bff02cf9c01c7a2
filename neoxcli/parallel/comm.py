"""Autograd-aware collectives for tensor parallelism (Megatron's f and g operators).

A column-parallel layer reads a replicated input, so its input gradient is a
partial sum: ``copy_to_tp`` is the identity forward and an all-reduce backward.
A row-parallel layer produces partial sums, so ``reduce_from_tp`` all-reduces
forward and passes the gradient through unchanged backward. ``gather_from_tp``
concatenates last-dimension shards (vocab-sharded logits) and hands each rank
its slice of the gradient back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _size(group: Any) -> int:
    return 1 if group is None else dist.get_world_size(group)


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(world, dim=-1)[rank].contiguous(), None


def copy_to_tp(x: Tensor, group: Any) -> Tensor:
    """Identity forward; all-reduce of the gradient over ``group`` backward."""
    return x if _size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: Tensor, group: Any) -> Tensor:
    """All-reduce (sum) over ``group`` forward; identity backward."""
    return x if _size(group) == 1 else _ReduceFromTP.apply(x, group)


def gather_from_tp(x: Tensor, group: Any) -> Tensor:
    """Concatenate the last-dimension shards of ``group`` in rank order."""
    return x if _size(group) == 1 else _GatherFromTP.apply(x, group)
