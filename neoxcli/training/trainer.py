"""The training loop in named steps: ``train_step``, ``evaluate``, ``save``, and ``train`` over them.

``train`` runs in every worker process (one rank of the job); ``build_run``
(``neoxcli.training.run``) builds what it needs. Rank 0 owns the console, the
metrics files and the small extra files of each checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import NeoxError
from neoxcli.launchers.heartbeat import progress
from neoxcli.parallel.distributed import DistEnv
from neoxcli.training.batches import BatchSampler, valid_start
from neoxcli.training.documents import map_batch, split_inputs
from neoxcli.training.interrupt import Stopped, StopRequest, stopped_message
from neoxcli.training.report import NullReporter, Reporter, StartInfo, TrainResult
from neoxcli.training.run import Run, build_run


def train_step(run: Run) -> float:
    """One optimizer step over a global batch; returns the loss averaged over micro steps and ranks."""
    engine, plan = run.engine, run.plan
    losses = []
    shapes: list[tuple[int, ...]] = []  # the label batches this rank trained on: the step's real tokens
    run.seq_length = length = run.seq_length_at(run.iteration + 1)
    if run.layout.pp > 1:
        # The pipeline engine runs all micro steps and the optimizer step itself.
        _shape_pipeline(run, length)
        micro = (
            _cut(run.sampler.batch(run.consumed, m), length) for m in range(plan.gradient_accumulation_steps)
        )
        losses.append(float(engine.train_batch(_shapes_of(micro, shapes))))
    else:
        for m in range(plan.gradient_accumulation_steps):
            x, y = _cut(run.sampler.batch(run.consumed, m), length)
            shapes.append(tuple(y.shape))
            loss = run.loss_fn(_forward(engine, x, run.device), y.to(run.device))
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
    if shapes:
        run.count_step(sum(math.prod(s) for s in shapes) * plan.dp_size, shapes[-1][-1])
    else:  # a middle pipeline stage reads no batches: the planned count
        run.count_step(run.tokens_per_iter, run.seq_length or run.cfg.model.seq_length)
    run.consumed += plan.train_batch_size
    run.iteration += 1
    loss = run.all_mean(sum(losses) / len(losses))
    if not math.isfinite(loss):
        raise NeoxError(
            f"loss became {loss} at iteration {run.iteration}", hint="lower the learning rate or raise warmup"
        )
    return loss


def _forward(engine: Any, inputs: Any, device: Any) -> Any:
    """The model on a batch's ``inputs``: tokens, with position and document ids when the batch has them."""
    tokens, kwargs = split_inputs(map_batch(inputs, lambda t: t.to(device)))
    return engine(tokens, **kwargs)


def _shapes_of(batches: Any, shapes: list[tuple[int, ...]]) -> Any:
    """Pass ``(inputs, labels)`` batches through, noting each label batch's shape in ``shapes``."""
    for x, y in batches:
        shapes.append(tuple(y.shape))
        yield x, y


def _cut(batch: tuple[Any, Any], length: int) -> tuple[Any, Any]:
    """Inputs and targets cut to the curriculum's ``length`` (the rest of each sample is dropped).

    Position and document ids depend only on earlier tokens, so the cut keeps their prefix too.
    """
    x, y = batch
    if y.shape[1] <= length:
        return x, y
    return map_batch(batch, lambda t: t[:, :length].contiguous())


def _shape_pipeline(run: Run, length: int) -> None:
    """DeepSpeed's pipeline engine keeps its stage buffers' shapes: reset them when the length changes."""
    if run.pipe_seq_length is not None and run.pipe_seq_length != length:
        run.engine.reset_activation_shape()
    run.pipe_seq_length = length


