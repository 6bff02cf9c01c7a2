"""`neox config show` / `neox config validate`: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neoxcli.cli import main

GOOD = """\
num-layers: 2
hidden-size: 64
num-attention-heads: 4
train_micro_batch_size_per_gpu: 4
gradient_accumulation_steps: 2
train-iters: 200
steps_per_print: 10
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["config", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_sections_derived_and_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.yml", GOOD)
    code, out, err = run(capsys, "show", path, "--set", "model.hidden_size=128", "--world-size", "4")
    assert code == 0
    doc = yaml.safe_load(out)
    assert list(doc)[:3] == ["model", "tokenizer", "data"]
    assert doc["model"]["hidden_size"] == 128 and doc["model"]["num_layers"] == 2
    derived = doc["derived"]
    assert derived["world_size"] == 4 and derived["data_parallel_size"] == 4
    assert (derived["train_micro_batch_size_per_gpu"], derived["gradient_accumulation_steps"]) == (4, 2)
    assert derived["train_batch_size"] == 32
    assert (derived["lr_decay_iters"], derived["warmup_iters"]) == (200, 2.0)
    assert derived["padded_vocab_size"] is None
    assert doc["ignored_gpt_neox_keys"] == {"steps_per_print": 10}
    assert err == "warning: ignoring GPT-NeoX key neox does not act on yet: steps_per_print\n"
    assert out.startswith(f"# resolved from: {path}, --set\n")


def test_show_flat_and_vocab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.yml", GOOD.replace("steps_per_print: 10\n", ""))
    args = ("--flat", "--vocab-size", "50277", "--set", "model_parallel_size=2", "--set", "num_gpus=2")
    code, out, err = run(capsys, "show", path, *args)
    assert code == 0 and err == ""
    doc = yaml.safe_load(out)
    assert doc["num_layers"] == 2 and doc["zero_optimization"] == {"stage": 0} and "model" not in doc
    assert doc["derived"]["world_size"] == 2 and doc["derived"]["data_parallel_size"] == 1  # from num_gpus
    assert doc["derived"]["padded_vocab_size"] == 50432


def test_show_reads_vocab_size_from_tokenizer_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = write(tmp_path, "tokenizer.json", json.dumps({"model": {"vocab": {str(i): i for i in range(300)}}}))
    path = write(tmp_path, "a.yml", GOOD + f"vocab_file: {tok}\n")
    code, out, _ = run(capsys, "show", path)
    assert code == 0
    derived = yaml.safe_load(out)["derived"]
    assert (derived["vocab_size"], derived["padded_vocab_size"]) == (300, 384)


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.yml", GOOD)
    b = write(tmp_path, "b.yml", "seed: 3\n")
    code, out, _ = run(capsys, "validate", a, b)
    assert (code, out) == (0, f"ok: {a} {b}\n")


@pytest.mark.parametrize(
    ("text", "args", "fragment"),
    [
        ("hiden_size: 64\n", (), "error: unknown key 'hiden_size' in "),
        ("train_iters: ten\n", (), "error: train.train_iters: expected an integer, got 'ten'"),
        ("model:\n  num_layers: 2\n   x: 1\n", (), "at line 3"),
        ("[1, 2]\n", (), "top level"),
        ("num_layers: 2\n", (), "error: no batch size"),
        (GOOD, ("--set", "train_batch_size=7"), "error: train_batch_size (7) must equal"),
        (
            GOOD,
            ("--set", "model_parallel_size=2", "--world-size", "3"),
            "not divisible by model_parallel_size",
        ),
        (GOOD, ("--set", "rotary_pct=2"), "error: model.rotary_pct:"),
        (GOOD, ("--set", "oops"), "error: --set expects key=value"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "show"])
def test_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    args: tuple[str, ...],
    fragment: str,
) -> None:
    path = write(tmp_path, "bad.yml", text)
    code, out, err = run(capsys, command, path, *args)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[0]]
    assert fragment in lines[0]
    assert all(line.startswith("hint: ") for line in lines[1:]) and len(lines) <= 2
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.yml")
    code, _, err = run(capsys, "validate", missing)
    assert (code, err) == (2, f"error: config file not found: {missing}\n")


def test_no_files_and_bare_group(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show")
    assert (code, out) == (2, "")
    assert err == "error: no config files given\nhint: e.g. neox config show model.yml\n"
    code, out, _ = run(capsys)
    assert code == 0 and "show" in out and "validate" in out and "Examples:" in out


def test_subprocess_error_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path, "cfg.yml", "hiden_size: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "neoxcli.cli", "config", "validate", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: unknown key 'hiden_size' in {path}\nhint: did you mean 'hidden_size'?\n"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_shows_examples_without_importing_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from neoxcli.cli import main\n"
        "for args in (['config', '--help'], ['config', 'show', '--help'], ['config', 'validate', '--help']):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        assert main(args) == 0\n"
        "    assert 'Example' in buf.getvalue(), args\n"
        "    assert 'neox config' in buf.getvalue(), args\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('fine')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fine"


# What `neox train` refuses before it starts, `neox config validate` refuses too, with the same words.
TRAIN_REFUSES = [
    (("pipe_parallel_size=2", "zero_optimization.stage=2"), "ZeRO stage 2 cannot be combined with pipeline"),
    (("pipe_partition_method=balanced",), "pipe_partition_method 'balanced' is not supported"),
    (("model_parallel_size=2", "intermediate_size=1001"), "does not divide the MLP width (1001)"),
    (("split=abc",), "invalid split 'abc'"),
    (("train_iters=100000000000",), "a dataset index can hold"),
    (("pipe_parallel_size=2", "precision=bf16"), "bf16 pipelines need ZeRO stage 1"),
]


@pytest.mark.parametrize(("overrides", "fragment"), TRAIN_REFUSES)
def test_validate_refuses_what_train_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: tuple[str, ...], fragment: str
) -> None:
    path = write(tmp_path, "job.yml", GOOD)
    sets = [a for o in overrides for a in ("--set", o)]
    code, out, err = run(capsys, "validate", path, *sets)
    assert code == 2 and fragment in err.splitlines()[0], err
    code = main(["train", path, *sets])  # refused before anything starts
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and fragment in errors[0], err
