"""Training curves from runs' ``metrics.jsonl``: what ``neox plot`` draws.

``read_curves`` reads one run (its directory or the file itself) into plain
lists; ``plot_curves`` draws any number of runs into one figure of four panels:
loss against steps, loss against tokens seen, the learning rate and tokens/s,
each run one colour (training loss solid, validation loss dashed with
markers). matplotlib (the ``plot`` extra) is imported only to draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError, NeoxError

MATPLOTLIB_HINT = "pip install 'neoxcli[plot]' (matplotlib)"
FORMATS = ("png", "svg")


@dataclass
class Curves:
    """One run's series; ``tokens`` / ``valid_tokens`` are empty for rows written without ``tokens_seen``."""

    name: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    valid_steps: list[int] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_tokens: list[float] = field(default_factory=list)


def metrics_file(run: Path) -> Path:
    """``run/metrics.jsonl`` for a run directory, ``run`` itself for a file; one error line when absent."""
    if run.is_dir():
        path = run / "metrics.jsonl"
        if not path.is_file():
            raise DataError(
                f"{run}: no metrics.jsonl in this directory",
                hint="name a run directory (the `save` of a training run) or its metrics.jsonl",
            )
        return path
    if not run.exists():
        raise DataError(f"{run}: no such run directory or metrics file")
    return run


def read_curves(run: Path, name: str | None = None) -> Curves:
    """One run's curves from its ``metrics.jsonl``; a bad line is one error naming file and line.

    Rows without a ``loss`` (extra scalars such as evaluation results) are
    skipped; an unfinished last line (a run still writing) is ignored.
    """
    path = metrics_file(run)
    label = name or (run.name if run.is_dir() else run.parent.name) or str(run)
    curves = Curves(label)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            _add_row(curves, row)
        except (ValueError, TypeError, KeyError) as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn by a run that is still writing
            raise DataError(f"{path} line {number}: not a metrics row ({exc})") from None
    if not curves.steps and not curves.valid_steps:
        raise DataError(f"{path} has no training rows", hint="plot a run that has trained at least one step")
    return curves


def _add_row(curves: Curves, row: dict[str, Any]) -> None:
    if "loss" not in row and "valid_loss" not in row:
        return
    step = int(row["iteration"])
    tokens = row.get("tokens_seen")
    if "loss" in row:
        curves.steps.append(step)
        curves.loss.append(float(row["loss"]))
        curves.lr.append(float(row.get("lr", math.nan)))
        curves.tokens_per_s.append(float(row.get("tokens_per_s", math.nan)))
        if tokens is not None:
            curves.tokens.append(float(tokens))
    if row.get("valid_loss") is not None:
        curves.valid_steps.append(step)
        curves.valid_loss.append(float(row["valid_loss"]))
        if tokens is not None:
            curves.valid_tokens.append(float(tokens))


def output_format(output: Path, fmt: str | None) -> str:
    """The image format: ``fmt``, else the output's suffix; one error when they disagree or neither is known."""
    suffix = output.suffix.lower().lstrip(".")
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise NeoxError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if suffix and suffix != fmt:
            raise NeoxError(
                f"--format {fmt} does not match the output name {output}", hint=f"name it {output.stem}.{fmt}"
            )
        return fmt
    if suffix not in FORMATS:
        raise NeoxError(
            f"cannot tell the image format of {output}", hint="name it .png or .svg, or pass --format"
        )
    return suffix


def plot_curves(runs: list[Curves], output: Path, *, fmt: str | None = None, log_x: bool = False) -> Path:
    """Draw ``runs`` into ``output`` (written under a temporary name, then renamed); returns the path."""
    import os
    import tempfile

    from neoxcli.fileio import check_output_file, write_error

    kind = output_format(output, fmt)
    check_output_file(output)
    plt = _pyplot()
    # SVG text stays text (searchable, smaller) instead of outlined glyphs.
    with plt.rc_context({"svg.fonttype": "none"}):
        fig = draw_curves(runs, log_x=log_x)
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=kind, dpi=100)
            os.replace(tmp, output)
        except OSError as exc:
            raise write_error(output, exc) from exc
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
    return output


def draw_curves(runs: list[Curves], *, log_x: bool = False) -> Any:
    """The figure of ``plot_curves``: four panels, one colour per run, a legend naming runs and line styles."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (by_step, by_tokens), (lr_ax, speed_ax) = axes
    lr_ax.sharex(by_step)  # the three step panels line up
    speed_ax.sharex(by_step)
    colors = plt.get_cmap("tab10")
    no_tokens = []
    for i, run in enumerate(runs):
        color = colors(i % 10)
        _loss_panel(by_step, run.steps, run.loss, run.valid_steps, run.valid_loss, color, run.name)
        if run.tokens and len(run.tokens) == len(run.loss):
            _loss_panel(by_tokens, run.tokens, run.loss, run.valid_tokens, run.valid_loss, color, run.name)
        else:
            no_tokens.append(run.name)
        lr_ax.plot(run.steps, run.lr, color=color, linewidth=1.4, label=run.name)
        # The first step includes start-up work (allocation, compilation); it would squash the axis.
        speed_ax.plot(run.steps[1:], run.tokens_per_s[1:], color=color, linewidth=1.0, label=run.name)
    by_step.set(title="loss against steps", xlabel="step", ylabel="loss")
    by_tokens.set(title="loss against tokens seen", xlabel="tokens", ylabel="loss")
    by_tokens.xaxis.set_major_formatter(EngFormatter(sep=""))  # 40k, 1.5M instead of 40000, 1.5e6
    if no_tokens:
        by_tokens.text(
            0.5, 0.02, "no tokens_seen in: " + ", ".join(no_tokens), transform=by_tokens.transAxes,
            ha="center", fontsize=8, color="0.4",
        )  # fmt: skip
    lr_ax.set(title="learning rate", xlabel="step", ylabel="lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    speed_ax.set(title="throughput", xlabel="step", ylabel="tokens/s")
    speed_ax.set_ylim(bottom=0)
    speed_ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if log_x:
            ax.set_xscale("log")
    styles = [
        Line2D([], [], color="0.3", linewidth=1.4, label="train"),
        Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=4, label="valid"),
    ]
    handles = [
        Line2D([], [], color=colors(i % 10), linewidth=2.5, label=run.name) for i, run in enumerate(runs)
    ]
    by_step.legend(handles=handles + styles, fontsize=9, loc="upper right")
    fig.tight_layout()
    return fig


def _loss_panel(
    ax: Any, x: list[float], loss: list[float], vx: list[float], vloss: list[float], color: Any, name: str
) -> None:
    ax.plot(x, loss, color=color, linewidth=1.2, alpha=0.85, label=name)
    if vx and len(vx) == len(vloss):
        ax.plot(vx, vloss, color=color, linestyle="--", marker="o", markersize=4, linewidth=1.2)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NeoxError("neox plot needs matplotlib", hint=MATPLOTLIB_HINT) from None
    return plt
