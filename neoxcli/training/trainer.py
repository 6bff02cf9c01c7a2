"""The training loop: a DeepSpeed engine around the model, GPT-NeoX's data order, checkpoints.

One function, ``train``, runs in every worker process. Rank 0 owns the console,
the metrics files and the small extra files of each checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neoxcli import checkpoint as ckpt
from neoxcli.checkpoint import check_resume_layout, reading_checkpoint, saved_partition
from neoxcli.config.derived import Derived
from neoxcli.config.schema import OPTIMIZER_TYPES, NeoXConfig
from neoxcli.errors import DataError, NeoxError
from neoxcli.parallel.grid import Layout, ParallelGrid
from neoxcli.training.distributed import DistEnv


@dataclass
class TrainResult:
    """What a finished run reports back to the command."""

    iterations: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    checkpoint: Path | None = None
    sample: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model: Any = field(default=None, repr=False)


def make_plan(cfg: NeoXConfig, world_size: int, vocab_size: int, bf16_ok: bool) -> Derived:
    """The numbers the loop needs (batch triplet, precision, schedule), derived once for this job."""
    from neoxcli.config import resolve

    return resolve(cfg, world_size=world_size, vocab_size=vocab_size, bf16_supported=bf16_ok)


def deepspeed_config(cfg: NeoXConfig, plan: Derived) -> dict[str, Any]:
    """The DeepSpeed config dict; everything else about the run stays in neox's own config."""
    zero = dict(cfg.parallel.zero_optimization or {"stage": 0})
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
    if plan.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif plan.precision == "fp16":
        fp16 = {k: v for k, v in (cfg.train.fp16 or {}).items() if k != "type"}
        fp16["enabled"] = True
        ds["fp16"] = fp16
    return ds


def build_optimizer(cfg: NeoXConfig, model: Any, device_type: str) -> Any:
    import torch

    opt = cfg.train.optimizer
    kind = opt.type.lower()
    params = dict(opt.params)
    lr = float(params.pop("lr", 6e-4))
    # Unset betas are the optimizer's own default, as GPT-NeoX's (Fused)Adam leaves them:
    # (0.9, 0.999), not the (0.9, 0.95) that neox's default config spells out.
    betas = tuple(params.pop("betas", (0.9, 0.999)))
    eps = float(params.pop("eps", 1e-8))
    from neoxcli.model.mup import param_groups

    groups = param_groups(model, cfg.train.weight_decay)
    if kind != "sgd" and kind in OPTIMIZER_TYPES:
        # Fused AdamW runs on CPU and GPU; DeepSpeed's own Adam variants need JIT-built ops.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(params.pop("momentum", 0.0)))
    raise NeoxError(
        f"optimizer.type {opt.type!r} is not supported",
        hint="use Adam, AdamW or SGD",
    )


class _Sampler:
    """GPT-NeoX's (Megatron's) sequential batch order: sample ids consumed..consumed+global_batch.

    Within a global batch, micro step m on data-parallel rank r takes the
    ``micro`` consecutive ids starting at m*micro*dp + r*micro, so changing
    the number of ranks keeps the global sequence of samples unchanged.
    """

    def __init__(self, dataset: Any, micro: int, dp_size: int, dp_rank: int) -> None:
        self.dataset, self.micro, self.dp, self.rank = dataset, micro, dp_size, dp_rank

    def batch(self, consumed: int, micro_step: int) -> Any:
        import numpy as np
        import torch

        start = consumed + micro_step * self.micro * self.dp + self.rank * self.micro
        n = len(self.dataset)
        ids = [(start + k) % n for k in range(self.micro)]
        tokens = torch.from_numpy(np.stack([np.asarray(self.dataset[i], dtype=np.int64) for i in ids]))
        read_labels = getattr(self.dataset, "labels", None)
        label_rows = [read_labels(i) for i in ids] if read_labels is not None else []
        if not label_rows or any(row is None for row in label_rows):
            return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        # A label file (label_data_paths) replaces the targets; as in GPT-NeoX every
        # negative label is left out of the loss (the loss ignores -100).
        labels = torch.from_numpy(np.stack([np.asarray(row, dtype=np.int64) for row in label_rows]))
        labels = labels[:, 1:].masked_fill(labels[:, 1:] < 0, -100)
        return tokens[:, :-1].contiguous(), labels.contiguous()


