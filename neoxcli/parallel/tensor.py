"""Megatron-style tensor parallelism applied to a built ``GPTModel`` from the outside.

``apply_tensor_parallel(model, group, rank, world)`` swaps layers of an
initialised full model for sharded ones, in place, so every layout starts from
the weights a single process would have:

* attention ``query_key_value``: column-parallel by key/value head group. Its
  rows are ``[kv_heads, q_per_kv + 2, head_dim]``, so a contiguous block of
  rows is whole groups (their queries, key and value) and attention runs
  unchanged on the local heads;
* attention ``dense`` and ``mlp.dense_4h_to_h``: row-parallel, partial outputs
  summed by an all-reduce, the bias added once after it;
* ``mlp.dense_h_to_4h``: column-parallel; for GLU the gate and up halves are
  split alike so ``chunk(2)`` still pairs them;
* the word embedding: vocab-parallel (each rank owns a contiguous block of
  rows, out-of-block ids contribute zeros, one all-reduce);
* the head: vocab-parallel logits (tied: the local embedding block), scored
  by ``vocab_parallel_cross_entropy`` without ever gathering the vocabulary.

Norms, learned positions and row-parallel biases stay replicated; they see
identical inputs and receive identical gradients on every tensor-parallel rank.
Sharded parameters carry ``tensor_model_parallel = True`` so DeepSpeed counts
them once per shard when it computes the gradient norm.

Sharded modules keep the parameter names of the modules they replace, so a
shard's state dict is the full one sliced (see ``neoxcli.checkpoint.reshard``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from neoxcli.errors import NeoxError
from neoxcli.kernels.gemm import linear
from neoxcli.model.gpt import GPTModel, Head, HeadInputs, mlp_width
from neoxcli.parallel.comm import copy_to_tp, gather_from_tp, reduce_from_tp

HEAD = "<head>"

# The tensor-parallel plan, stated once: a module (by the last parts of its path in
# ``GPTModel``) -> its parallel style. ``shard_specs`` (resharding checkpoints) and
# ``apply_tensor_parallel`` (sharding a live model) both read it.
TP_PLAN: dict[str, str] = {
    "word_embeddings": "vocab_embedding",
    "attention.query_key_value": "column",
    "attention.dense": "row",
    "mlp.dense_h_to_4h": "column",  # gated MLPs cut each half alike ("glu")
    "mlp.dense_4h_to_h": "row",
    HEAD: "vocab_head",  # the last layer, tied or not
}

# Which parameters of a module in each style are cut, and along which dim; the rest
# (row-parallel biases, norms, positions) are replicated.
STYLE_CUTS: dict[str, dict[str, int]] = {
    "column": {"weight": 0, "bias": 0},
    "row": {"weight": 1},
    "vocab_embedding": {"weight": 0},
    "vocab_head": {"final_linear.weight": 0, "final_linear.bias": 0, "bias": 0},
}


def tp_plan(model: GPTModel) -> dict[str, tuple[str, str]]:
    """``TP_PLAN`` resolved on ``model``: module path -> (style, cut kind "block" or "glu")."""
    gated = model.cfg.mlp_activation in ("swiglu", "geglu")
    head_path = f"layers.{len(model.layers) - 1}"
    plan: dict[str, tuple[str, str]] = {}
    for path, _ in model.named_modules():
        key = (
            HEAD
            if path == head_path
            else next((k for k in TP_PLAN if k != HEAD and (path == k or path.endswith("." + k))), None)
        )
        if key is not None:
            glu = gated and key == "mlp.dense_h_to_4h"
            plan[path] = (TP_PLAN[key], "glu" if glu else "block")
    return plan


def shard_specs(model: GPTModel) -> dict[str, tuple[int, str] | None]:
    """How each parameter of the full (unsharded) ``model`` is split across ranks; None = replicated."""
    specs: dict[str, tuple[int, str] | None] = {name: None for name, _ in model.named_parameters()}
    for path, (style, kind) in tp_plan(model).items():
        for param, dim in STYLE_CUTS[style].items():
            name = f"{path}.{param}"
            if name in specs:
                specs[name] = (dim, kind)
    return specs


def split_tensor(t: Tensor, dim: int, kind: str, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s shard of the full tensor ``t``."""
    if kind == "glu":
        halves = t.chunk(2, dim=dim)
        return torch.cat([h.chunk(world, dim=dim)[rank] for h in halves], dim=dim).clone()
    return t.chunk(world, dim=dim)[rank].clone()


