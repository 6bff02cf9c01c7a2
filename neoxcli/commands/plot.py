"""`neox plot`: training curves of one or more runs from their metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Plot training curves from runs' metrics.jsonl: loss against steps and tokens, learning rate, tokens/s.

Each RUN is a run directory (a training run's `save`) or a metrics.jsonl file; several runs are overlaid,
one colour each. Training loss is solid, validation loss dashed.

\b
Examples:
    neox plot runs/quickstart -o curves.png
    neox plot runs/lr-3e-4 runs/lr-1e-3 --log-x -o sweep.svg
"""


def register(app: typer.Typer) -> None:
    @app.command("plot", help=HELP)
    def plot(
        runs: list[Path] = typer.Argument(
            ..., metavar="RUN...", help="Run directories or metrics.jsonl files."
        ),
        output: Path = typer.Option(Path("curves.png"), "-o", "--output", help="Image to write."),
        fmt: str | None = typer.Option(
            None, "--format", metavar="png|svg", help="Image format (default: the output's suffix)."
        ),
        log_x: bool = typer.Option(False, "--log-x", help="Logarithmic step and token axes."),
        label: list[str] = typer.Option(
            [], "--label", help="Legend name of each run, in order (default: the directory's name)."
        ),
    ) -> None:
        from neoxcli.errors import NeoxError
        from neoxcli.training.plot import output_format, plot_curves, read_curves

        if label and len(label) != len(runs):
            raise NeoxError(f"--label was given {len(label)} time(s) for {len(runs)} run(s)")
        output_format(output, fmt)  # a wrong format is found before any file is read
        names = label or _names(runs)
        curves = [read_curves(run, name) for run, name in zip(runs, names, strict=True)]
        plot_curves(curves, output, fmt=fmt, log_x=log_x)
        typer.echo(f"saved {output}")


def _names(runs: list[Path]) -> list[str]:
    """Legend names: each run's directory name, made unique with its parent where two are the same."""
    base = [(r if r.is_dir() else r.parent).absolute() for r in runs]
    names = [b.name for b in base]
    return [f"{b.parent.name}/{b.name}" if names.count(b.name) > 1 else b.name for b in base]
