"""The CLI contract: fast help with examples, one-line user errors with exit 2, tracebacks only on --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neoxcli.cli import main

COMMANDS = ["prepare", "train", "generate", "eval", "convert", "hostfile", "config", "mup", "plot"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neoxcli.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_imports_neither_torch_nor_deepspeed() -> None:
    code = (
        "import sys\n"
        "from neoxcli.cli import main\n"
        f"for argv in (['--help'], *[[c, '--help'] for c in {COMMANDS!r}]):\n"
        "    assert main(argv) == 0, argv\n"
        "bad = [m for m in ('torch', 'deepspeed', 'numpy', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_every_help_shows_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example" in out, out
    assert "neox " in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("neox ")


def test_eval_of_a_missing_checkpoint_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "x"), "--tasks", "lambada"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "x" in err.splitlines()[0]
    assert "Traceback" not in err


def _bad_configs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = "num_layers: 2\nhidden_size: 64\nnum_attention_heads: 4\nseq_length: 32\n"
    cases = {
        "typo": (good + "hiden_size: 64\n", "hidden_size"),
        "wrong type": (good + "train_iters: ten\n", "train_iters"),
        "heads": ("hidden_size: 100\nnum_attention_heads: 3\n", "divisible"),
        "yaml": (good + "optimizer: {type: Adam\n", "line"),
    }
    out = {}
    for name, (text, needle) in cases.items():
        path = tmp / f"{name.replace(' ', '_')}.yml"
        path.write_text(text)
        out[name] = (path, needle)
    out["missing"] = (tmp / "nope.yml", "not found")
    return out


@pytest.mark.parametrize("case", ["typo", "wrong type", "heads", "yaml", "missing"])
def test_user_errors_are_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    path, needle = _bad_configs(tmp_path)[case]
    proc = _run("train", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert needle in errors[0] or any(needle in ln for ln in lines if ln.startswith("hint:")), proc.stderr
    assert all(ln.startswith(("error:", "hint:")) for ln in lines), proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path, _ = _bad_configs(tmp_path)["heads"]
    proc = _run("train", str(path), "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    proc = _run("train", str(path), env={"NEOX_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_bad_argument_is_a_usage_error_without_traceback() -> None:
    proc = _run("generate", "--checkpoint", "x", "--top-p", "7")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_and_exits_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps({"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16})
    )
    proc = _run("train", str(cfg), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