def evaluate(run: Run) -> float | None:
    """Mean validation loss over ``eval_iters`` global batches, the window GPT-NeoX reads at this step."""
    import torch

    cfg, plan, engine = run.cfg, run.plan, run.engine
    if run.valid_ds is None or cfg.train.eval_iters == 0:
        return None
    engine.eval()
    sampler = BatchSampler(run.valid_ds, plan.micro_batch, plan.dp_size, run.grid.dp_rank, run.documents)
    first = valid_start(run.iteration, cfg.train.eval_interval, cfg.train.eval_iters, plan.train_batch_size)
    losses = []
    with torch.no_grad():
        for it in range(cfg.train.eval_iters):
            start = first + it * plan.train_batch_size
            if run.layout.pp > 1:
                _shape_pipeline(run, cfg.model.seq_length)
                micro = (sampler.batch(start, m) for m in range(plan.gradient_accumulation_steps))
                losses.append(float(engine.eval_batch(micro)))
                continue
            for m in range(plan.gradient_accumulation_steps):
                x, y = sampler.batch(start, m)
                losses.append(float(run.loss_fn(_forward(engine, x, run.device), y.to(run.device))))
    engine.train()
    return run.all_mean(sum(losses) / len(losses))


def save(run: Run, report: Reporter) -> Path | None:
    """Checkpoint the run at its current iteration (every rank calls); returns the tag directory.

    Rank 0 journals the save first (``neoxcli.checkpoint.savedir``), so a crash
    mid-save is undone on the next start; a failed save removes its tag.
    """
    from neoxcli.checkpoint import tag_for
    from neoxcli.checkpoint.savedir import abandon_save, begin_save

    progress(f"the checkpoint save of step {run.iteration}")

    if run.save_dir is None:
        return None
    tag_dir = run.save_dir / tag_for(run.iteration)
    if run.dist.is_main:
        if tag_dir.exists():
            raise NeoxError(f"checkpoint {tag_dir} already exists; a new save never writes into it")
        begin_save(run.save_dir, tag_dir.name)
    try:
        _save(run, tag_dir, report)
    except Exception as exc:
        cause = _write_failure(exc)
        if cause is None:
            # Not the disk's fault (e.g. another rank died mid-collective): raised as it was;
            # the journal has the next start remove the half-written tag.
            raise
        # A write failure (disk full, permissions): the half-written tag goes now, and it is one line.
        if run.dist.is_main:
            abandon_save(tag_dir)
        raise NeoxError(
            f"cannot save checkpoint {tag_dir}: {cause}",
            hint="free space or fix the save directory, then resume from its 'latest'",
        ) from exc
    return tag_dir


def _write_failure(exc: BaseException) -> str | None:
    """Why writing failed ("No space left on device"), or None when ``exc`` is no write failure."""
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "file write failed" in text):
        return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return None


def _save(run: Run, tag_dir: Path, report: Reporter) -> None:
    """The collective save of ``tag_dir``; rank 0 then marks it complete, points ``latest`` at it, prunes.

    The state goes to disk once: the layout-free files (``neoxcli.checkpoint.portable``),
    or DeepSpeed's own files with ``portable_checkpoint: false``; ``save_optimizer: false``
    writes the layout-free weights only.
    """
    import torch

    from neoxcli.checkpoint import finalize_tag, prune_checkpoints, save_portable
    from neoxcli.checkpoint.savedir import end_save
    from neoxcli.training.optim import LAYOUT_BOUND, optimizer_kind
    from neoxcli.training.rng import rng_state

    assert run.save_dir is not None
    dist, engine, cfg = run.dist, run.engine, run.cfg
    ck = cfg.checkpoint
    tag = tag_dir.name
    rng: list[Any] | None = None
    if not ck.no_save_rng:
        rng = [None] * dist.world_size
        if dist.world_size > 1:
            torch.distributed.all_gather_object(rng, rng_state())
        else:
            rng = [rng_state()]
    client = {
        "iteration": run.iteration,
        "consumed_samples": run.consumed,
        "tokens_seen": run.tokens_seen,
        "world_size": dist.world_size,
        "layout": run.layout.as_dict(),
        "rng": rng,
        "neox_version": 1,
    }
    keep_optimizer = ck.keeps_optimizer
    # Quantized or factored optimizer states (8-bit AdamW, Adafactor) are not one value per
    # weight, so they cannot be cut per parameter: DeepSpeed's files hold them, once, and such a
    # run resumes under its own layout only.
    layout_free = ck.portable_checkpoint and optimizer_kind(cfg) not in LAYOUT_BOUND
    if layout_free or not keep_optimizer:
        extra = {"client": client, "lr_scheduler": run.scheduler.state_dict(), "layout": run.layout.as_dict()}
        write = run.grid.dp_rank == 0
        save_portable(engine, tag_dir, run.grid.stage, run.grid.tp_rank, write, extra, keep_optimizer)
    else:
        engine.save_checkpoint(str(run.save_dir), tag=tag, client_state=client, save_latest=False)
    if dist.world_size > 1:
        torch.distributed.barrier()
    if dist.is_main:
        finalize_tag(run.save_dir, tag, cfg, run.layout, weights_only=not keep_optimizer)
        end_save(run.save_dir)
        if ck.s3_path:
            _upload(run, tag_dir, report)
        prune_checkpoints(run.save_dir, ck.keep_last_n_checkpoints)
        report.on_save(run.iteration, tag_dir)
    if dist.world_size > 1:
        torch.distributed.barrier()


