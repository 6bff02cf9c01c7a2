"""`neox eval`: lm-evaluation-harness tasks and perplexity on text (options in, ``evaluation.run`` out)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

HELP = """Evaluate a checkpoint on lm-evaluation-harness tasks, or its perplexity / bits per byte on text.

Examples:

    neox eval -c runs/quickstart --tasks lambada_openai,hellaswag --num-fewshot 0

    neox eval -c runs/quickstart --tasks my_task.yaml --batch-size 8 --log-samples

    neox eval -c runs/quickstart --text valid.txt --context-lengths 512,1024,2048

    neox eval -c runs/alibi --text enwik8,text8 --context-lengths 1024,2048,4096

    neox eval --hf ./pythia-70m --tasks my_tasks/ --include-path my_tasks

    neox eval --list-tasks lambada

    neox eval my-neox-model.yml                  # GPT-NeoX's eval.py: `load` and `eval_tasks` from the file
"""


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _ints(value: str | None, flag: str) -> list[int]:
    from neoxcli.errors import NeoxError

    try:
        return [int(v) for v in _split(value)]
    except ValueError:
        raise NeoxError(f"{flag} takes comma-separated whole numbers, got {value!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_(
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", "-c", help="Checkpoint (save) directory."
        ),
        tag: str | None = typer.Option(None, "--tag", help="A global_stepN tag instead of 'latest'."),
        hf: Path | None = typer.Option(
            None, "--hf", help="A Hugging Face model directory instead of a checkpoint."
        ),
        tasks: str | None = typer.Option(
            None, "--tasks", help="Comma-separated lm-eval task names, globs or task YAML files."
        ),
        include_path: list[Path] = typer.Option(
            [], "--include-path", help="A directory of task YAML files (repeatable)."
        ),
        args: list[str] = typer.Argument(
            None,
            metavar="[CONFIG.yml...]",
            show_default=False,
            help="GPT-NeoX configs: `load` names the checkpoint, `eval_tasks` the tasks, "
            "`eval_results_prefix` the results file. With --list-tasks: a PATTERN (substring or glob).",
        ),
        list_tasks: bool = typer.Option(
            False,
            "--list-tasks",
            help="List lm-eval's tasks, groups and tags (optionally matching PATTERN) and exit.",
        ),
        num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="Few-shot examples per prompt."),
        limit: float | None = typer.Option(
            None,
            "--limit",
            help="Only the first N documents per task (a fraction if < 1); recorded and warned.",
        ),
        batch_size: int = typer.Option(1, "--batch-size", help="Requests (or text windows) per forward."),
        seed: int = typer.Option(1234, "--seed", help="Seed for few-shot sampling and sampled generation."),
        bootstrap_iters: int = typer.Option(
            100_000,
            "--bootstrap-iters",
            min=0,
            help="Bootstrap resamples for stderr of non-mean metrics (0: off).",
        ),
        log_samples: bool = typer.Option(
            False, "--log-samples", help="Write every request and response to a JSONL beside the results."
        ),
        output_path: Path | None = typer.Option(
            None, "--output-path", help="Results JSON (default: CHECKPOINT/eval/results-<timestamp>.json)."
        ),
        fmt: str = typer.Option("table", "--format", help="What to print: table, json, markdown or csv."),
        text: str | None = typer.Option(
            None,
            "--text",
            help="Comma-separated text files (.txt, .jsonl with 'text', or a .bin/.idx prefix), or the "
            "presets enwik8, text8, wikitext-103 (their test splits, downloaded once and cached).",
        ),
        context_length: int | None = typer.Option(
            None, "--context-length", help="Window for --text (default: the model's seq_length)."
        ),
        context_lengths: str | None = typer.Option(
            None, "--context-lengths", help="Several windows for --text, one result row each: 512,1024,..."
        ),
        stride: int | None = typer.Option(
            None, "--stride", help="Tokens scored per window (default: the window, i.e. disjoint windows)."
        ),
        per_document: bool = typer.Option(
            False, "--per-document", help="Score each document on its own instead of one stream."
        ),
        device: str | None = typer.Option(
            None, "--device", help="cpu or cuda (default: cuda when available)."
        ),
        dtype: str = typer.Option(
            "fp32", "--dtype", help="fp32, bf16, fp16, or auto (bf16 where the device runs it fast)."
        ),
        max_gen_toks: int = typer.Option(256, "--max-gen-toks", min=1, help="Default generation length."),
    ) -> None:
        from neoxcli.errors import NeoxError

        fmt = fmt.lower()
        if fmt not in ("table", "json", "markdown", "csv"):
            raise NeoxError(f"unknown --format {fmt!r}", hint="use table, json, markdown or csv")
        args = list(args or [])
        if list_tasks:
            if len(args) > 1:
                raise NeoxError("--list-tasks takes one PATTERN", hint=f"got {' '.join(args)}")
            _print_task_list(args[0] if args else None, include_path)
            return
        if context_length is not None and context_lengths:
            raise NeoxError("give --context-length or --context-lengths, not both")
        lengths = _ints(context_lengths, "--context-lengths") or ([context_length] if context_length else [])

        from neoxcli.evaluation.run import EvalOptions, Hooks, run_evaluation

        opts = EvalOptions(
            checkpoint=checkpoint,
            tag=tag,
            hf_dir=hf,
            tasks=_split(tasks),
            include_path=list(include_path),
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            output_path=output_path,
            texts=_split(text),
            context_lengths=lengths,
            stride=stride,
            per_document=per_document,
            device=device,
            dtype=dtype,
            max_gen_toks=max_gen_toks,
        )
        if args:
            from neoxcli.evaluation.run import options_from_configs

            opts = options_from_configs(args, opts)
        from rich.console import Console

        err = Console(stderr=True)
        hooks = Hooks(
            warn=lambda msg: err.print(f"[yellow]warning:[/] {msg}", highlight=False),
            status=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False),
            progress=_progress_factory(err),
        )
        doc, output = run_evaluation(opts, hooks)
        _print_results(doc, fmt)
        err.print(f"results: {output}", highlight=False)
        if log_samples and opts.tasks:
            from neoxcli.evaluation.results import samples_path

            err.print(f"samples: {samples_path(output)}", highlight=False)


def _progress_factory(console: object):  # type: ignore[no-untyped-def]
    """A rich progress bar per text pass, advanced by bytes read."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    def make(description: str, total: int):  # type: ignore[no-untyped-def]
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,  # type: ignore[arg-type]
            transient=True,
        )
        progress.start()
        task = progress.add_task(description, total=total)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress.update(task, advance=n)
            if done[0] >= total:
                progress.stop()

        return advance

    return make


