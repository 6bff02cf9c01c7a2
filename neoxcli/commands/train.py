"""`neox train`: train a model from one or more config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = """Train a model from one or more YAML/JSON configs (merged left to right).

GPT-NeoX config files load as they are. Examples:

    neox train templates/quickstart.yml

    neox train model.yml data.yml --set train_iters=2000 --set zero_optimization.stage=1
"""


class ConsoleReporter:
    """Renders training events: a live progress bar on a terminal, log lines otherwise."""

    def __init__(self, log_interval: int, live: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.live = self.console.is_terminal if live is None else live
        self.log_interval = log_interval
        self.progress: Any = None
        self.task: Any = None
        self._losses: list[float] = []  # since the last log line: GPT-NeoX logs their mean

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        getattr(self, f"on_{event}", lambda d: None)(data)

    def on_info(self, d: dict[str, Any]) -> None:
        self.console.print(f"[bold cyan]neox[/]: {d['message']}")

    def on_start(self, d: dict[str, Any]) -> None:
        plan = d["plan"]
        self.console.print(
            f"[bold cyan]neox[/]: {d['params'] / 1e6:.2f}M parameters on {d['device']} "
            f"x{d['world_size']}, {plan.precision}, batch {plan.train_batch_size} "
            f"(micro {plan.micro_batch} x accum {plan.gradient_accumulation_steps} x dp {plan.dp_size}), "
            f"{d['iterations']} iterations"
        )
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("step {task.completed:>5.0f}/{task.total:.0f}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=d["iterations"], completed=d["start_iteration"], loss="-", lr="-", tps="-"
            )

    def on_step(self, row: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=row["iteration"],
                loss=f"{row['loss']:.4f}",
                lr=f"{row['lr']:.2e}",
                tps=f"{row['tokens_per_s']:,.0f}",
            )
        self._losses.append(row["loss"])
        if row["iteration"] % self.log_interval == 0 or "valid_loss" in row:
            mean = sum(self._losses) / len(self._losses)
            self._losses.clear()
            line = (
                f"step {row['iteration']:>6}  loss {mean:.4f}  lr {row['lr']:.3e}  "
                f"{row['tokens_per_s']:,.0f} tok/s"
            )
            if "valid_loss" in row:
                line += f"  valid_loss {row['valid_loss']:.4f}"
            self.console.print(line, highlight=False)

    def on_checkpoint(self, d: dict[str, Any]) -> None:
        self.console.print(f"[bold cyan]neox[/]: saved checkpoint {d['path']}", highlight=False)

    def on_end(self, d: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
        r = d["result"]
        parts = [f"{r.iterations} iterations in {r.wall_s:.1f} s", f"{r.tokens_per_s:,.0f} tok/s"]
        if r.train_loss is not None:
            parts.append(f"last step's loss {r.train_loss:.4f}")
        if r.valid_loss is not None:
            parts.append(f"valid loss {r.valid_loss:.4f}")
        self.console.print("[bold green]done[/]: " + ", ".join(parts), highlight=False)
        if r.checkpoint is not None:
            self.console.print(f"checkpoint: {r.checkpoint}", highlight=False)
        if r.sample:
            from rich.panel import Panel
            from rich.text import Text

            self.console.print(Panel(Text(r.sample), title="sample", expand=False))


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    def train(
        configs: list[Path] = typer.Argument(..., help="Config files (YAML or JSON), merged left to right."),
        set_: list[str] = typer.Option(
            [], "--set", "-s", help="Override a key: --set hidden_size=256 or --set model.num_layers=4."
        ),
        launcher: str | None = typer.Option(
            None, "--launcher", help="local (default), pdsh, slurm, mpi, jsrun, or an installed plugin."
        ),
        num_gpus: int | None = typer.Option(None, "--num-gpus", help="Processes (GPUs) per node."),
        hostfile: Path | None = typer.Option(
            None, "--hostfile", help="Hosts for multi-node launchers (`host slots=N` lines)."
        ),
        sbatch: bool = typer.Option(
            False, "--sbatch", help="slurm launcher: submit a batch job instead of srun."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact launch command(s) and exit."),
    ) -> None:
        import json

        from neoxcli.config import load_config
        from neoxcli.training.launch import run_training

        overrides = list(set_)
        if launcher:
            overrides.append(f"launcher.launcher={launcher}")
        if num_gpus is not None:
            overrides.append(f"num_gpus={num_gpus}")
        if hostfile is not None:
            overrides.append(f"hostfile={json.dumps(str(hostfile.absolute()))}")  # a YAML-safe string
        if sbatch:
            overrides.append("sbatch=true")
        cfg = load_config([str(c) for c in configs], overrides, warn=_warn)
        code = run_training(cfg, [str(c) for c in configs], dry_run=dry_run, reporter_factory=ConsoleReporter)
        if code:
            raise typer.Exit(code)


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)
