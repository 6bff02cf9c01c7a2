"""One ``neox eval`` run: check every input, load the model once, run tasks and text, write results.

Everything that can be wrong with the input is found before the model loads or
any file is written: the checkpoint, every task name and task file, every
dataset (loaded while the tasks are built), every text file, the context
lengths against the model's positions, the stride. The results document is
then rewritten after each finished task or text row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError, NeoxError

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What ``neox eval`` was asked to do (the command's arguments, parsed)."""

    checkpoint: Path | None = None
    tag: str | None = None
    hf_dir: Path | None = None
    tasks: list[str] = field(default_factory=list)
    include_path: list[Path] = field(default_factory=list)
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 1
    seed: int = 1234
    bootstrap_iters: int = 100_000
    log_samples: bool = False
    output_path: Path | None = None
    texts: list[str] = field(default_factory=list)
    context_lengths: list[int] = field(default_factory=list)
    stride: int | None = None
    per_document: bool = False
    device: str | None = None
    dtype: str = "fp32"
    max_gen_toks: int = 256


@dataclass
class Hooks:
    """How the run talks to whoever drives it (the command prints; a library caller may ignore)."""

    warn: Callable[[str], None] = lambda msg: log.warning(msg)
    status: Callable[[str], None] = lambda msg: log.info(msg)
    #: progress(description, total) -> advance(n); used for text scoring
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    task_done: Callable[[str, dict[str, Any]], None] = lambda spec, doc: None


def check_options(opts: EvalOptions) -> None:
    """Argument mistakes that need no file and no model."""
    if (opts.checkpoint is None) == (opts.hf_dir is None):
        raise NeoxError(
            "give a checkpoint (--checkpoint/-c RUN) or a Hugging Face directory (--hf DIR), one of them"
        )
    if not opts.tasks and not opts.texts:
        raise NeoxError(
            "nothing to evaluate", hint="pass --tasks NAME[,NAME...] and/or --text FILE[,FILE...]"
        )
    if opts.batch_size < 1:
        raise NeoxError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.limit is not None and opts.limit <= 0:
        raise NeoxError(f"--limit must be positive, got {opts.limit}")
    if opts.num_fewshot is not None and opts.num_fewshot < 0:
        raise NeoxError(f"--num-fewshot must be >= 0, got {opts.num_fewshot}")
    for n in opts.context_lengths:
        if n < 2:
            raise NeoxError(f"context length must be at least 2, got {n}")
    if opts.stride is not None:
        if opts.stride <= 0:
            raise NeoxError(f"--stride must be positive, got {opts.stride}")
        for n in opts.context_lengths:
            if opts.stride > n:
                raise NeoxError(f"--stride {opts.stride} is larger than the context length {n}")
    if (opts.context_lengths or opts.stride or opts.per_document) and not opts.texts:
        raise NeoxError("--context-length(s), --stride and --per-document apply to --text only")


