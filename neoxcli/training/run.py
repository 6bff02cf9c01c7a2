"""Everything a training run holds, built once before the first step: ``build_run(cfg) -> Run``.

Order: the model section a finetune takes from its weights → distributed init
→ data (prepared if a preset is missing) and tokenizer → the derived plan and
layout → which checkpoint to resume and how → the datasets (checked against
the vocabulary before any model exists) → the full model from the seed (and,
for a weights-only start, the full model's saved weights) → ``parallelize`` →
restored weights → optimizer and LR schedule → the DeepSpeed engine → restored
optimizer state, counters and RNG. Every rank builds the same full model
first, so all layouts start from the weights a single process would train.
``neoxcli.training.finetune`` holds what a finetune and a changed resume need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neoxcli.config.derived import Derived
from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import DataError, NeoxError
from neoxcli.parallel.distributed import DistEnv
from neoxcli.parallel.grid import Layout, ParallelGrid
from neoxcli.training.batches import BatchSampler, Prefetcher
from neoxcli.training.curriculum import SeqLengthSchedule
from neoxcli.training.documents import DocumentMasks, document_masks
from neoxcli.training.finetune import config_changes, saved_config
from neoxcli.training.report import Reporter


@dataclass
class Run:
    """A built run: the engine and everything the loop reads or advances."""

    cfg: NeoXConfig
    dist: DistEnv
    plan: Derived
    layout: Layout
    grid: ParallelGrid
    device: Any
    tokenizer: Any
    engine: Any
    scheduler: Any
    loss_fn: Callable[[Any, Any], Any]
    train_ds: Any
    valid_ds: Any
    sampler: BatchSampler | Prefetcher
    save_dir: Path | None
    iteration: int = 0
    consumed: int = 0
    n_params: int = 0
    resumed: bool = False  # started from a checkpoint (even one of iteration 0)
    tokens_seen: int = 0  # tokens trained on by the whole job, saved with each checkpoint
    step_tokens: int = 0  # the last step's, counted from its batches
    step_seq_length: int = 0
    uploader: Any = None  # the background upload to s3_path (neoxcli.checkpoint.s3.Uploader), once started
    curriculum: SeqLengthSchedule | None = None
    seq_length: int = 0  # what the last (or, before it, the next) step trains on; 0: seq_length
    pipe_seq_length: int | None = None  # the sample length the pipeline engine's buffers are shaped for
    precision_note: str = ""  # why ``precision: auto`` chose what it did; empty when the config named it
    documents: DocumentMasks | None = (
        None  # the packed-document keys (eod_mask_loss, reset_*), when any is on
    )

    def seq_length_at(self, step: int) -> int:
        """The sample length optimizer step ``step`` (from 1) trains on."""
        return self.curriculum.at(step) if self.curriculum is not None else self.cfg.model.seq_length

    def tokens_through(self, iteration: int) -> int:
        """Tokens the first ``iteration`` steps trained on (what a run resumed there has seen)."""
        if self.curriculum is None:
            return iteration * self.plan.train_batch_size * self.cfg.model.seq_length
        return self.plan.train_batch_size * self.curriculum.length_sum(iteration)

    @property
    def tokens_per_iter(self) -> int:
        """Tokens in the last step's global batch (the current curriculum length times the batch)."""
        return self.plan.train_batch_size * (self.seq_length or self.cfg.model.seq_length)

    def count_step(self, tokens: int, seq_length: int) -> None:
        """Record one step's trained tokens (the whole job's) and their sequence length.

        ``train_step`` counts them from the batches it ran, so a step of shorter
        sequences (a sequence-length curriculum) adds what it really trained on.
        """
        self.step_tokens, self.step_seq_length = tokens, seq_length
        self.tokens_seen += tokens

    def all_mean(self, value: float) -> float:
        """Mean of ``value`` over all ranks (the value itself in a one-process job)."""
        if self.dist.world_size == 1:
            return value
        import torch

        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.dist.world_size


@dataclass
class _Resume:
    load_dir: Path
    tag: str
    mode: str | None  # None: DeepSpeed's own files; "portable" / "reshard": the layout-free state
    portable: dict[str, Any] | None = None
    # Weights only (finetune, no_load_optim, or a checkpoint that holds nothing else, such as an import):
    # the full model's weights go into the model before it is parallelized, then the counters follow.
    weights_only: bool = False
    finetune: bool = False  # a new run from these weights: iteration 0, fresh optimizer, schedule, data
    weights: dict[str, Any] | None = None  # already read (a Hugging Face directory)
    saved: NeoXConfig | None = None  # the config saved with a training checkpoint a resume continues

    @property
    def tag_dir(self) -> Path:
        return self.load_dir / self.tag if self.tag else self.load_dir