def _print_task_list(pattern: str | None, include_path: list[Path]) -> None:
    from rich.console import Console

    from neoxcli.evaluation.tasks import list_tasks, require_lm_eval

    require_lm_eval()
    rows = list_tasks(pattern, include_path)
    out = Console()
    for name, kind in rows:
        out.print(f"{name}\t{kind}", highlight=False, soft_wrap=True)
    Console(stderr=True).print(f"{len(rows)} tasks" + (f" matching {pattern!r}" if pattern else ""))


def _print_results(doc: dict, fmt: str) -> None:  # type: ignore[type-arg]
    import sys

    from neoxcli.evaluation.results import PPL_COLUMNS, metric_rows, render_csv, render_markdown

    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt == "markdown":
        sys.stdout.write(render_markdown(doc))
        return
    if fmt == "csv":
        sys.stdout.write(render_csv(doc))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = metric_rows(doc)
    if rows:
        table = Table(title="lm-eval tasks")
        for col in ("task", "version", "n-shot", "metric", "value", "± stderr"):
            table.add_column(col, justify="right" if col in ("value", "± stderr") else "left")
        for r in rows:
            value = r["value"]
            table.add_row(
                r["task"],
                str(r["version"] if r["version"] is not None else ""),
                str(r["n_shot"] if r["n_shot"] is not None else ""),
                r["metric"],
                f"{value:.4f}" if isinstance(value, float) else str(value),
                f"{r['stderr']:.4f}" if isinstance(r["stderr"], float) else "",
            )
        console.print(table)
    ppl = doc.get("perplexity") or []
    if ppl:
        table = Table(title="perplexity")
        for col in PPL_COLUMNS:
            table.add_column(col)
        for r in ppl:
            table.add_row(
                *[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c) or "") for c in PPL_COLUMNS]
            )
        console.print(table)
    limit = doc.get("config", {}).get("limit")
    if limit is not None:
        Console(stderr=True).print(f"[yellow]note:[/] --limit {limit:g} was in effect", highlight=False)