def run_evaluation(opts: EvalOptions, hooks: Hooks | None = None) -> tuple[dict[str, Any], Path]:
    """Run everything ``opts`` asks for; returns the results document and where it was written."""
    from neoxcli.evaluation import models
    from neoxcli.evaluation.results import ResultsWriter, default_output

    hooks = hooks or Hooks()
    check_options(opts)
    if opts.checkpoint is not None:
        from neoxcli.checkpoint import resolve_checkpoint

        resolve_checkpoint(opts.checkpoint, opts.tag)  # a missing checkpoint fails before any import
    elif not Path(opts.hf_dir).is_dir():  # type: ignore[arg-type]
        raise DataError(f"--hf {opts.hf_dir}: no such directory")

    built: list[tuple[str, list[Any]]] = []
    plan = None
    lm_eval_version = None
    if opts.tasks:
        from neoxcli.evaluation import tasks as T

        lm_eval_version = T.require_lm_eval()
        if T.go_offline_if_unreachable():
            hooks.status("Hugging Face Hub unreachable or offline: datasets must already be on disk")
        plan = T.plan_tasks(opts.tasks, opts.include_path)
        if plan.built_in_index:
            hooks.status("indexed lm-eval's built-in tasks")
        built = T.build_tasks(plan)

    sources = []
    presets: dict[str, Any] = {}
    if opts.texts:
        sources = [_text_source(t, hooks, presets) for t in opts.texts]

    device = models.pick_device(opts.device)
    if opts.checkpoint is not None:
        loaded = models.load_checkpoint(opts.checkpoint, opts.tag, device, opts.dtype)
    else:
        loaded = models.load_hf(opts.hf_dir, device, opts.dtype)  # type: ignore[arg-type]
    lengths = opts.context_lengths or [loaded.model_config.seq_length]
    if sources:
        from neoxcli.evaluation.perplexity import position_note

        for n in lengths:
            position_note(loaded.model_config, n)  # refuses what learned positions cannot represent
            if opts.stride is not None and opts.stride > n:
                raise NeoxError(f"--stride {opts.stride} is larger than the context length {n}")

    base = opts.checkpoint if opts.checkpoint is not None else opts.hf_dir
    output = Path(opts.output_path) if opts.output_path else default_output(Path(base))  # type: ignore[arg-type]
    from neoxcli.fileio import check_output_file

    check_output_file(output)
    if opts.limit is not None:
        hooks.warn(
            f"--limit {opts.limit:g}: each task scores only its first {opts.limit:g} documents"
            if opts.limit >= 1
            else f"--limit {opts.limit:g}: each task scores only that fraction of its documents"
            + "; the numbers are not comparable with full-task results"
        )
    import torch

    config = {
        **loaded.source,
        "model": loaded.model_config.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "lm_eval_version": lm_eval_version,
        "neox_version": _neox_version(),
        "torch_version": torch.__version__,
        "num_fewshot": opts.num_fewshot,
        "limit": opts.limit,
        "batch_size": opts.batch_size,
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "device": device,
        "seed": opts.seed,
        "bootstrap_iters": opts.bootstrap_iters,
        "protocol": {
            "adapter": "neoxcli.evaluation.adapter.NeoxLM (lm-eval hf-backend conventions)",
            "max_length": loaded.model_config.max_positions,
            "max_gen_toks": opts.max_gen_toks,
            "loglikelihood": "requests sorted longest first, right-padded batches, one forward per shared prefix",
            "rolling": "lm-eval disjoint windows of max_length, first conditioned on the prefix token",
            "generation": "KV cache; greedy unless do_sample; left-padded batches under a key mask",
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }
    if presets:
        config["text_presets"] = presets
    writer = ResultsWriter(output, config, log_samples=opts.log_samples)

    if built:
        from neoxcli.evaluation.adapter import NeoxLM
        from neoxcli.evaluation.tasks import run_task

        lm = NeoxLM(
            loaded.model,
            loaded.tokenizer,
            batch_size=opts.batch_size,
            max_gen_toks=opts.max_gen_toks,
            seed=opts.seed,
            device=device,
        )
        for spec, objects in built:
            hooks.status(f"running {spec}")
            t0 = time.time()
            out = run_task(
                lm,
                objects,
                plan.manager,  # type: ignore[union-attr]
                num_fewshot=opts.num_fewshot,
                limit=opts.limit,
                bootstrap_iters=opts.bootstrap_iters,
                log_samples=opts.log_samples,
                seed=opts.seed,
            )
            writer.add_task_result(spec, out, time.time() - t0)
            hooks.task_done(spec, writer.doc)

    if sources:
        from neoxcli.evaluation.perplexity import evaluate_text

        total = sum(s.size for s in sources)
        for n in lengths:
            advance = hooks.progress(f"perplexity, context {n}", total) if hooks.progress else None
            row = evaluate_text(
                loaded.model,
                loaded.tokenizer,
                sources,
                context_length=n,
                stride=opts.stride,
                per_document=opts.per_document,
                batch_size=opts.batch_size,
                progress=advance,
            )
            writer.add_perplexity([row.as_dict()])
            hooks.task_done(f"text@{n}", writer.doc)
    writer.finish()
    return writer.doc, output


def _text_source(spec: str, hooks: Hooks, presets: dict[str, Any]) -> Any:
    """One ``--text`` entry: a file, or a preset name (its test split, downloaded and cached on first use)."""
    from dataclasses import replace

    from neoxcli.evaluation.perplexity import open_source
    from neoxcli.evaluation.text_presets import fetch_text_preset, preset_name

    name = preset_name(spec)
    if name is None:
        return open_source(spec)
    advance: list[Callable[[int], None]] = []
    seen = [0]

    def progress(done: int, total: int | None) -> None:
        if hooks.progress is None or not total:
            return
        if not advance:
            advance.append(hooks.progress(f"downloading {name}", total))
        advance[0](done - seen[0])
        seen[0] = done

    path, manifest = fetch_text_preset(name, progress=progress)
    presets[name] = {**manifest, "path": str(path.resolve())}
    return replace(open_source(path), label=name)


def _neox_version() -> str:
    from neoxcli import __version__

    return __version__


# --------------------------------------------------------------------------- GPT-NeoX configs


def options_from_configs(paths: list[str], opts: EvalOptions) -> EvalOptions:
    """``neox eval cfg.yml [more.yml]``, as GPT-NeoX's ``eval.py cfg.yml`` reads its files.

    The merged files' ``load`` (and ``load_tag``) name the checkpoint, ``eval_tasks``
    the tasks and ``eval_results_prefix`` the results file; what the command line
    gives wins over the files. Keys that matter only to training are not reported.
    """
    from dataclasses import replace

    from neoxcli.config import load_config
    from neoxcli.evaluation.results import prefixed_output

    cfg = load_config(paths, warn=lambda message: None)
    changes: dict[str, Any] = {}
    if opts.checkpoint is None and opts.hf_dir is None:
        if not cfg.checkpoint.load:
            raise NeoxError(
                f"no checkpoint: {', '.join(map(str, paths))} name no `load`",
                hint="add `load: DIR` to the config, or pass --checkpoint (-c) DIR",
            )
        changes["checkpoint"] = Path(cfg.checkpoint.load)
        if opts.tag is None and cfg.checkpoint.load_tag:
            changes["tag"] = cfg.checkpoint.load_tag
    if not opts.tasks and cfg.eval.eval_tasks:
        changes["tasks"] = list(cfg.eval.eval_tasks)
    if opts.output_path is None and cfg.eval.eval_results_prefix:
        changes["output_path"] = prefixed_output(cfg.eval.eval_results_prefix)
    if not (opts.tasks or opts.texts or changes.get("tasks")):
        raise NeoxError(
            f"nothing to evaluate: {', '.join(map(str, paths))} set no eval_tasks",
            hint="add `eval_tasks: [TASK, ...]` to the config, or pass --tasks / --text",
        )
    return replace(opts, **changes)


def evaluate_after_training(
    cfg: Any,
    checkpoint: Path | None,
    iteration: int,
    log_row: Callable[[dict[str, Any]], None],
    info: Callable[[str], None],
) -> dict[str, float]:
    """``neox train`` with ``eval_tasks``: score the run's final checkpoint and log ``eval/{task}/{metric}``.

    The results document is written as ``neox eval`` writes it (under the save
    directory, or as ``eval_results_prefix`` names it). Training is already done
    and saved, so a mistake in the tasks is reported, not raised: ``neox eval
    cfg.yml`` runs them again once fixed.
    """
    from neoxcli.evaluation.results import prefixed_output

    tasks = list(cfg.eval.eval_tasks or [])
    if not tasks:
        return {}
    if checkpoint is None:
        info("eval_tasks: nothing evaluated, this run saved no checkpoint (set save:)")
        return {}
    prefix = cfg.eval.eval_results_prefix
    opts = EvalOptions(
        checkpoint=checkpoint.parent,
        tag=checkpoint.name,
        tasks=tasks,
        batch_size=cfg.train.train_micro_batch_size_per_gpu or 1,
        seed=cfg.train.seed,
        # Mean metrics (acc) get their closed-form stderr whatever the count; few resamples for the others.
        bootstrap_iters=100,
        output_path=prefixed_output(prefix) if prefix else None,
    )
    info(f"evaluating {checkpoint.name} on {', '.join(tasks)}")
    try:
        doc, output = run_evaluation(opts, Hooks(warn=info, status=lambda message: None))
    except NeoxError as exc:
        info(f"eval_tasks not evaluated: {exc}" + (f" ({exc.hint})" if exc.hint else ""))
        return {}
    scalars = eval_scalars(doc)
    log_row({"iteration": iteration, **scalars})
    for task, metrics in doc.get("metrics", {}).items():
        shown = ", ".join(
            f"{m} {v['value']:.4f}" for m, v in metrics.items() if isinstance(v.get("value"), (int, float))
        )
        info(f"eval {task}: {shown}")
    info(f"eval results: {output}")
    return scalars


def eval_scalars(doc: dict[str, Any]) -> dict[str, float]:
    """``eval/{task}/{metric}`` (and ``.../{metric}_stderr``) numbers of a results document; no "N/A" strings."""
    out: dict[str, float] = {}
    for task, metrics in doc.get("metrics", {}).items():
        for metric, entry in metrics.items():
            for suffix, value in (("", entry.get("value")), ("_stderr", entry.get("stderr"))):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"eval/{task}/{metric}{suffix}"] = float(value)
    return out