def _prepare_save_dir(cfg: NeoXConfig, dist: DistEnv, report: Reporter) -> None:
    """Rank 0 undoes what a crash left in ``save`` (see ``neoxcli.checkpoint.savedir``) before anyone reads it."""
    from neoxcli.checkpoint.savedir import clean_save_dir

    if cfg.checkpoint.save and dist.is_main:
        for line in clean_save_dir(Path(cfg.checkpoint.save)):
            report.on_info(line)
    _barrier(dist)


def _barrier(dist: DistEnv) -> None:
    if dist.world_size > 1:
        import torch

        torch.distributed.barrier()


def _download_load(cfg: NeoXConfig, dist: DistEnv) -> str:
    """``load: s3://…``: each node's first rank downloads the tag into the local cache, which is then loaded."""
    from neoxcli.checkpoint.s3 import cache_dir_for, download_checkpoint

    ck = cfg.checkpoint
    assert ck.load is not None
    cache = cache_dir_for(ck.load, ck.save)
    if dist.local_rank == 0:
        download_checkpoint(ck.load, cache, ck.load_tag, ck.s3_endpoint_url)
    _barrier(dist)
    return str(cache)


def _find_resume(
    cfg: NeoXConfig,
    layout: Layout,
    grid: ParallelGrid,
    dist: DistEnv,
    report: Reporter,
    hf_weights: dict[str, Any] | None = None,
) -> _Resume | None:
    """The checkpoint to resume from and which path a layout change needs (refusing what would lose checkpoints).

    ``hf_weights``: ``load`` is a Hugging Face directory, already read (``finetune`` only).
    """
    from neoxcli.checkpoint import (
        check_resume_layout,
        holds_training_state,
        load_portable,
        read_layout,
        reading_checkpoint,
        saved_partition,
    )
    from neoxcli.checkpoint.portable import require_optimizer_state
    from neoxcli.checkpoint.savedir import clear_save_dir, plan_resume

    ck = cfg.checkpoint
    load = ck.load
    if load and load.startswith("s3://") and (ck.finetune or not ck.overwrite):
        load = _download_load(cfg, dist)  # --overwrite clears save for a finetune, but it still loads
    if hf_weights is not None:
        plan = _finetune_plan(cfg, load, hf=True)
    elif ck.finetune:
        plan = _finetune_plan(cfg, load)
    else:
        plan = plan_resume(load, ck.save, ck.load_tag, ck.overwrite)
    if ck.overwrite and ck.save and dist.is_main:
        removed = clear_save_dir(Path(ck.save))
        if removed:
            report.on_info(f"--overwrite: deleted {len(removed)} checkpoint(s) in {ck.save}")
    _barrier(dist)
    if plan.note:
        report.on_info(plan.note)
    if hf_weights is not None:
        return _Resume(Path(str(ck.load)), "", None, weights_only=True, finetune=True, weights=hf_weights)
    if plan.load_dir is None or plan.tag is None:
        return None
    resume = _Resume(plan.load_dir, plan.tag, None)
    trained = holds_training_state(resume.tag_dir)
    if trained and not ck.finetune:
        resume.saved = saved_config(resume.tag_dir)
    if ck.finetune or ck.no_load_optim or not trained:
        # Weights only: merged from any saved layout, so no layout check and no DeepSpeed load.
        resume.weights_only, resume.finetune = True, ck.finetune
        return resume
    require_optimizer_state(resume.tag_dir)
    saved_layout = read_layout(resume.tag_dir)
    if saved_layout is not None:
        resume.mode = check_resume_layout(
            saved_layout,
            layout,
            resume.tag_dir,
            saved_partition(resume.tag_dir),
            cfg.parallel.pipe_partition_method,
        )
    if resume.mode is not None:
        from neoxcli.training.optim import LAYOUT_BOUND, optimizer_kind

        kind = optimizer_kind(cfg)
        if kind in LAYOUT_BOUND and saved_layout is not None:

            def show(lay: Layout) -> str:
                return f"tp {lay.tp}, pp {lay.pp}, dp {lay.dp}, ZeRO {lay.zero_stage}"

            raise NeoxError(
                f"{resume.tag_dir} was saved under {show(saved_layout)} (now {show(layout)}); "
                f"the {kind} optimizer's state resumes only under the layout it was saved with",
                hint="resume with the saved parallel sizes, process count and ZeRO stage",
            )
    if resume.mode == "portable":
        with reading_checkpoint(resume.tag_dir, cfg.model):
            resume.portable = load_portable(resume.tag_dir, grid.stage, grid.tp_rank)
    return resume