def merge_tensors(shards: list[Tensor], dim: int, kind: str) -> Tensor:
    """Inverse of ``split_tensor`` over all ranks' shards."""
    if kind == "glu":
        halves = [s.chunk(2, dim=dim) for s in shards]
        return torch.cat(
            [torch.cat([h[0] for h in halves], dim), torch.cat([h[1] for h in halves], dim)], dim
        )
    return torch.cat(shards, dim=dim)


def _mark(p: nn.Parameter, dim: int) -> nn.Parameter:
    p.tensor_model_parallel = True  # type: ignore[attr-defined]
    p.partition_dim = dim  # type: ignore[attr-defined]
    return p


def _shard_param(t: Tensor, dim: int, kind: str, rank: int, world: int) -> nn.Parameter:
    return _mark(nn.Parameter(split_tensor(t.detach(), dim, kind, rank, world)), dim)


class ColumnParallelLinear(nn.Module):
    """``y_local = x @ W[rows]^T + b[rows]``: output features split, input replicated."""

    def __init__(self, full: nn.Linear, group: Any, rank: int, world: int, kind: str = "block") -> None:
        super().__init__()
        self.group = group
        self.kernels = getattr(full, "kernels", "auto")
        cut = STYLE_CUTS["column"]
        self.weight = _shard_param(full.weight, cut["weight"], kind, rank, world)
        self.bias = _shard_param(full.bias, cut["bias"], kind, rank, world) if full.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return linear(copy_to_tp(x, self.group), self.weight, self.bias, backend=self.kernels)


