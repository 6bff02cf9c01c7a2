"""The GPU benchmark's CPU-checkable parts: arguments, run order, FLOPs, the micro-batch estimate,
the tiny end-to-end path on CPU, and bench/gpu/run.sh's plan (--dry-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

train_gpu = pytest.importorskip("train_gpu")
train_cpu = pytest.importorskip("train_cpu")


def test_arguments_are_checked() -> None:
    args = train_gpu.parse_args(["--sizes", "1.4b,160m", "--variants", "plain"])
    assert args.sizes == ["1.4b", "160m"] and args.precision == "bf16" and args.seq == 2048
    tiny = train_gpu.parse_args(["--device", "cpu", "--tiny"])
    assert tiny.precision == "fp32" and tiny.seq == 64
    for bad in (["--sizes", "7b"], ["--variants", "fast"], ["--device", "cpu"]):
        with pytest.raises(SystemExit):
            train_gpu.parse_args(bad)


def test_headline_runs_come_first() -> None:
    order = train_gpu.run_order(["160m", "1.4b"], ["ckpt", "plain", "compile"], hf=True)
    assert order[:4] == [
        ("160m", "plain", "neox"),
        ("160m", "plain", "hf"),
        ("1.4b", "plain", "neox"),
        ("1.4b", "plain", "hf"),
    ]
    assert ("1.4b", "ckpt", "hf") in order and ("1.4b", "compile", "hf") not in order
    assert all(impl == "neox" for _s, _v, impl in train_gpu.run_order(["410m"], ["plain"], hf=False))


def test_flops_count_every_weight_matrix_three_times_two_plus_attention() -> None:
    from conftest import tiny_model_config

    from neoxcli.model import GPTModel

    cfg = tiny_model_config(no_weight_tying=True)
    vocab = 128
    model = GPTModel(cfg, vocab)
    matrices = sum(
        p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in name
    )
    attention = 3 * cfg.num_layers * 4 * cfg.seq_length * cfg.hidden_size
    got = train_cpu.train_flops_per_token(
        cfg.num_layers, cfg.hidden_size, cfg.seq_length, vocab, cfg.num_attention_heads
    )
    assert got == 6 * matrices + attention


def test_micro_batch_estimate_grows_with_memory_and_checkpointing() -> None:
    n, layers, hidden, seq, vocab = 1_414_000_000, 24, 2048, 2048, 50304
    h200 = 141e9
    plain = train_gpu.guess_micro_batch(n, layers, hidden, seq, vocab, h200, ckpt=False)
    ckpt = train_gpu.guess_micro_batch(n, layers, hidden, seq, vocab, h200, ckpt=True)
    assert 4 <= plain < ckpt
    assert plain & (plain - 1) == 0  # a power of two
    assert train_gpu.guess_micro_batch(n, layers, hidden, seq, vocab, 20e9, ckpt=False) == 1
    assert train_gpu.peak_tflops("NVIDIA H200") == 989.0 and train_gpu.peak_tflops("Some GPU") is None


def test_tiny_run_on_cpu_times_neox_and_hugging_face(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--tiny", "--sizes", "160m", "--variants", "plain", "--steps", "1"]
    results = train_gpu.main([*argv, "--warmup", "1", "--json", str(out)])
    assert [(r.impl, r.micro_batch) for r in results] == [("neox", 4), ("hf", 4)]
    assert all(r.step_s > 0 and r.tokens_per_s > 0 and r.tflops > 0 and r.loss > 0 for r in results)
    rows = json.loads(out.read_text())
    assert rows[0]["extra"]["precision"] == "fp32" and rows[1]["impl"] == "hf"


def _run_sh(*args: str, wheels: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHON": sys.executable}
    if wheels is not None:
        env["NEOX_WHEELHOUSE"] = str(wheels)
    return subprocess.run(
        ["bash", str(ROOT / "bench/gpu/run.sh"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_run_sh_plans_every_step_offline_without_running(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheels.mkdir()
    for name in ("deepspeed-0.19.8-py3-none-any.whl", "setuptools-80.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    out = tmp_path / "out"
    r = _run_sh(str(out), "--dry-run", wheels=wheels)
    assert r.returncode == 0, r.stderr
    plan = (out / "summary.txt").read_text()
    install = next(line for line in plan.splitlines() if line.startswith("plan install"))
    assert "--no-index" in install and "--no-deps" in install and "deepspeed-0.19.8" in install
    assert "setuptools-" not in install  # kept for building neox, never installed over the machine's own
    assert "plan neox" in plan and "plan train" in plan and "train_gpu.py --json" in plan
    for step in ("attention", "generate"):
        assert f"plan {step}" in plan or f"skip {step}" in plan
    for test in ("tests/test_kernels.py", "tests/test_attention.py"):
        assert test in plan  # planned when present, named as skipped when not
    assert not (out / "train.log").exists()


def test_run_sh_refuses_a_torch_wheel_and_needs_an_outdir(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    r = _run_sh(str(tmp_path / "out"), "--dry-run", wheels=wheels)
    assert r.returncode == 1 and "torch" in r.stderr
    assert _run_sh().returncode == 2
    empty = tmp_path / "none"
    empty.mkdir()
    r = _run_sh(str(tmp_path / "out2"), "--dry-run", wheels=empty)
    assert r.returncode == 1 and "wheelhouse.sh" in r.stderr


def test_the_wheelhouse_holds_everything_neoxs_own_build_needs() -> None:
    """The GPU machine builds neox offline in pip's isolated build environment, which sees only the
    wheelhouse: each build requirement must be a package wheelhouse.sh fetches. (``wheel`` was one,
    and its ``packaging`` dependency was not there: neox did not install.)"""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    script = (ROOT / "bench" / "gpu" / "wheelhouse.sh").read_text()
    listed = script.split("PACKAGES=(", 1)[1].split("\n)", 1)[0]
    fetched = {
        re.split(r"[<>=!\s\"]", word.strip('"'))[0].lower() for word in re.sub(r"#.*", "", listed).split()
    }
    for req in requires:
        name = re.split(r"[<>=!\[;\s]", req)[0].lower()
        assert name in fetched, f"build requirement {req!r} is not in wheelhouse.sh's PACKAGES"