def _finetune_plan(cfg: NeoXConfig, load: str | None, hf: bool = False) -> Any:
    """Where ``finetune: true`` takes its weights from; refused when ``save`` already holds a run's checkpoints.

    A finetune starts again at iteration 0 each time it is started, so its
    ``save`` must be new (or cleared with --overwrite, unless that would delete ``load``).
    """
    from neoxcli.checkpoint import list_checkpoints, read_latest
    from neoxcli.checkpoint.savedir import ResumePlan, plan_resume

    ck = cfg.checkpoint
    if not ck.load:
        raise NeoxError(
            "finetune: true needs checkpoint.load: the checkpoint (or Hugging Face directory) to start from",
            hint="set load: to a save directory, a `neox convert` output or a Hugging Face model directory",
        )
    save_dir = Path(ck.save) if ck.save else None
    if save_dir is not None and save_dir.absolute() == Path(ck.load).absolute():
        raise NeoxError(
            f"finetune: true with checkpoint.save the same directory as load ({save_dir}): the new run's "
            "checkpoints would mix with the ones it starts from",
            hint="give the finetuned run its own save directory",
        )
    if save_dir is not None and not ck.overwrite and list_checkpoints(save_dir):
        raise NeoxError(
            f"checkpoint.save: {save_dir} already holds checkpoints (latest: {read_latest(save_dir)}), and "
            "finetune: true would start again at iteration 0",
            hint=f"continue that run with --set load={save_dir} --set finetune=false, or start over with "
            "`neox train --overwrite` (deletes them) or a new save directory",
        )
    if hf:
        return ResumePlan(None, None, None)
    return plan_resume(load, None, ck.load_tag, False)


def _set_rng(run: Run, client: dict[str, Any]) -> None:
    from neoxcli.training.rng import set_rng_state

    rng = client.get("rng")
    if isinstance(rng, list) and rng:
        # Every rank starts from the same seed, so with another process count rank 0's state
        # is the one each rank would have reached.
        set_rng_state(rng[run.dist.rank] if client.get("world_size") == run.dist.world_size else rng[0])
    elif rng:
        set_rng_state(rng)


def _restore_counters(run: Run, resume: _Resume, report: Reporter) -> None:
    """After a weights-only load: iteration, data position, LR schedule and RNG, or a new run's zeros."""
    from neoxcli.checkpoint import load_client_state

    cfg = run.cfg
    if resume.finetune:
        report.on_info(
            f"finetuning from the weights of {resume.tag_dir}: iteration 0, a fresh optimizer, "
            "LR schedule and data position"
        )
        return
    client, schedule = load_client_state(resume.tag_dir)
    run.iteration = int(client.get("iteration") or 0)
    run.consumed = int(client.get("consumed_samples") or 0)
    run.scheduler.load_state_dict(schedule or {"num_iters": run.iteration})
    run.engine.global_steps, run.engine.global_samples = run.iteration, run.consumed
    run.resumed = True
    if not cfg.checkpoint.no_load_rng:
        _set_rng(run, client)
    why = "no_load_optim" if cfg.checkpoint.no_load_optim else "it holds weights only"
    report.on_info(
        f"resumed the weights of {resume.tag_dir} at iteration {run.iteration} with a fresh optimizer state ({why})"
    )