class RowParallelLinear(nn.Module):
    """``y = sum_r x_r @ W[:, cols_r]^T + b``: input features split, output all-reduced.

    The bias is replicated and added after the reduction, so it counts once.
    """

    def __init__(self, full: nn.Linear, group: Any, rank: int, world: int) -> None:
        super().__init__()
        self.group = group
        self.kernels = getattr(full, "kernels", "auto")
        self.weight = _shard_param(full.weight, STYLE_CUTS["row"]["weight"], "block", rank, world)
        self.bias = nn.Parameter(full.bias.detach().clone()) if full.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = reduce_from_tp(linear(x, self.weight, backend=self.kernels), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding rows ``[start, start + V/tp)`` on this rank; other ids look up zeros, then all-reduce."""

    def __init__(self, full: nn.Embedding, group: Any, rank: int, world: int) -> None:
        super().__init__()
        self.group = group
        self.weight = _shard_param(full.weight, STYLE_CUTS["vocab_embedding"]["weight"], "block", rank, world)
        self.vocab_start = rank * self.weight.shape[0]

    def forward(self, ids: Tensor) -> Tensor:
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return reduce_from_tp(out.masked_fill(outside[..., None], 0.0), self.group)


class VocabParallelHead(Head):
    """Logits for this rank's vocabulary block (fp32), from the tied embedding block or its own.

    ``gather_output`` concatenates the blocks into full logits (for sampling);
    training leaves them split and scores them with ``vocab_parallel_cross_entropy``.
    """

    def __init__(self, head: Head, group: Any, rank: int, world: int) -> None:
        nn.Module.__init__(self)
        self.group = group
        self.gather_output = False
        self.logit_scale = head.logit_scale
        self.kernels, self.defer_logits = head.kernels, head.defer_logits
        object.__setattr__(self, "_tied_to", head._tied_to)
        self.final_linear = (
            ColumnParallelLinear(head.final_linear, group, rank, world)
            if head.final_linear is not None
            else None
        )
        dim = STYLE_CUTS["vocab_head"]["bias"]
        self.bias = _shard_param(head.bias, dim, "block", rank, world) if head.bias is not None else None

    def forward(self, x: Tensor) -> Tensor | HeadInputs:
        if self.logit_scale != 1.0:
            x = x * self.logit_scale
        if self.deferring(x) and not self.gather_output:
            # The vocab-parallel fused loss: replicated input (its gradient summed by copy_to_tp), local block.
            linear = self.final_linear
            weight = linear.weight if linear is not None else self._tied_to.word_embeddings.weight
            bias = linear.bias if linear is not None else self.bias
            return HeadInputs(copy_to_tp(x, self.group), weight, bias, self.group)
        if self.final_linear is not None:
            logits = self.final_linear(x).float()
        else:
            logits = F.linear(
                copy_to_tp(x, self.group), self._tied_to.word_embeddings.weight, self.bias
            ).float()
        return gather_from_tp(logits, self.group) if self.gather_output else logits


def check_divisible(model: GPTModel, world: int) -> None:
    """Raise a NeoxError naming the first size that does not split ``world`` ways."""
    cfg = model.cfg
    needs = {
        "num_attention_heads": cfg.num_attention_heads,
        "num_kv_heads (key/value heads)": cfg.kv_heads,
        "MLP width": mlp_width(cfg),
        "padded vocabulary": model.vocab_size,
    }
    for what, n in needs.items():
        if n % world:
            raise NeoxError(
                f"model_parallel_size={world} does not divide {what} ({n})",
                hint="pick a model_parallel_size that divides the head counts, MLP width and vocabulary",
            )


def _parallel_module(
    style: str, module: nn.Module, kind: str, group: Any, rank: int, world: int
) -> nn.Module:
    if style == "column":
        return ColumnParallelLinear(module, group, rank, world, kind)  # type: ignore[arg-type]
    if style == "row":
        return RowParallelLinear(module, group, rank, world)  # type: ignore[arg-type]
    if style == "vocab_embedding":
        return VocabParallelEmbedding(module, group, rank, world)  # type: ignore[arg-type]
    return VocabParallelHead(module, group, rank, world)  # type: ignore[arg-type]


def apply_tensor_parallel(model: GPTModel, group: Any, rank: int, world: int) -> GPTModel:
    """Shard ``model`` in place for tensor-parallel rank ``rank`` of ``world`` as ``TP_PLAN`` says; returns it.

    After the swap each attention module runs on its local heads, and
    ``model.tp_size`` records the split, so caches are sized from local counts.
    """
    if world == 1:
        return model
    check_divisible(model, world)
    # Parents before children does not matter: no planned module contains another.
    for path, (style, kind) in tp_plan(model).items():
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, _parallel_module(style, getattr(parent, attr), kind, group, rank, world))
    for block in model.blocks:
        attn = block.attention
        attn.num_heads //= world
        attn.kv_heads //= world
        if attn.alibi is not None:
            attn.alibi = attn.alibi.chunk(world)[rank].clone()
    model.tp_group = group  # type: ignore[assignment]
    model.tp_size = world  # type: ignore[assignment]
    return model


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token ``logsumexp(logits) - logits[target]`` over vocabulary blocks spread across ranks."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, group: Any) -> Tensor:
        block = logits.shape[-1]
        start = dist.get_rank(group) * block
        top = logits.max(dim=-1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - top[:, None]
        local = target - start
        inside = (local >= 0) & (local < block)
        local = local.masked_fill(~inside, 0)
        picked = shifted.gather(1, local[:, None]).squeeze(1).masked_fill(~inside, 0.0)
        dist.all_reduce(picked, group=group)
        exp = shifted.exp()
        total = exp.sum(dim=-1)
        dist.all_reduce(total, group=group)
        ctx.save_for_backward(exp.div_(total[:, None]), local, inside)
        return total.log() - picked

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        softmax, local, inside = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(1, local[:, None], -inside.to(g.dtype)[:, None])
        return g * grad[:, None], None, None


def vocab_parallel_cross_entropy(
    logits: Tensor, labels: Tensor, group: Any, ignore_index: int = -100
) -> Tensor:
    """Mean cross-entropy of vocab-sharded fp32 logits ``[..., V/tp]`` against full-vocabulary labels.

    A micro-batch whose labels are all ``ignore_index`` (a finetuning sample that is all prompt,
    say) scores 0 with zero gradients, as the fused and sharded losses do, not ``F.cross_entropy``'s
    0/0 NaN, which would poison the weights; otherwise the value and gradients are
    ``F.cross_entropy``'s to the bit (its mean is this same sum over the same count).
    """
    flat = logits.float().reshape(-1, logits.size(-1))
    target = labels.reshape(-1)
    keep = target != ignore_index
    count = keep.sum().clamp(min=1)
    if group is None or dist.get_world_size(group) == 1:
        return F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum") / count
    losses = _VocabParallelCrossEntropy.apply(flat, target.masked_fill(~keep, 0), group)
    return (losses * keep).sum() / count
