"""What a training run tells the outside world, and the console that shows it.

``Reporter`` is the typed interface ``train`` calls on rank 0 (a start banner,
one call per step, evaluation, checkpoint, info lines, the end). The library
ships ``ConsoleReporter`` (rich progress on a terminal, GPT-NeoX-style log
lines otherwise) and ``NullReporter``; a caller can pass any object with these
methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from neoxcli.config.derived import Derived


@dataclass(frozen=True)
class StartInfo:
    """The facts of a run printed once before its first step."""

    iterations: int
    start_iteration: int
    params: int
    plan: Derived
    device: str
    world_size: int
    train_samples: int
    precision_note: str = ""  # why ``auto`` chose the precision, printed next to it


@dataclass
class TrainResult:
    """What a finished run reports back to the command."""

    iterations: int = 0
    steps: int = 0  # trained in this call (0: the run was already finished)
    tokens: int = 0  # trained on in this call
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    checkpoint: Path | None = None
    sample: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model: Any = field(default=None, repr=False)


class Reporter(Protocol):
    def on_info(self, message: str) -> None: ...

    def on_start(self, info: StartInfo) -> None: ...

    def on_step(self, row: dict[str, Any]) -> None: ...

    def on_eval(self, iteration: int, valid_loss: float) -> None: ...

    def on_save(self, iteration: int, path: Path) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


class NullReporter:
    """Says nothing: what ranks other than 0 (and library callers who want silence) use."""

    def on_info(self, message: str) -> None:
        pass

    def on_start(self, info: StartInfo) -> None:
        pass

    def on_step(self, row: dict[str, Any]) -> None:
        pass

    def on_eval(self, iteration: int, valid_loss: float) -> None:
        pass

    def on_save(self, iteration: int, path: Path) -> None:
        pass

    def on_end(self, result: TrainResult) -> None:
        pass


class ConsoleReporter(NullReporter):
    """Renders training: a live progress bar on a terminal, log lines otherwise."""

    def __init__(self, log_interval: int, live: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.live = self.console.is_terminal if live is None else live
        self.log_interval = log_interval
        self.progress: Any = None
        self.task: Any = None
        self._losses: list[float] = []  # since the last log line: GPT-NeoX logs their mean

    def on_info(self, message: str) -> None:
        self.console.print(f"[bold cyan]neox[/]: {message}")

    def on_start(self, info: StartInfo) -> None:
        plan = info.plan
        self.console.print(
            f"[bold cyan]neox[/]: {info.params / 1e6:.2f}M parameters on {info.device} "
            f"x{info.world_size}, {plan.precision}{f' ({info.precision_note})' if info.precision_note else ''}, batch {plan.train_batch_size} "
            f"(micro {plan.micro_batch} x accum {plan.gradient_accumulation_steps} x dp {plan.dp_size}), "
            f"{info.iterations} iterations"
        )
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("step {task.completed:>5.0f}/{task.total:.0f}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("MFU {task.fields[mfu]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train",
                total=info.iterations,
                completed=info.start_iteration,
                loss="-",
                lr="-",
                tps="-",
                mfu="-",
            )

    def on_step(self, row: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=row["iteration"],
                loss=f"{row['loss']:.4f}",
                lr=f"{row['lr']:.2e}",
                tps=f"{row['tokens_per_s']:,.0f}",
                mfu=f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "-",
            )
        self._losses.append(row["loss"])
        if row["iteration"] % self.log_interval == 0 or "valid_loss" in row:
            mean = sum(self._losses) / len(self._losses)
            self._losses.clear()
            # one line per step in log files too, however narrow the console
            self.console.print(log_line(row, mean), highlight=False, soft_wrap=True)

    def on_save(self, iteration: int, path: Path) -> None:
        self.console.print(f"[bold cyan]neox[/]: saved checkpoint {path}", highlight=False)

    def on_end(self, result: TrainResult) -> None:
        if self.progress is not None:
            self.progress.stop()
        r = result
        if r.steps == 0:
            # Nothing trained (a finished run asked again): the info line said what to do instead.
            return
        parts = [
            f"{r.steps} iterations in {r.wall_s:.1f} s",
            f"{r.tokens_per_s:,.0f} tok/s",
            f"{count(r.tokens)} tokens",
        ]
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


def count(n: float) -> str:
    """``1.31M``, ``20.5K``, ``512``: a token count for a log line."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def log_line(row: dict[str, Any], loss: float) -> str:
    """GPT-NeoX-style text line of a step: loss (the mean since the last line), lr, throughput, tokens seen."""
    line = (
        f"step {row['iteration']:>6}  loss {loss:.4f}  lr {row['lr']:.3e}  {row['tokens_per_s']:,.0f} tok/s"
    )
    if row.get("tflops") is not None:
        line += f"  {row['tflops']:.3g} TFLOP/s"
    if row.get("mfu") is not None:
        line += f"  MFU {100 * row['mfu']:.1f}%"
    if row.get("tokens_seen") is not None:
        line += f"  tokens {count(row['tokens_seen'])}"
    if "valid_loss" in row:
        line += f"  valid_loss {row['valid_loss']:.4f}"
    return line