def _restore(run: Run, resume: _Resume, report: Reporter) -> None:
    """Optimizer state, schedule, counters and RNG from the checkpoint into the built engine."""
    from neoxcli.checkpoint import load_optimizer_state, reading_checkpoint, safe_engine_loads

    engine, cfg = run.engine, run.cfg
    if resume.weights_only:
        _restore_counters(run, resume, report)
    elif resume.portable is not None:
        # Weights, optimizer state and steps from the layout-free state (any layout).
        load_optimizer_state(engine, resume.portable, resume.tag_dir)
        run.scheduler.load_state_dict(resume.portable["lr_scheduler"])
        client = resume.portable["client"]
        engine.global_steps = int(client["iteration"])
        engine.global_samples = int(client["consumed_samples"])
        resume.portable = None
    else:
        with reading_checkpoint(resume.tag_dir, cfg.model), safe_engine_loads(engine):
            path, client = engine.load_checkpoint(str(resume.load_dir), tag=resume.tag)
        if path is None:
            raise NeoxError(f"could not load checkpoint {resume.tag_dir}")
    if not resume.weights_only:
        run.iteration = int(client["iteration"])
        run.consumed = int(client["consumed_samples"])
        run.tokens_seen = int(client.get("tokens_seen", -1))  # -1: a checkpoint from before the counter
        run.resumed = True
        if not cfg.checkpoint.no_load_rng:
            _set_rng(run, client)
        how = {
            "portable": " (from the layout-free state)",
            "reshard": " (tensor/pipeline layout changed: re-split from the layout-free state)",
        }.get(resume.mode or "", "")
        report.on_info(f"resumed from {resume.tag_dir} at iteration {run.iteration}{how}")
    changes = config_changes(resume.saved, cfg) if resume.saved is not None else []
    if changes:
        report.on_info(
            "warning: this resume continues the run saved in "
            f"{resume.tag_dir}, but these settings differ from the ones saved with it:\n"
            + "\n".join(f"  {line}" for line in changes)
            + "\n  hint: to start a new schedule from these weights instead, set finetune: true "
            "(with a new save directory)"
        )
    if run.iteration >= cfg.train.train_iters:
        report.on_info(
            f"the run in {resume.load_dir} is finished: iteration {run.iteration} of train_iters "
            f"{cfg.train.train_iters}. To continue it, raise train_iters "
            f"(--set train_iters={2 * max(run.iteration, 1)}); to start fresh, give save and load a new "
            "directory (--set save=runs/NEW --set load=runs/NEW) or pass --overwrite"
        )


def source_model(cfg: NeoXConfig) -> tuple[NeoXConfig, dict[str, Any] | None]:
    """The config to run with the model section of the weights it starts from, where it should take it.

    A finetune takes the model of its ``load`` (a neox checkpoint's config.yml
    or a Hugging Face directory's config.json), and so does a resume whose
    config sets no model key but the ``RUN_MODEL_KEYS``; a model key the config
    does set must agree. Also returns, when ``load`` is a Hugging Face directory, its weights
    converted to ours (read once, here).
    """
    from neoxcli.checkpoint.savedir import plan_resume
    from neoxcli.training.finetune import RUN_MODEL_KEYS, adopt_model, config_from_hf, is_hf_dir

    ck = cfg.checkpoint
    if not ck.load:
        return cfg, None
    if is_hf_dir(Path(ck.load)):
        if not ck.finetune:
            raise NeoxError(
                f"checkpoint.load: {ck.load} is a Hugging Face model directory, not a neox checkpoint to resume",
                hint="set finetune: true to train from its weights (or import it first with "
                f"`neox convert {ck.load} --from hf OUT`)",
            )
        return config_from_hf(cfg, Path(ck.load))
    if not ck.finetune and cfg.model.model_fields_set - RUN_MODEL_KEYS:
        return cfg, None
    if ck.load.startswith("s3://"):
        if ck.overwrite and not ck.finetune:
            return cfg, None
        tag, saved = _remote_saved_config(ck.load, ck.load_tag, ck.s3_endpoint_url)
        if saved is None:
            return cfg, None
        return adopt_model(cfg, saved.model, f"the checkpoint {ck.load}/{tag}"), None
    try:
        if ck.finetune:
            plan = plan_resume(ck.load, None, ck.load_tag, False)
        else:
            plan = plan_resume(ck.load, ck.save, ck.load_tag, ck.overwrite)
    except NeoxError:
        return cfg, None  # reported where the resume is planned, after start-up cleanup
    saved = saved_config(plan.load_dir / plan.tag) if plan.load_dir and plan.tag else None
    if saved is None:
        return cfg, None
    return adopt_model(cfg, saved.model, f"the checkpoint {plan.load_dir / plan.tag}"), None


