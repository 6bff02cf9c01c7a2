"""``precision: auto``: which format the device runs fast, the reason shown at start-up, and both choices trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config

from neoxcli.config.derived import precision_from_hardware, resolve_precision
from neoxcli.config.schema import TrainConfig
from neoxcli.model import precision as P


@pytest.fixture
def amx_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with AMX where the probe finds bf16 5x faster (the Xeons in the fleet)."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(P, "probe_cpu_bf16_speedup", lambda: 5.0)


@pytest.fixture
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without AMX (AMD, older Intel): the probe must not even run."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "cpu_has_amx", lambda: False)

    def no_probe() -> float:
        raise AssertionError("the probe ran on a CPU without AMX")

    monkeypatch.setattr(P, "probe_cpu_bf16_speedup", no_probe)


def test_resolve_precision_auto_follows_the_device_and_named_blocks_win() -> None:
    auto = TrainConfig()
    assert precision_from_hardware(auto)
    assert resolve_precision(auto, bf16_supported=True) == "bf16"
    assert resolve_precision(auto, bf16_supported=False) == "fp32"
    named = TrainConfig(bf16={"enabled": True})
    assert not precision_from_hardware(named)
    assert resolve_precision(named, bf16_supported=False) == "bf16"
    fp16 = TrainConfig(fp16={"enabled": True})
    assert resolve_precision(fp16, bf16_supported=True) == "fp16"
    assert resolve_precision(TrainConfig(precision="fp32"), bf16_supported=True) == "fp32"
    assert not precision_from_hardware(TrainConfig(precision="fp32"))


def test_amx_cpu_with_a_confirming_probe_gets_bf16(amx_cpu: None) -> None:
    verdict = P.bf16_verdict("cpu")
    assert verdict.fast
    assert "AMX" in verdict.reason and "5.0x" in verdict.reason
    assert P.auto_dtype("cpu")[0] == torch.bfloat16


def test_amx_that_the_probe_does_not_confirm_stays_fp32(
    amx_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(P, "probe_cpu_bf16_speedup", lambda: 1.1)
    verdict = P.bf16_verdict("cpu")
    assert not verdict.fast and "1.1x" in verdict.reason


def test_cpu_without_amx_stays_fp32_without_probing(plain_cpu: None) -> None:
    verdict = P.bf16_verdict(torch.device("cpu"))
    assert not verdict.fast and "no AMX" in verdict.reason
    assert P.auto_dtype("cpu") == (torch.float32, verdict.reason)


def test_environment_overrides_the_cpu_answer(plain_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(P.ENV_OVERRIDE, "1")
    assert P.cpu_bf16() == P.Bf16Verdict(True, f"{P.ENV_OVERRIDE}=1")
    assert not P.cpu_bf16({P.ENV_OVERRIDE: "0"}).fast


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_cuda_without_a_gpu_is_not_bf16() -> None:
    assert not P.bf16_verdict("cuda").fast


def test_the_real_probe_measures_this_cpu() -> None:
    P.probe_cpu_bf16_speedup.cache_clear()
    speedup = P.probe_cpu_bf16_speedup(n=128, reps=2)
    assert speedup > 0 and speedup == P.probe_cpu_bf16_speedup(n=128, reps=2)  # cached per process
    P.probe_cpu_bf16_speedup.cache_clear()
    assert isinstance(P.cpu_has_amx(), bool)


def _train_banner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[float], torch.dtype]:
    from neoxcli.config import load_config
    from neoxcli.training.report import ConsoleReporter
    from neoxcli.training.trainer import train

    cfg = load_config(
        tiny_train_config(tmp_path, **{"train-iters": 2, "save": None, "load": None, "sample_at_end": False}),
        warn=lambda _m: None,
    )
    result = train(cfg, report=ConsoleReporter(log_interval=1, live=False))
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    banner = out[out.index("parameters on") :]
    return banner, [row["loss"] for row in result.history], next(result.model.parameters()).dtype


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="training runs on the GPU on this machine")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_bf16_gpu_gets_bf16_and_is_named() -> None:
    verdict = P.bf16_verdict("cuda")
    assert verdict.fast == torch.cuda.is_bf16_supported()
    assert torch.cuda.get_device_name(0) in verdict.reason or not verdict.fast


@cpu_only
def test_auto_trains_bf16_on_an_amx_cpu_and_says_why(
    amx_cpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    banner, losses, dtype = _train_banner(tmp_path, capsys)
    assert "bf16 (auto: AMX: bf16 matmul 5.0x fp32 on this CPU)" in banner
    assert dtype == torch.bfloat16 and len(losses) == 2 and all(loss > 0 for loss in losses)


@cpu_only
def test_auto_trains_fp32_on_a_cpu_without_amx_and_says_why(
    plain_cpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    banner, losses, dtype = _train_banner(tmp_path, capsys)
    assert "fp32 (auto: no AMX on this CPU" in banner
    assert dtype == torch.float32 and len(losses) == 2


@cpu_only
def test_a_named_precision_prints_no_reason(
    plain_cpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.config import load_config
    from neoxcli.training.report import ConsoleReporter
    from neoxcli.training.trainer import train

    path = tiny_train_config(
        tmp_path,
        **{"train-iters": 1, "save": None, "load": None, "sample_at_end": False, "precision": "fp32"},
    )
    train(load_config(path, warn=lambda _m: None), report=ConsoleReporter(log_interval=1, live=False))
    out = " ".join(capsys.readouterr().out.split())
    assert "x1, fp32, batch" in out


def test_evaluation_dtype_auto_loads_what_training_would_pick(
    amx_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neoxcli.evaluation.models import _torch_dtype

    assert _torch_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(P, "cpu_has_amx", lambda: False)
    assert _torch_dtype("AUTO", "cpu") == torch.float32
    assert _torch_dtype("bf16") == torch.bfloat16
