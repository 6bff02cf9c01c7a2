"""Pipeline parallelism: DeepSpeed's ``PipelineModule`` over the model's flat layer sequence.

``GPTModel.layers`` is ``[EmbeddingLayer, Block x L, FinalNorm, Head]``; each
stage runs a contiguous slice of it and passes one activation tensor
``[batch, seq, hidden]`` to the next. Position ids are rebuilt on each stage
from the sequence length (positions ``0..T-1``), so nothing but hidden states
crosses a stage boundary, unless the batch brings its own: packed documents
(``neoxcli.training.documents``) feed the first stage ``(ids, position_ids)``
or ``(ids, position_ids, document_ids)``, and every stage up to the final norm
passes ``(hidden, position_ids[, document_ids])`` on (integer tensors, which
DeepSpeed sends along and gives no gradient).

With tied embeddings the embedding appears on the first and last stages as a
``TiedLayerSpec``: both copies start equal and DeepSpeed all-reduces their
gradients, which sums exactly the two contributions a single process adds.

Every rank builds the whole model from the seed and the pipeline keeps only
its stage's layers, so all layouts start from the same weights (the price is
one full model in host memory at start-up).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import Tensor, nn

from neoxcli.config.derived import check_partition_method
from neoxcli.errors import NeoxError
from neoxcli.model.gpt import Block, EmbeddingLayer, FinalNorm, GPTModel, Head

TIED_KEY = "embed"  # DeepSpeed registers the tied embedding as tied_modules.{TIED_KEY}


def _positions(x: Tensor) -> Tensor:
    return torch.arange(x.shape[1], device=x.device)[None]


Activation = Tensor | tuple[Tensor, ...]


class EmbeddingPipe(nn.Module):
    """Token ids -> hidden states (positions 0..T-1), or ``(ids, positions[, documents])`` -> the same with hidden states."""

    def __init__(self, embedding: EmbeddingLayer, head: nn.Module | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        # The tied head shares the embedding matrix; it owns no parameters of its own.
        self.head = head

    def forward(self, ids: Activation) -> Activation:
        if isinstance(ids, tuple):
            tokens, positions, *documents = ids
            return (self.embedding(tokens, positions), positions, *documents)
        return self.embedding(ids, _positions(ids))


class TransformerBlockPipe(nn.Module):
    """One transformer block taking and returning hidden states (with the batch's position and document ids)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Activation) -> Activation:
        if isinstance(x, tuple):
            hidden, positions, *documents = x
            doc = documents[0] if documents else None
            return (self.block(hidden, positions, None, 0, None, doc), positions, *documents)
        return self.block(x, _positions(x))


class FinalNormPipe(nn.Module):
    """The final norm; position and document ids end here. Holds the norm as ``norm``, as ``FinalNorm`` does."""

    def __init__(self, final_norm: FinalNorm) -> None:
        super().__init__()
        self.norm = final_norm.norm

    def forward(self, x: Activation) -> Tensor:
        return self.norm(x[0] if isinstance(x, tuple) else x)


def _tied_head(module: EmbeddingPipe, x: Tensor) -> Tensor:
    assert module.head is not None
    return module.head(x)


def pipeline_layers(model: GPTModel) -> list[Any]:
    """``model.layers`` as pipeline layer specs, index for index.

    Layer ``i`` of the pipeline is ``model.layers[i]``, so a stage's parameter
    names are ``{i}.embedding.*``, ``{i}.block.*`` or ``{i}.<the layer's own
    names>``, and ``tied_modules.embed.embedding.*`` for a tied embedding
    (``neoxcli.checkpoint.reshard`` maps them back to ``layers.{i}.*``).
    """
    from deepspeed.pipe import TiedLayerSpec

    embedding, head = model.layers[0], model.layers[-1]
    assert isinstance(embedding, EmbeddingLayer) and isinstance(head, Head)
    layers: list[Any] = []
    tied = "embedding.word_embeddings.weight"
    if head.tied:
        if head.bias is not None:
            raise NeoxError(
                "pipeline parallelism does not support a tied output head with a bias",
                hint="set no_weight_tying: true, or use_bias_in_output_layer: false",
            )
        layers.append(TiedLayerSpec(TIED_KEY, EmbeddingPipe, embedding, head, tied_weight_attr=tied))
    else:
        layers.append(EmbeddingPipe(embedding))
    layers += [TransformerBlockPipe(block) for block in model.blocks]
    layers.append(FinalNormPipe(model.final_norm))
    if head.tied:
        layers.append(
            TiedLayerSpec(
                TIED_KEY, EmbeddingPipe, embedding, head, forward_fn=_tied_head, tied_weight_attr=tied
            )
        )
    else:
        layers.append(head)
    return layers


def stage_bounds(layers: list[Any], stages: int, partition_method: str) -> list[int]:
    """Layer boundaries ``[b0, b1, ..., b_stages]`` of each stage, exactly as ``PipelineModule`` cuts them.

    Needed without a process group (to re-split a checkpoint for another
    layout), so it runs DeepSpeed's own partitioning code on the same specs.
    """
    from types import SimpleNamespace

    from deepspeed.runtime import utils as ds_utils
    from deepspeed.runtime.pipe.module import PipelineModule

    method = check_partition_method(partition_method).lower()
    probe = SimpleNamespace(_layer_specs=layers)
    if method == "uniform":
        parts = ds_utils.partition_uniform(num_items=len(layers), num_parts=stages)
    elif method == "parameters":
        parts = ds_utils.partition_balanced(PipelineModule._count_layer_params(probe), stages)
    else:
        hits = set(PipelineModule._find_layer_type(probe, method.split(":")[1]))
        parts = ds_utils.partition_balanced([int(i in hits) for i in range(len(layers))], stages)
    return [int(b) for b in parts]


def build_pipeline(
    model: GPTModel,
    topology: Any,
    loss_fn: Any,
    partition_method: str = "type:transformer|mlp",
    checkpoint_interval: int = 0,
) -> Any:
    """A ``PipelineModule`` holding this rank's stage of ``model`` (already tensor-sharded if TP > 1).

    ``checkpoint_interval`` > 0 recomputes that many consecutive layers in the
    backward pass (DeepSpeed's activation checkpointing, which replays the RNG
    state); only runs made entirely of transformer blocks are checkpointed.
    """
    from deepspeed.pipe import PipelineModule

    layers = pipeline_layers(model)

    class GPTPipe(PipelineModule):
        cfg = model.cfg
        vocab_size = model.vocab_size

    # DeepSpeed prints its partitioning to stdout on rank 0; the console belongs to neox's reporter.
    with contextlib.redirect_stdout(io.StringIO()):
        return GPTPipe(
            layers=layers,
            topology=topology,
            loss_fn=loss_fn,
            partition_method=check_partition_method(partition_method),
            activation_checkpoint_interval=checkpoint_interval,
            checkpointable_layers=[TransformerBlockPipe.__name__],
        )


def replica_clip_grad_norm(engine: Any, max_norm: float, replica_group: Any, tp_rank: int) -> Any:
    """Gradient clipping for a non-ZeRO fp32 pipeline, counting every parameter once per replica.

    DeepSpeed's own fp32 path counts non-sharded parameters only on the first
    rank of the pipe x model group (so later stages' norms are dropped) and
    counts a tied embedding on both ends; this mirrors the 1-process norm.
    """
    import torch.distributed as dist

    params = [p for p in engine.module.parameters() if p.grad is not None]
    norms = [
        p.grad.detach().float().norm(2)
        for p in params
        if not getattr(p, "ds_pipe_replicated", False)
        and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False))
    ]
    total = torch.stack(norms).pow(2).sum() if norms else torch.zeros(())
    dist.all_reduce(total, group=replica_group)
    total = total.pow(0.5)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.detach().mul_(coef)
    return total