def _remote_saved_config(
    url: str, tag: str | None, endpoint: str | None
) -> tuple[str | None, NeoXConfig | None]:
    """``(tag, its saved config)`` of ``load: s3://…``, from that one small object: the download comes later.

    ``(…, None)`` when it cannot be read; the download then names what is wrong.
    """
    import tempfile

    from neoxcli.checkpoint import CONFIG_NAME
    from neoxcli.checkpoint.s3 import client, remote_latest, split_url

    try:
        s3 = client(endpoint)
        tag = tag or remote_latest(s3, url)
        if tag is None:
            return None, None
        bucket, prefix = split_url(url)
        with tempfile.TemporaryDirectory() as tmp:
            tag_dir = Path(tmp) / tag
            tag_dir.mkdir()
            key = "/".join(p for p in (prefix, tag, CONFIG_NAME) if p)
            s3.download_file(bucket, key, str(tag_dir / CONFIG_NAME))
            return tag, saved_config(tag_dir)
    except Exception:  # noqa: BLE001 - network, credentials, no such key: reported by the download itself
        return tag, None


def _weights_into(model: Any, resume: _Resume, cfg: NeoXConfig, vocab: int) -> None:
    """A weights-only start loads the full model's weights here; a full resume first checks they would fit."""
    from neoxcli.checkpoint import CONFIG_NAME, load_module_state, reading_checkpoint
    from neoxcli.training.finetune import check_saved_model, load_full_weights

    if not resume.weights_only:
        if resume.saved is not None:
            check_saved_model(model, resume.saved.model, cfg.model, f"the checkpoint {resume.tag_dir}")
        return
    if resume.weights is not None:
        weights, source = resume.weights, f"the Hugging Face model in {resume.load_dir}"
        resume.weights = None
    else:
        if not (resume.tag_dir / CONFIG_NAME).is_file():
            raise NeoxError(
                f"{resume.tag_dir} has no {CONFIG_NAME}, so it is no neox checkpoint",
                hint=f"a GPT-NeoX checkpoint is imported first: neox convert {resume.load_dir} --from neox OUT",
            )
        saved = resume.saved or saved_config(resume.tag_dir)
        with reading_checkpoint(resume.tag_dir, cfg.model):
            weights = load_module_state(resume.tag_dir, saved.model if saved else cfg.model)
        source = f"the checkpoint {resume.tag_dir}"
    load_full_weights(model, weights, source, vocab)


def _start_curriculum(run: Run, report: Reporter) -> None:
    """Attach the sequence-length curriculum and say what each stage trains on."""
    from neoxcli.training.curriculum import build_schedule, describe

    run.curriculum = build_schedule(run.cfg)
    run.seq_length = run.seq_length_at(run.iteration + 1)
    if run.curriculum is None:
        return
    key = "seq_length_warmup" if run.cfg.train.seq_length_warmup is not None else "curriculum_learning"
    lines = describe(run.curriculum, run.cfg.train.train_iters, run.plan.train_batch_size)
    report.on_info(f"{key}: samples cut to the stage's length (the rest of each sample is dropped)")
    for line in lines:
        report.on_info(f"  {line}")


