"""`neox plot`: curves read from metrics.jsonl, several runs in one figure, one error line for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from neoxcli.cli import main

pytest.importorskip("matplotlib")


def write_run(run: Path, steps: int = 20, lr: float = 1e-3, torn: bool = False) -> Path:
    """A run directory whose metrics.jsonl looks like training's: valid loss every 5 steps, one eval row."""
    run.mkdir(parents=True)
    lines = []
    for it in range(1, steps + 1):
        row = {
            "iteration": it,
            "loss": 5.0 * math.exp(-it / 10) + 1.0,
            "lr": lr * min(1.0, it / 4),
            "tokens_seen": 256 * it,
            "tokens_per_s": 1000.0 + it,
            "tflops": 0.01,
            "mfu": 0.2,
            "seconds": 0.25,
        }
        if it % 5 == 0:
            row["valid_loss"] = row["loss"] + 0.1
        lines.append(json.dumps(row))
    lines.append(json.dumps({"iteration": steps, "eval/lambada/acc": 0.25}))  # extra scalars: no curve
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iteration": 99, "lo'
    (run / "metrics.jsonl").write_text(text)
    return run


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[0].startswith("error: ") and len(err) <= 2
    return err[0]


def test_read_curves_gives_train_and_valid_series(tmp_path: Path) -> None:
    from neoxcli.training.plot import read_curves

    curves = read_curves(write_run(tmp_path / "a", torn=True))
    assert curves.name == "a"
    assert curves.steps == list(range(1, 21)) and curves.tokens == [256.0 * i for i in range(1, 21)]
    assert curves.valid_steps == [5, 10, 15, 20] and curves.valid_tokens == [1280.0, 2560.0, 3840.0, 5120.0]
    assert curves.valid_loss[0] == pytest.approx(5.0 * math.exp(-0.5) + 1.1)
    assert curves.lr[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]
    # the metrics file itself works too
    assert read_curves(tmp_path / "a" / "metrics.jsonl").steps == curves.steps


def test_plot_overlays_runs_into_png_and_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.image import imread

    a, b = write_run(tmp_path / "lr-1e-3"), write_run(tmp_path / "lr-3e-3", steps=30, lr=3e-3)
    out = tmp_path / "out" / "curves.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"saved {out}"
    image = imread(out)
    assert image.shape[:2] == (750, 1100)  # 11 x 7.5 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # drawn on, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left

    svg = tmp_path / "curves.svg"
    assert main(["plot", str(a), str(b), "--format", "svg", "-o", str(svg), "--log-x"]) == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for words in ("lr-1e-3", "lr-3e-3", "loss against tokens seen", "learning rate", "tokens/s", "valid"):
        assert words in text


def test_figure_has_the_four_panels_and_log_x(tmp_path: Path) -> None:
    from neoxcli.training.plot import draw_curves, read_curves

    runs = [read_curves(write_run(tmp_path / "a")), read_curves(write_run(tmp_path / "b", steps=10))]
    fig = draw_curves(runs, log_x=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss against steps", "loss against tokens seen", "learning rate", "throughput"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    by_step = fig.axes[0]
    assert [t.get_text() for t in by_step.get_legend().get_texts()] == ["a", "b", "train", "valid"]
    # per run: the training line and the validation line
    assert list(by_step.lines[0].get_xdata()) == list(range(1, 21))
    assert list(by_step.lines[1].get_xdata()) == [5, 10, 15, 20]
    assert list(fig.axes[1].lines[2].get_xdata()) == [256.0 * i for i in range(1, 11)]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda run: run.mkdir(), "no metrics.jsonl in this directory"),
        (lambda run: (run.mkdir(), (run / "metrics.jsonl").write_text("")), "has no training rows"),
        (
            lambda run: (
                run.mkdir(),
                (run / "metrics.jsonl").write_text('{"iteration": 1, "loss": 2}\nnope\n{}\n'),
            ),
            "metrics.jsonl line 2: not a metrics row",
        ),
        (lambda run: None, "no such run directory or metrics file"),
    ],
)
def test_bad_runs_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, expected
) -> None:
    run = tmp_path / "run"
    make(run)
    out = tmp_path / "curves.png"
    assert main(["plot", str(run), "-o", str(out)]) == 2
    line = _one_error(capsys)
    assert str(run) in line and expected in line
    assert not out.exists()


def test_bad_formats_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "a")
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png"), "--format", "bmp"]) == 2
    assert "--format must be one of png, svg" in _one_error(capsys)
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png"), "--format", "svg"]) == 2
    assert "does not match the output name" in _one_error(capsys)
    assert main(["plot", str(run), "-o", str(tmp_path / "c.jpg")]) == 2
    assert "cannot tell the image format" in _one_error(capsys)
    assert main(["plot", str(run), "--label", "x", "--label", "y", "-o", str(tmp_path / "c.png")]) == 2
    assert "--label was given 2 time(s) for 1 run(s)" in _one_error(capsys)
    assert not list(tmp_path.glob("c.*"))