def valid_start(iteration: int, eval_interval: int, eval_iters: int, train_batch: int) -> int:
    """First validation sample of the evaluation run after ``iteration``.

    GPT-NeoX keeps one validation iterator for the whole run: each evaluation
    reads the next ``eval_iters`` global batches (the validation split is sized
    for that), and a resumed run skips the ones earlier evaluations read. So the
    evaluation at step ``k * eval_interval`` reads window ``k - 1``, and the one
    at a final step between two intervals the window after the last.
    """
    window = max(iteration - 1, 0) // eval_interval
    return window * eval_iters * train_batch


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss_fn(tp_group: Any = None) -> Callable[[Any, Any], Any]:
    """Mean token cross-entropy of fp32 logits; vocab-parallel when the logits are split over ``tp_group``."""
    from neoxcli.parallel.tensor import vocab_parallel_cross_entropy

    def loss_fn(logits: Any, labels: Any) -> Any:
        return vocab_parallel_cross_entropy(logits, labels, tp_group)

    return loss_fn


def check_layout(layout: Layout, precision: str) -> None:
    """Refuse parallel combinations DeepSpeed cannot run, before any engine is built."""
    if layout.pp > 1 and layout.zero_stage > 1:
        raise NeoxError(
            f"ZeRO stage {layout.zero_stage} cannot be combined with pipeline parallelism",
            hint="DeepSpeed's pipeline engine supports ZeRO stage 0 or 1",
        )
    if layout.pp > 1 and layout.zero_stage == 0 and precision == "bf16":
        raise NeoxError(
            "bf16 pipelines need ZeRO stage 1",
            hint="set zero_optimization: {stage: 1} (DeepSpeed cannot reload bf16 stage-0 pipeline checkpoints)",
        )


Reporter = Callable[[str, dict[str, Any]], None]