def build_run(cfg: NeoXConfig, dist: DistEnv, report: Reporter) -> Run:
    """Build this rank's run (see the module docstring for the order)."""
    import os

    import torch

    from neoxcli.checkpoint import load_module_weights, reading_checkpoint
    from neoxcli.config import resolve
    from neoxcli.config.derived import precision_from_hardware
    from neoxcli.cpu_memory import keep_freed_memory
    from neoxcli.data.tokenizer import build_tokenizer
    from neoxcli.model import GPTModel
    from neoxcli.model.precision import bf16_verdict
    from neoxcli.parallel.distributed import collective_timeout_s, init_distributed
    from neoxcli.parallel.plan import build_engine, make_loss_fn, parallelize
    from neoxcli.training.data import build_datasets, ensure_data
    from neoxcli.training.optim import build_optimizer
    from neoxcli.training.rng import seed_everything
    from neoxcli.training.schedule import AnnealingLR

    cfg, hf_weights = source_model(cfg)
    backend = init_distributed(dist, collective_timeout_s(cfg.launcher.distributed_timeout_minutes))
    ensure_data(cfg, is_main=dist.is_main, say=report.on_info, barrier=torch.distributed.barrier)
    tokenizer = build_tokenizer(
        cfg.tokenizer.tokenizer_type, cfg.tokenizer.vocab_file, cfg.tokenizer.merge_file
    )
    documents = document_masks(cfg.data, tokenizer.eod_id, tokenizer.name)
    device = torch.device(f"cuda:{dist.local_rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cpu":
        keep_freed_memory()  # 4-7% of a CPU step was the kernel re-zeroing pages malloc had returned
    verdict = bf16_verdict(device)
    plan = resolve(
        cfg, world_size=dist.world_size, vocab_size=tokenizer.vocab_size, bf16_supported=verdict.fast
    )
    precision_note = f"auto: {verdict.reason}" if precision_from_hardware(cfg.train) else ""
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
    grid = ParallelGrid(layout, dist.rank)
    _prepare_save_dir(cfg, dist, report)
    resume = _find_resume(cfg, layout, grid, dist, report, hf_weights)
    hf_weights = None  # held by resume until the model has them
    save_dir = Path(cfg.checkpoint.save) if cfg.checkpoint.save else None
    if cfg.train.compile and save_dir is not None:
        # Compiled kernels are cached with the run, so a resume does not compile again.
        # (Set, not defaulted: torch writes its own default into the variable on first use.)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((save_dir / "inductor-cache").absolute())

    # Data first: a bad dataset is found before the model is built (global RNGs are reseeded next).
    cache_dir = (
        Path(cfg.data.data_cache_dir)
        if cfg.data.data_cache_dir
        else (save_dir / "index-cache" if save_dir else Path(".neox-cache") / "index-cache")
    )
    train_ds, valid_ds, _test_ds = build_datasets(
        cfg,
        train_batch=plan.train_batch_size,
        cache_dir=cache_dir,
        rank=dist.rank,
        barrier=torch.distributed.barrier,
        vocab_size=plan.padded_vocab_size,
    )
    seed_everything(cfg.train.seed)
    model = GPTModel(cfg.model, plan.padded_vocab_size)
    if resume is not None:
        _weights_into(model, resume, cfg, tokenizer.vocab_size)
    loss_fn = make_loss_fn(grid.tp_group if layout.tp > 1 else None)
    module = parallelize(model, layout, grid, cfg, loss_fn)
    n_params = sum(p.numel() for p in module.parameters())  # this rank's shard
    if resume is not None and resume.mode == "reshard":
        # Tensor/pipeline layout changed: the full state from every saved shard, cut for this rank.
        from neoxcli.checkpoint import reshard_portable

        with reading_checkpoint(resume.tag_dir, cfg.model):
            resume.portable = reshard_portable(
                resume.tag_dir, module, cfg.model, plan.padded_vocab_size, layout.tp, grid.tp_rank
            )
    if resume is not None and resume.portable is not None:
        load_module_weights(module, resume.portable, tag_dir=resume.tag_dir, model_cfg=cfg.model)
    optimizer = build_optimizer(cfg, module, device.type)
    scheduler = AnnealingLR(
        optimizer,
        max_lr=cfg.train.optimizer.lr,
        min_lr=cfg.train.min_lr,
        warmup_iters=plan.warmup_iters,
        decay_iters=plan.lr_decay_iters,
        style=cfg.train.lr_decay_style,
    )
    engine = build_engine(module, optimizer, scheduler, cfg, plan, layout, grid)

    run = Run(
        cfg=cfg,
        dist=dist,
        plan=plan,
        layout=layout,
        grid=grid,
        device=device,
        tokenizer=tokenizer,
        engine=engine,
        scheduler=scheduler,
        loss_fn=loss_fn,
        train_ds=train_ds,
        valid_ds=valid_ds,
        sampler=Prefetcher(
            BatchSampler(train_ds, plan.micro_batch, plan.dp_size, grid.dp_rank, documents),
            plan.gradient_accumulation_steps,
            plan.train_batch_size,
            cfg.data.num_workers,
            pin=device.type == "cuda",
        ),
        save_dir=save_dir,
        n_params=n_params,
        precision_note=precision_note,
        documents=documents,
    )
    if documents is not None:
        report.on_info(documents.describe())
    if resume is not None:
        _restore(run, resume, report)
    _start_curriculum(run, report)
    if run.tokens_seen < 0:  # resumed from a checkpoint saved before the counter: what its steps trained on
        run.tokens_seen = run.tokens_through(run.iteration)
    if save_dir is not None:
        from neoxcli.checkpoint import tag_for
        from neoxcli.checkpoint.savedir import check_new_tags, planned_tags

        ck = cfg.checkpoint
        steps = planned_tags(
            run.iteration, cfg.train.train_iters, ck.checkpoint_factor, ck.extra_save_iters or [], run.resumed
        )
        check_new_tags(save_dir, steps, tag_for)
    if train_ds is None and run.iteration < cfg.train.train_iters:
        raise DataError(
            f"the training split is empty: split {cfg.data.split!r} gives training no data",
            hint='give training a share, e.g. split: "969,30,1"',
        )
    return run