def _upload(run: Run, tag_dir: Path, report: Reporter) -> None:
    """Queue ``tag_dir`` for the background upload to ``s3_path`` (rank 0), and report finished uploads."""
    from neoxcli.checkpoint.s3 import Uploader

    ck = run.cfg.checkpoint
    assert ck.s3_path is not None
    if run.uploader is None:
        run.uploader = Uploader(ck.s3_path, ck.s3_chunk_size, ck.s3_endpoint_url, ck.keep_last_n_checkpoints)
    for line in run.uploader.drain():
        report.on_info(line)
    run.uploader.submit(tag_dir)


def _finish_uploads(run: Run, report: Reporter) -> None:
    """Wait for the background uploads (the run's end); a failed one is reported, the local copy stays."""
    if run.uploader is None:
        return
    report.on_info(f"waiting for the upload to {run.uploader.url} to finish")
    for line in run.uploader.close():
        report.on_info(line)
    if run.uploader.failed:
        report.on_info(f"the checkpoints in {run.save_dir} are complete; only their upload failed")


def train(
    cfg: NeoXConfig,
    *,
    dist: DistEnv | None = None,
    report: Reporter | None = None,
    config_sources: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` in this process (one rank of the job); returns the run's summary.

    ``report`` receives the run's progress on rank 0 (``neoxcli.training.report``).
    """
    from neoxcli.parallel.distributed import detect
    from neoxcli.training.metrics import MetricsLog, Throughput, cpu_remeasure, job_peak

    dist = dist or detect()
    say: Reporter = report if (report is not None and dist.is_main) else NullReporter()
    run = build_run(cfg, dist, say)
    start_iter, t = run.iteration, cfg.train
    result = TrainResult(iterations=run.iteration)
    if run.resumed and run.iteration >= t.train_iters:
        # Finished before it started: build_run said so and how to go on; nothing to log or save.
        run.sampler.close()
        result.model = run.engine.module
        return result
    train_samples = len(run.train_ds) if run.train_ds is not None else 0
    say.on_start(
        StartInfo(
            t.train_iters,
            start_iter,
            run.n_params,
            run.plan,
            str(run.device),
            dist.world_size,
            train_samples,
            run.precision_note,
        )
    )
    peak, peak_note = job_peak(cfg, run.device, run.plan.precision) if dist.is_main else (None, "")
    say.on_info(peak_note)
    again = cpu_remeasure(cfg, run.device, run.plan.precision)
    meter = Throughput(cfg.model, run.plan.padded_vocab_size, dist.world_size, peak, again)
    start_tokens = run.tokens_seen
    metrics = MetricsLog(cfg, run.save_dir, enabled=dist.is_main, resumed_at=run.iteration)
    every, extra = cfg.checkpoint.checkpoint_factor, set(cfg.checkpoint.extra_save_iters or [])
    last_saved = -1
    start_time = time.perf_counter()
    run.engine.train()
    stop = StopRequest(announce=dist.is_main).install()  # SIGTERM, SIGUSR1, Ctrl-C: save, then stop
    try:
        if run.iteration == 0 and 0 in extra and not run.resumed:
            # GPT-NeoX saves the initial weights as global_step0 when extra_save_iters lists 0
            # (Pythia's configs do); a resumed run does not save it again.
            result.checkpoint, last_saved = save(run, say), 0
        while run.iteration < t.train_iters:
            progress(f"step {run.iteration + 1}", run.iteration + 1)
            t0 = time.perf_counter()
            result.train_loss = train_step(run)
            dt = time.perf_counter() - t0
            row = {
                "iteration": run.iteration,
                "loss": result.train_loss,
                "lr": float(run.scheduler.get_lr()),
                "tokens_seen": run.tokens_seen,
                **meter.step(run.step_tokens, run.step_seq_length, dt),
                "seconds": dt,
                "seq_length": run.seq_length,
            }
            if run.iteration % t.eval_interval == 0 or run.iteration == t.train_iters:
                result.valid_loss = evaluate(run)
                if result.valid_loss is not None:
                    row["valid_loss"] = result.valid_loss
                    say.on_eval(run.iteration, result.valid_loss)
            metrics.log(row)
            say.on_step(row)
            if (every and run.iteration % every == 0) or run.iteration in extra:
                result.checkpoint, last_saved = save(run, say), run.iteration
            if stop.agreed(dist.world_size, run.device):  # every rank, after the same step
                if run.iteration != last_saved:
                    result.checkpoint, last_saved = save(run, say), run.iteration
                stop.saved = True
                stopped = Stopped(stop.requested or "a signal", run.iteration, result.checkpoint)
                say.on_info(stopped_message(stopped, config_sources))
                if dist.world_size > 1:
                    import torch.distributed

                    # Leave together: under Slurm the first task to exit 75 ends the others' step.
                    torch.distributed.barrier()
                raise stopped
        if run.iteration != last_saved and run.iteration > start_iter:
            result.checkpoint = save(run, say)
        if cfg.eval.eval_tasks and dist.is_main:
            from neoxcli.evaluation.run import evaluate_after_training

            evaluate_after_training(cfg, result.checkpoint, run.iteration, metrics.log, say.on_info)
    finally:
        stop.restore()
        progress("the end of the run", watched=False)
        metrics.close()
        run.sampler.close()
        _finish_uploads(run, say)
    result.history = metrics.rows
    result.iterations, result.wall_s = run.iteration, time.perf_counter() - start_time
    result.steps, result.tokens = run.iteration - start_iter, run.tokens_seen - start_tokens
    result.tokens_per_s = result.tokens / result.wall_s if result.wall_s > 0 else 0.0
    result.model = run.engine.module
    if cfg.logging.sample_at_end and dist.is_main:
        result.sample = end_of_run_sample(run, result.checkpoint, say)
    say.on_end(result)
    return result


def end_of_run_sample(run: Run, checkpoint: Path | None, report: Reporter) -> str | None:
    """A short sample from the trained model, so the user sees what it learned."""
    if run.layout.tp == 1 and run.layout.pp == 1:
        return _sample(run.engine.module, run.tokenizer, run.cfg, run.device)
    if checkpoint is None:
        report.on_info("no end-of-run sample: a sharded model is sampled from its checkpoint (set save:)")
        return None
    import torch

    from neoxcli.checkpoint import load_module_state
    from neoxcli.model import GPTModel

    # This rank holds one shard; sample from the full model merged from the checkpoint just saved.
    full = GPTModel(run.cfg.model, run.plan.padded_vocab_size)
    full.load_state_dict(load_module_state(checkpoint, run.cfg.model))
    return _sample(full.to(device=run.device, dtype=torch.float32), run.tokenizer, run.cfg, run.device)


def _sample(model: Any, tokenizer: Any, cfg: NeoXConfig, device: Any, max_new_tokens: int = 64) -> str:
    from neoxcli.generation import generate

    was_training = model.training
    model.eval()
    try:
        prompt = [tokenizer.eod_id] if tokenizer.eod_id is not None else tokenizer.encode("\n")
        out = generate(model, prompt, max_new_tokens, temperature=0.8, top_k=40, seed=cfg.train.seed)
        return tokenizer.decode(out)
    finally:
        model.train(was_training)