def train(
    cfg: NeoXConfig,
    *,
    dist: DistEnv | None = None,
    report: Reporter | None = None,
    config_sources: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` in this process (one rank of the job); returns the run's summary.

    ``report(event, data)`` receives progress events ("start", "step", "eval",
    "checkpoint", "end") on rank 0 so the command can render them.
    """
    import numpy as np
    import torch

    from neoxcli.checkpoint import (
        load_module_weights,
        load_optimizer_state,
        load_portable,
        read_layout,
        save_portable,
    )
    from neoxcli.data.tokenizer import build_tokenizer
    from neoxcli.model import GPTModel
    from neoxcli.parallel.tensor import apply_tensor_parallel
    from neoxcli.training.data import build_datasets, ensure_data
    from neoxcli.training.distributed import detect, init_distributed
    from neoxcli.training.schedule import AnnealingLR

    dist = dist or detect()
    emit: Reporter = report if (report is not None and dist.is_main) else (lambda e, d: None)

    backend = init_distributed(dist)
    import deepspeed

    ensure_data(
        cfg,
        is_main=dist.is_main,
        say=lambda msg: emit("info", {"message": msg}),
        barrier=torch.distributed.barrier,
    )
    tokenizer = build_tokenizer(
        cfg.tokenizer.tokenizer_type, cfg.tokenizer.vocab_file, cfg.tokenizer.merge_file
    )

    device = torch.device(f"cuda:{dist.local_rank}") if backend == "nccl" else torch.device("cpu")
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    plan = make_plan(cfg, dist.world_size, tokenizer.vocab_size, bf16_ok)
    if device.type == "cpu" and plan.precision == "fp16":
        raise NeoxError(
            "fp16 is not supported on CPU", hint="set precision: fp32 (or bf16, which is slow on most CPUs)"
        )

    layout = Layout(
        tp=cfg.parallel.model_parallel_size,
        pp=max(cfg.parallel.pipe_parallel_size, 1),
        dp=plan.dp_size,
        zero_stage=plan.zero_stage,
    )
    check_layout(layout, plan.precision)
    grid = ParallelGrid(layout, dist.rank)
    load_dir = Path(cfg.checkpoint.load) if cfg.checkpoint.load else None
    resume_tag = ckpt.read_latest(load_dir) if load_dir is not None else None
    if load_dir is not None and resume_tag and not (load_dir / resume_tag).is_dir():
        raise NeoxError(
            f"{load_dir / 'latest'} names {resume_tag!r}, which is not a directory in {load_dir}",
            hint="write the tag of an existing checkpoint into 'latest', or remove it to start from scratch",
        )
    portable: dict[str, Any] | None = None
    mode: str | None = None
    if load_dir is not None and resume_tag:
        tag_dir = load_dir / resume_tag
        saved_layout = read_layout(tag_dir)
        if saved_layout is not None:
            mode = check_resume_layout(
                saved_layout, layout, tag_dir, saved_partition(tag_dir), cfg.parallel.pipe_partition_method
            )
        if mode == "portable":
            with reading_checkpoint(tag_dir, cfg.model):
                portable = load_portable(tag_dir, grid.stage, grid.tp_rank)

    # Every rank builds the full model from the seed, then keeps its shard: all
    # layouts start from the weights a single process would train.
    seed_everything(cfg.train.seed)
    model = GPTModel(cfg.model, plan.padded_vocab_size)
    if layout.tp > 1:
        apply_tensor_parallel(model, grid.tp_group, grid.tp_rank, layout.tp)
    loss_fn = make_loss_fn(grid.tp_group if layout.tp > 1 else None)
    if layout.pp > 1:
        from neoxcli.parallel.pipeline import build_pipeline

        model = build_pipeline(model, grid.topology(), loss_fn, cfg.parallel.pipe_partition_method)
    if mode == "reshard":
        # Tensor/pipeline layout changed: the full state from every saved shard, cut for this rank.
        from neoxcli.checkpoint import reshard_portable

        assert load_dir is not None and resume_tag
        with reading_checkpoint(load_dir / resume_tag, cfg.model):
            portable = reshard_portable(
                load_dir / resume_tag, model, cfg.model, plan.padded_vocab_size, layout.tp, grid.tp_rank
            )
    if portable is not None:
        load_module_weights(model, portable)
    optimizer = build_optimizer(cfg, model, device.type)
    scheduler = AnnealingLR(
        optimizer,
        max_lr=cfg.train.optimizer.lr,
        min_lr=cfg.train.min_lr,
        warmup_iters=plan.warmup_iters,
        decay_iters=plan.lr_decay_iters,
        style=cfg.train.lr_decay_style,
    )
    from deepspeed.utils import groups as ds_groups

    ds_groups.mpu = None  # DeepSpeed keeps the last engine's mpu globally; a second run must not inherit it
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, plan),
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

    save_dir = Path(cfg.checkpoint.save) if cfg.checkpoint.save else None
    cache_dir = (
        Path(cfg.data.data_cache_dir)
        if cfg.data.data_cache_dir
        else (save_dir / "index-cache" if save_dir else Path(".neox-cache") / "index-cache")
    )
    dp_rank = grid.dp_rank
    train_ds, valid_ds, _test_ds = build_datasets(
        cfg,
        train_batch=plan.train_batch_size,
        cache_dir=cache_dir,
        rank=dist.rank,
        barrier=torch.distributed.barrier,
    )

    iteration, consumed = 0, 0
    client: dict[str, Any] | None = None
    if portable is not None:
        # Layout changed: weights, moments and steps from the layout-free state.
        load_optimizer_state(engine, portable)
        scheduler.load_state_dict(portable["lr_scheduler"])
        client = portable["client"]
        engine.global_steps = int(client["iteration"])
        engine.global_samples = int(client["consumed_samples"])
    elif load_dir is not None and resume_tag:
        with reading_checkpoint(load_dir / resume_tag, cfg.model):
            path, client = engine.load_checkpoint(str(load_dir), tag=resume_tag)
        if path is None:
            raise NeoxError(f"could not load checkpoint {load_dir}/{resume_tag}")
    if client is not None:
        iteration = int(client["iteration"])
        consumed = int(client["consumed_samples"])
        rng = client.get("rng")
        if isinstance(rng, list) and rng:
            # Every rank starts from the same seed, so with another process count rank 0's state
            # is the one each rank would have reached.
            _set_rng_state(rng[dist.rank] if client.get("world_size") == dist.world_size else rng[0])
        elif rng:
            _set_rng_state(rng)
        how = {
            "portable": " (ZeRO stage or data-parallel size changed: restored from the layout-free state)",
            "reshard": " (tensor/pipeline layout changed: re-split from the layout-free state)",
        }.get(mode or "", "")
        emit("info", {"message": f"resumed from {load_dir}/{resume_tag} at iteration {iteration}{how}"})
        if iteration >= cfg.train.train_iters:
            emit(
                "info",
                {
                    "message": f"nothing left to train: train_iters is {cfg.train.train_iters}; raise it to continue"
                },
            )
    portable = None
    if train_ds is None and iteration < cfg.train.train_iters:
        raise DataError(
            f"the training split is empty: split {cfg.data.split!r} gives training no data",
            hint='give training a share, e.g. split: "969,30,1"',
        )

    sampler = _Sampler(train_ds, plan.micro_batch, plan.dp_size, dp_rank)
    tokens_per_iter = plan.train_batch_size * cfg.model.seq_length
    n_params = sum(p.numel() for p in model.parameters())
    emit(
        "start",
        {
            "iterations": cfg.train.train_iters,
            "start_iteration": iteration,
            "params": n_params,
            "plan": plan,
            "device": str(device),
            "world_size": dist.world_size,
            "train_samples": len(train_ds) if train_ds is not None else 0,
        },
    )

    def all_mean(value: float) -> float:
        if dist.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / dist.world_size

    def evaluate(at_iteration: int) -> float | None:
        if valid_ds is None or cfg.train.eval_iters == 0:
            return None
        engine.eval()
        ev = _Sampler(valid_ds, plan.micro_batch, plan.dp_size, dp_rank)
        first = valid_start(
            at_iteration, cfg.train.eval_interval, cfg.train.eval_iters, plan.train_batch_size
        )
        losses = []
        with torch.no_grad():
            for it in range(cfg.train.eval_iters):
                start = first + it * plan.train_batch_size
                if layout.pp > 1:
                    micro = (ev.batch(start, m) for m in range(plan.gradient_accumulation_steps))
                    losses.append(float(engine.eval_batch(micro)))
                    continue
                for m in range(plan.gradient_accumulation_steps):
                    x, y = ev.batch(start, m)
                    losses.append(float(loss_fn(engine(x.to(device)), y.to(device))))
        engine.train()
        return all_mean(float(np.mean(losses)))

    def save(it: int) -> Path | None:
        if save_dir is None:
            return None
        tag = ckpt.tag_for(it)
        rng = [None] * dist.world_size
        if dist.world_size > 1:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        client = {
            "iteration": it,
            "consumed_samples": consumed,
            "world_size": dist.world_size,
            "layout": layout.as_dict(),
            "rng": rng,
            "neox_version": 1,
        }
        engine.save_checkpoint(str(save_dir), tag=tag, client_state=client, save_latest=False)
        tag_dir = save_dir / tag
        if cfg.checkpoint.portable_checkpoint:
            extra = {"client": client, "lr_scheduler": scheduler.state_dict(), "layout": layout.as_dict()}
            save_portable(engine, tag_dir, grid.stage, grid.tp_rank, grid.dp_rank == 0, extra)
        if dist.world_size > 1:
            torch.distributed.barrier()
        if dist.is_main:
            ckpt.finalize_tag(save_dir, tag, cfg, layout, cfg.checkpoint.keep_last_n_checkpoints)
            emit("checkpoint", {"iteration": it, "path": str(tag_dir)})
        if dist.world_size > 1:
            torch.distributed.barrier()
        return tag_dir

    result = TrainResult(iterations=iteration)
    metrics_fh = None
    if save_dir is not None and dist.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        metrics_fh = open(save_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    writer = _open_loggers(cfg) if dist.is_main else None

    def log_metrics(row: dict[str, Any]) -> None:
        result.history.append(row)
        if metrics_fh is not None:
            metrics_fh.write(json.dumps(row) + "\n")
            metrics_fh.flush()
        if writer is not None:
            writer(row)

    every = cfg.checkpoint.checkpoint_factor
    extra = set(cfg.checkpoint.extra_save_iters or [])
    start_time = time.perf_counter()
    start_iter = iteration
    last_saved = -1
    engine.train()
    try:
        if iteration == 0 and 0 in extra:
            # GPT-NeoX saves the initial weights as global_step0 when extra_save_iters lists 0
            # (Pythia's configs do); a run resumed past step 0 does not save it again.
            result.checkpoint = save(0)
            last_saved = 0
        while iteration < cfg.train.train_iters:
            t0 = time.perf_counter()
            step_losses = []
            if layout.pp > 1:
                # The pipeline engine runs all micro steps and the optimizer step itself.
                micro = (sampler.batch(consumed, m) for m in range(plan.gradient_accumulation_steps))
                step_losses.append(float(engine.train_batch(micro)))
            for m in range(plan.gradient_accumulation_steps if layout.pp == 1 else 0):
                x, y = sampler.batch(consumed, m)
                logits = engine(x.to(device))
                loss = loss_fn(logits, y.to(device))
                engine.backward(loss)
                engine.step()
                step_losses.append(float(loss.detach()))
            consumed += plan.train_batch_size
            iteration += 1
            train_loss = all_mean(float(np.mean(step_losses)))
            if not math.isfinite(train_loss):
                raise NeoxError(
                    f"loss became {train_loss} at iteration {iteration}",
                    hint="lower the learning rate or raise warmup",
                )
            dt = time.perf_counter() - t0
            row = {
                "iteration": iteration,
                "loss": train_loss,
                "lr": float(scheduler.get_lr()),
                "tokens_per_s": tokens_per_iter / dt if dt > 0 else 0.0,
                "seconds": dt,
            }
            result.train_loss = train_loss
            if iteration % cfg.train.eval_interval == 0 or iteration == cfg.train.train_iters:
                result.valid_loss = evaluate(iteration)
                if result.valid_loss is not None:
                    row["valid_loss"] = result.valid_loss
                    emit("eval", {"iteration": iteration, "valid_loss": result.valid_loss})
            log_metrics(row)
            emit("step", row)
            if (every and iteration % every == 0) or iteration in extra:
                result.checkpoint = save(iteration)
                last_saved = iteration
        if iteration != last_saved and iteration > start_iter:
            result.checkpoint = save(iteration)
    finally:
        if metrics_fh is not None:
            metrics_fh.close()

    elapsed = time.perf_counter() - start_time
    result.iterations = iteration
    result.wall_s = elapsed
    done = iteration - start_iter
    result.tokens_per_s = done * tokens_per_iter / elapsed if elapsed > 0 else 0.0

    result.model = engine.module
    if cfg.logging.sample_at_end and dist.is_main:
        if layout.tp == 1 and layout.pp == 1:
            result.sample = _sample(engine.module, tokenizer, cfg, device)
        elif result.checkpoint is not None:
            # This rank holds one shard; sample from the full model merged from the checkpoint just saved.
            full = GPTModel(cfg.model, plan.padded_vocab_size)
            full.load_state_dict(ckpt.load_module_state(result.checkpoint, cfg.model))
            result.sample = _sample(full.to(device=device, dtype=torch.float32), tokenizer, cfg, device)
        else:
            note = "no end-of-run sample: a sharded model is sampled from its checkpoint (set save:)"
            emit("info", {"message": note})
    emit("end", {"result": result})
    return result


def _sample(model: Any, tokenizer: Any, cfg: NeoXConfig, device: Any, max_new_tokens: int = 64) -> str:
    """A short sample from the trained model, so the user sees what it learned."""
    from neoxcli.generation import generate

    was_training = model.training
    model.eval()
    try:
        prompt = [tokenizer.eod_id] if tokenizer.eod_id is not None else tokenizer.encode("\n")
        out = generate(model, prompt, max_new_tokens, temperature=0.8, top_k=40, seed=cfg.train.seed)
        return tokenizer.decode(out)
    finally:
        model.train(was_training)


def _open_loggers(cfg: NeoXConfig) -> Callable[[dict[str, Any]], None] | None:
    """TensorBoard and W&B writers when configured (optional dependencies)."""
    sinks: list[Callable[[dict[str, Any]], None]] = []
    if cfg.logging.tensorboard_dir:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise NeoxError(
                "tensorboard_dir is set but TensorBoard is not installed",
                hint="pip install 'neoxcli[monitor]'",
            ) from exc
        tb = SummaryWriter(cfg.logging.tensorboard_dir)

        def to_tb(row: dict[str, Any]) -> None:
            for k, v in row.items():
                if k != "iteration":
                    tb.add_scalar(f"train/{k}", v, row["iteration"])
            tb.flush()

        sinks.append(to_tb)
    if cfg.logging.use_wandb:
        try:
            import wandb
        except ImportError as exc:
            raise NeoxError(
                "use_wandb is set but wandb is not installed", hint="pip install 'neoxcli[monitor]'"
            ) from exc
        run = wandb.init(
            project=cfg.logging.wandb_project, group=cfg.logging.wandb_group, config=cfg.model_dump()
        )
        sinks.append(lambda row: run.log(row, step=row["iteration"]))
    if not sinks:
        return None
    return lambda row: [s(row) for s in sinks]  # type: ignore[func-returns-value]
