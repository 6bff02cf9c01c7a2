"""The one place a job's parallel layout is applied to a built model, in one fixed order.

``parallelize`` takes the full model every rank built from the seed and
returns what this rank trains:

1. tensor parallelism (``TP_PLAN`` in ``neoxcli.parallel.tensor``): layers
   swapped for sharded ones, attention on local heads; then activation
   checkpointing (``checkpoint_activations``), set on the model;
2. regional compilation of each transformer block (``compile``): blocks are
   compiled one by one, so a pipeline stage holds whole compiled blocks and
   compile time does not grow with depth;
3. pipeline parallelism: DeepSpeed's ``PipelineModule`` keeps this rank's stage
   (and checkpoints ``checkpoint_num_layers`` blocks at a time under full recompute).

Then ``build_engine`` wraps the result in a DeepSpeed engine with the config
``deepspeed_config`` derives, and applies the two corrections neox needs on
top of DeepSpeed (listed there). Data parallelism and ZeRO live inside the
engine. The order matters: TP must cut full layers before a pipeline stage
wraps them, and the engine must see the final parameter set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from neoxcli.parallel.grid import Layout, ParallelGrid

if TYPE_CHECKING:
    from neoxcli.config.derived import Derived
    from neoxcli.config.schema import NeoXConfig
    from neoxcli.model import GPTModel


def make_loss_fn(tp_group: Any = None) -> Callable[[Any, Any], Any]:
    """Mean token cross-entropy of fp32 logits; vocab-parallel when the logits are split over ``tp_group``.

    Given ``HeadInputs`` (a head on fused kernels, see ``parallelize``) it runs
    the head and the loss as one ``kernels.linear_cross_entropy``.
    """
    from neoxcli.kernels import linear_cross_entropy
    from neoxcli.model.gpt import HeadInputs
    from neoxcli.parallel.tensor import vocab_parallel_cross_entropy

    def loss_fn(logits: Any, labels: Any) -> Any:
        if isinstance(logits, HeadInputs):  # the head deferred its matmul to the fused kernel
            return linear_cross_entropy(
                logits.hidden, logits.weight, logits.bias, labels, group=logits.group, backend="auto"
            )
        return vocab_parallel_cross_entropy(logits, labels, tp_group)

    return loss_fn


def parallelize(
    model: GPTModel, layout: Layout, grid: ParallelGrid, cfg: NeoXConfig, loss_fn: Callable[[Any, Any], Any]
) -> Any:
    """This rank's part of ``model`` under ``layout``: TP, compile, then PP (see the module doc)."""
    if layout.tp > 1:
        from neoxcli.parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, grid.tp_group, grid.tp_rank, layout.tp)
    # The loss from make_loss_fn takes the head's inputs; on fused kernels the logits are never built.
    model.head.defer_logits = True
    train = cfg.train
    full = train.checkpoint_activations and train.recompute_granularity == "full"
    if train.checkpoint_activations:
        # Under a pipeline DeepSpeed checkpoints whole blocks itself (below); the model does the rest.
        granularity = None if full and layout.pp > 1 else train.recompute_granularity
        model.set_activation_checkpointing(granularity, train.checkpoint_num_layers)
    if train.compile:
        compile_blocks(model)
    if layout.pp > 1:
        from neoxcli.parallel.pipeline import build_pipeline

        return build_pipeline(
            model,
            grid.topology(),
            loss_fn,
            cfg.parallel.pipe_partition_method,
            checkpoint_interval=train.checkpoint_num_layers if full else 0,
        )
    return model


def compile_blocks(model: GPTModel) -> None:
    """``torch.compile`` each transformer block in place (regional compilation)."""
    for block in model.blocks:
        block.compile()


def deepspeed_config(cfg: NeoXConfig, plan: Derived) -> dict[str, Any]:
    """The DeepSpeed config dict; everything else about the run stays in neox's own config.

    The ``zero_optimization`` block goes to DeepSpeed whole, as GPT-NeoX passes it
    (``overlap_comm``, ``contiguous_gradients``, ``reduce_bucket_size``,
    ``allgather_bucket_size``, ``reduce_scatter``, ``allgather_partitions``, the
    stage-3 keys, offload), and so do GPT-NeoX's gradient-reduction keys when set.
    """
    par = cfg.parallel
    zero = dict(par.zero_optimization or {"stage": 0})
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "train_batch_size": plan.train_batch_size,
        "gradient_clipping": cfg.train.gradient_clipping,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if par.prescale_gradients:
        ds["prescale_gradients"] = True
    if par.gradient_predivide_factor != 1.0:
        ds["gradient_predivide_factor"] = par.gradient_predivide_factor
    if par.communication_data_type is not None:
        ds["communication_data_type"] = par.communication_data_type
    if plan.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif plan.precision == "fp16":
        fp16 = {k: v for k, v in (cfg.train.fp16 or {}).items() if k != "type"}
        fp16["enabled"] = True
        ds["fp16"] = fp16
    return ds


def build_engine(
    module: Any,
    optimizer: Any,
    scheduler: Any,
    cfg: NeoXConfig,
    plan: Derived,
    layout: Layout,
    grid: ParallelGrid,
) -> Any:
    """DeepSpeed's engine around ``module`` (already parallelized), with neox's corrections applied.

    Corrections: DeepSpeed keeps the last engine's ``mpu`` in a module global,
    which a second run in the same process must not inherit; and its fp32
    pipeline gradient clipping counts some parameters on one rank only, so
    neox's replica-wide norm replaces it.
    """
    import deepspeed
    from deepspeed.utils import groups as ds_groups

    ds_config = deepspeed_config(cfg, plan)
    check_zero_block(ds_config["zero_optimization"])
    ds_groups.mpu = None
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        # TP without PP: DeepSpeed learns the groups from ``mpu`` (a pipeline brings its own grid).
        mpu=grid if layout.tp > 1 and layout.pp == 1 else None,
        dist_init_required=False,
    )
    if (
        layout.pp > 1
        and layout.zero_stage == 0
        and plan.precision == "fp32"
        and cfg.train.gradient_clipping > 0
    ):
        from neoxcli.parallel.pipeline import replica_clip_grad_norm

        engine.clip_fp32_gradients = lambda: replica_clip_grad_norm(
            engine, cfg.train.gradient_clipping, grid.replica_group, grid.tp_rank
        )
    if lone_replica(layout, ds_config):
        # With one data-parallel replica DeepSpeed's gradient "all-reduce" still copies every
        # gradient into a flat buffer and back each step (tens of ms on CPU) to sum over nobody.
        engine.enable_backward_allreduce = False
    return engine


def lone_replica(layout: Layout, ds_config: dict[str, Any]) -> bool:
    """Whether the gradient reduction has nothing to do: one replica, no ZeRO, no pipeline, no rescaling.

    ZeRO stages 1-3 move gradients into their partitions inside that same call and the
    pipeline engine reduces tied weights there, so both keep it; so does a run that asks
    for pre- or post-division or a lower-precision communication type, which change values.
    """
    zero_stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    rescales = (
        ds_config.get("prescale_gradients", False)
        or ds_config.get("gradient_predivide_factor", 1.0) != 1.0
        or ds_config.get("communication_data_type") is not None
    )
    return layout.dp == 1 and layout.pp == 1 and zero_stage == 0 and not rescales


def check_zero_block(zero: dict[str, Any]) -> None:
    """Refuse a ``zero_optimization`` key DeepSpeed does not know, naming it, before DeepSpeed starts."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    from neoxcli.errors import ConfigError

    try:
        DeepSpeedZeroConfig(**zero)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or "?"
        raise ConfigError(
            f"parallel.zero_optimization.{key}: {err.get('msg', 'invalid')} (value {zero.get(key)!r})",
            hint="see DeepSpeed's zero_optimization settings (stage, overlap_comm, reduce_bucket_size, ...)",
        ) from None
