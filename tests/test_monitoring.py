"""Monitoring: the FLOPs/MFU accounting, the log line, metrics.jsonl, TensorBoard and W&B (offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import tiny_model_config, tiny_train_config

from neoxcli.errors import NeoxError


def test_flops_per_token_is_the_megatron_count_by_hand() -> None:
    """2 layers, d=32, T=32, 4d MLP, padded vocab 128: 6 * (2 * 12 d^2 + 128 d) + 12 * 2 * d * T."""
    from neoxcli.model.flops import attention_flops_per_token, flops_per_token, matmul_params

    cfg = tiny_model_config()
    d, layers, t, vocab = 32, 2, 32, 128
    # per layer: qkv 32x96 = 3072, dense 32x32 = 1024, MLP 32x128 twice = 8192; head 128x32 = 4096
    assert matmul_params(cfg, vocab) == 2 * (3072 + 1024 + 8192) + 4096 == 28672
    assert attention_flops_per_token(cfg) == 12 * layers * d * t == 24576
    assert flops_per_token(cfg, vocab) == 6 * 28672 + 24576 == 196608
    # Megatron-LM's closed form per token: 72 L h^2 (1 + s / 6h + V / 12hL)
    megatron = 72 * layers * d**2 * (1 + t / (6 * d) + vocab / (12 * d * layers))
    assert flops_per_token(cfg, vocab) == pytest.approx(megatron, rel=1e-12)
    # a shorter step (a sequence-length curriculum) only shrinks the attention term
    assert flops_per_token(cfg, vocab, seq_length=16) == 6 * 28672 + 12 * layers * d * 16


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_kv_heads": 2, "activation": "swiglu", "no_weight_tying": True, "use_bias_in_mlp": False},
        {"intermediate_size": 96, "mlp_multiple_of": 16, "activation": "geglu"},
    ],
)
def test_matmul_params_are_the_models_matrices(overrides: dict) -> None:
    """The analytic count equals the weights of the model's Linear layers plus the head's matrix."""
    torch = pytest.importorskip("torch")
    from neoxcli.model import GPTModel
    from neoxcli.model.flops import matmul_params

    cfg = tiny_model_config(**overrides)
    with torch.device("meta"):
        model = GPTModel(cfg, 128)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tied_head = 0 if cfg.no_weight_tying else 128 * cfg.hidden_size
    assert matmul_params(cfg, 128) == linear + tied_head


def test_local_attention_layers_count_their_window() -> None:
    from neoxcli.model.flops import attention_flops_per_token

    cfg = tiny_model_config(attention_config=[[["local", "global"], 1]], sliding_window_width=8)
    assert attention_flops_per_token(cfg) == 12 * 32 * (8 + 32)


def test_peak_table_matches_device_names() -> None:
    from neoxcli.model.flops import table_peak

    assert table_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert table_peak("NVIDIA H200", "bf16") == 989e12
    assert table_peak("NVIDIA H200 NVL", "bf16") == 835e12
    assert table_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "fp16") == 312e12
    assert table_peak("NVIDIA A10", "bf16") == 125e12  # not the A100
    assert table_peak("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 on Volta
    assert table_peak("Some Future Chip", "bf16") is None


def test_cpu_peak_is_measured_once_per_process() -> None:
    pytest.importorskip("torch")
    from neoxcli.model.flops import device_peak, measured_matmul_flops

    first = measured_matmul_flops()
    assert first > 1e8  # any CPU that runs the tests does more than 0.1 GFLOP/s
    assert measured_matmul_flops() == first  # cached: the second call does not time again
    assert measured_matmul_flops(again=True) >= first  # timed once more, the better rate kept
    peak = device_peak("cpu", "fp32")
    assert peak is not None and peak.flops_per_s >= first and "measured fp32 matmul" in peak.source


def test_a_step_faster_than_the_cpu_peak_times_the_peak_again() -> None:
    """A peak timed while the CPU was busy would give MFU over 100%: the meter times it again (at most 3 times)."""
    from neoxcli.training.metrics import Throughput

    calls: list[int] = []

    def busy_again() -> float:
        calls.append(1)
        return 1.0  # still busy: the peak stays what it was

    meter = Throughput(tiny_model_config(), 128, devices=1, peak=1e6, remeasure=busy_again)
    for _ in range(5):
        assert meter.step(tokens=1000, seq_length=32, seconds=0.1)["mfu"] > 1
    assert len(calls) == 3 and meter.peak == 1e6
    meter = Throughput(tiny_model_config(), 128, devices=1, peak=1e6, remeasure=lambda: 1e13)
    assert meter.step(tokens=1000, seq_length=32, seconds=0.1)["mfu"] == pytest.approx(
        196608e4 / 1e13, abs=1e-6
    )
    assert meter.peak == 1e13


def test_throughput_fields_from_the_real_tokens() -> None:
    from neoxcli.model.flops import flops_per_token
    from neoxcli.training.metrics import Throughput

    cfg = tiny_model_config()
    meter = Throughput(cfg, 128, devices=2, peak=1e9)
    got = meter.step(tokens=1000, seq_length=16, seconds=0.5)
    per_device = 1000 * flops_per_token(cfg, 128, 16) / 0.5 / 2
    assert got["tokens_per_s"] == 2000.0
    assert got["tflops"] == pytest.approx(per_device / 1e12)
    assert got["mfu"] == pytest.approx(per_device / 1e9, abs=1e-6)
    assert Throughput(cfg, 128, devices=1, peak=None).step(10, 32, 1.0)["mfu"] is None


def test_log_line_carries_throughput_and_tokens() -> None:
    from neoxcli.training.report import log_line

    row = {"iteration": 20, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 12345.6, "tflops": 0.0421}
    row |= {"mfu": 0.3712, "tokens_seen": 1_310_720, "valid_loss": 2.5}
    line = log_line(row, 2.25)
    assert line == (
        "step     20  loss 2.2500  lr 1.000e-03  12,346 tok/s  0.0421 TFLOP/s  MFU 37.1%  tokens 1.31M"
        "  valid_loss 2.5000"
    )
    assert "MFU" not in log_line({**row, "mfu": None}, 2.0)


def test_scalar_names_are_stable() -> None:
    from neoxcli.training.metrics import scalar_name

    names = [scalar_name(k) for k in ("loss", "lr", "tokens_per_s", "mfu", "tflops", "tokens_seen")]
    assert names == [
        "train/loss",
        "train/lr",
        "train/tokens_per_s",
        "train/mfu",
        "train/tflops",
        "train/tokens_seen",
    ]
    assert scalar_name("valid_loss") == "valid/loss"
    assert scalar_name("eval/lambada_openai/acc") == "eval/lambada_openai/acc"


def test_wandb_without_a_login_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from neoxcli.config.schema import NeoXConfig
    from neoxcli.training.metrics import MetricsLog

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings file
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.chdir(tmp_path)
    cfg = NeoXConfig()
    cfg.logging.use_wandb = True
    with pytest.raises(NeoxError) as info:
        MetricsLog(cfg, tmp_path / "run", enabled=True)
    assert info.value.message == "use_wandb is set but W&B has no login for wandb.ai"
    assert "wandb login" in info.value.hint and "WANDB_MODE=offline" in info.value.hint
    assert not (tmp_path / "wandb").exists()


def test_wandb_gets_gpt_neox_keys_and_writes_under_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    from neoxcli.config.schema import NeoXConfig
    from neoxcli.training.metrics import open_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = NeoXConfig()
    lg = cfg.logging
    lg.use_wandb, lg.wandb_project, lg.wandb_group, lg.wandb_team = True, "proj", "grp", "team"
    lg.wandb_host = "https://wandb.example.org"
    run = open_wandb(cfg, tmp_path / "run")
    try:
        assert (run.project, run.group, run.entity, run.name) == ("proj", "grp", "team", "run")
        assert run.settings.base_url == "https://wandb.example.org"
        assert Path(run.dir).is_relative_to(tmp_path / "run" / "wandb")
    finally:
        run.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "run"]


def _wandb_records(path: Path):  # type: ignore[no-untyped-def]
    """The protobuf records of one offline ``run-ID.wandb`` file (W&B's LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""  # after the magic and the version byte
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            return
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _offline_runs(wandb_dir: Path) -> list[tuple[str, list[int]]]:
    """(run id, the steps logged) of each offline run W&B wrote there, oldest first.

    W&B's service writes the log on its own; a run's is whole once it ends with the ``exit`` record.
    """
    import time

    runs = []
    for folder in sorted(wandb_dir.glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        deadline = time.monotonic() + 30
        while True:
            records = list(_wandb_records(log))
            if records and records[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        ids = [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"]
        steps = [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"]
        assert len(ids) == 1, (folder, ids)
        runs.append((ids[0], steps))
    return runs


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped at 4 and resumed: one W&B run id, steps 1-4 then 5-6; --overwrite starts a new W&B run."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("wandb")
    from neoxcli.config import load_config
    from neoxcli.training.metrics import WANDB_ID_NAME
    from neoxcli.training.trainer import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    keys = {"checkpoint-factor": 4, "eval-interval": 100, "sample_at_end": False, "use_wandb": True}
    train(load_config([tiny_train_config(tmp_path, **keys, **{"train-iters": 4})]))
    train(load_config([tiny_train_config(tmp_path, **keys, **{"train-iters": 6})]))  # resumes at 4
    # W&B names its folders by the second a run started, then its id: runs started within one
    # second do not sort by time, so each run is told apart by the steps it logged.
    (first, steps1), (second, steps2) = sorted(_offline_runs(tmp_path / "run" / "wandb"), key=lambda r: r[1])
    assert first == second == (tmp_path / "run" / WANDB_ID_NAME).read_text().strip()
    assert (steps1, steps2) == ([1, 2, 3, 4], [5, 6])

    train(load_config([tiny_train_config(tmp_path, **keys, **{"train-iters": 2, "overwrite": True})]))
    fresh = (tmp_path / "run" / WANDB_ID_NAME).read_text().strip()
    runs = _offline_runs(tmp_path / "run" / "wandb")
    assert len(runs) == 3 and (fresh, [1, 2]) in runs
    assert fresh != first


def test_a_damaged_wandb_run_id_is_one_line(tmp_path: Path) -> None:
    from neoxcli.training.metrics import WANDB_ID_NAME, resumed_wandb_id

    assert resumed_wandb_id(tmp_path) is None and resumed_wandb_id(None) is None
    (tmp_path / WANDB_ID_NAME).write_text("ab/../c\n")
    with pytest.raises(NeoxError, match=f"{WANDB_ID_NAME} holds 'ab/../c', which is not a W&B run id"):
        resumed_wandb_id(tmp_path)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory):
    """Six steps of the tiny model with TensorBoard and W&B (offline), started in a scratch working directory."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    tmp = tmp_path_factory.mktemp("monitor")
    cwd = tmp / "cwd"
    cwd.mkdir()
    path = tiny_train_config(
        tmp,
        **{
            "train-iters": 6,
            "eval-interval": 3,
            "checkpoint-factor": 6,
            "sample_at_end": False,
            "tensorboard-dir": str(tmp / "tb"),
            "use_wandb": True,
            "wandb_project": "neox-tests",
            "wandb_group": "tiny",
            "wandb_team": "neox-team",
        },
    )
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "HOME")}
    here = Path.cwd()
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_DIR", None)
    os.environ["HOME"] = str(tmp / "home")
    os.chdir(cwd)
    try:
        result = train(load_config([path]))
    finally:
        os.chdir(here)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, path, result


def test_metrics_rows_carry_tokens_throughput_and_mfu(monitored) -> None:
    tmp, _path, result = monitored
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    batch_tokens = 8 * 32  # micro batch 8, one rank, seq 32
    # d=64, 2 layers, char vocab 512: 6 * (2 * 12 d^2 + 512 d) + 12 * 2 * d * 32 FLOPs a token
    per_token = 6 * (2 * 12 * 64**2 + 512 * 64) + 12 * 2 * 64 * 32
    assert [r["tokens_seen"] for r in rows] == [batch_tokens * i for i in range(1, 7)]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and 0 < r["mfu"] < 1
        assert r["tflops"] * 1e12 == pytest.approx(r["tokens_per_s"] * per_token, rel=1e-9)
    assert "valid_loss" in rows[2] and "valid_loss" in rows[5]
    assert result.tokens == 6 * batch_tokens and result.steps == 6


def test_tensorboard_scalars_have_stable_names(monitored) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _path, _result = monitored
    acc = EventAccumulator(str(tmp / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/lr", "train/tokens_per_s", "train/mfu", "train/tflops", "train/tokens_seen"}
    assert want | {"valid/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("valid/loss")] == [3, 6]
    assert acc.Scalars("train/tokens_seen")[-1].value == 6 * 8 * 32


def test_wandb_files_go_under_the_run_directory(monitored) -> None:
    tmp, _path, _result = monitored
    assert not (tmp / "cwd" / "wandb").exists() and list((tmp / "cwd").iterdir()) == []
    (offline,) = (tmp / "run" / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))


def test_tokens_seen_survives_resume_and_a_finished_run_says_so(
    monitored, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.cli import main

    tmp, path, _result = monitored
    args = ["train", str(path), "--set", "use_wandb=false", "--set", "tensorboard_dir=null"]
    assert main([*args, "--set", "train_iters=8"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens_seen"] for r in rows[-2:]] == [8 * 32 * 7, 8 * 32 * 8]
    assert "done: 2 iterations in" in out

    assert main([*args, "--set", "train_iters=8"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"the run in {tmp / 'run'} is finished: iteration 8 of train_iters 8" in out
    assert "raise train_iters (--set train_iters=16)" in out and "--overwrite" in out
    assert "done" not in out and "tok/s" not in out


def test_steps_count_the_tokens_they_really_train_on(tmp_path: Path) -> None:
    """A step of shorter sequences (what a sequence-length curriculum feeds) adds its real tokens."""
    pytest.importorskip("deepspeed")
    from neoxcli.config import load_config
    from neoxcli.parallel.distributed import detect
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run
    from neoxcli.training.trainer import train_step

    cfg = load_config([tiny_train_config(tmp_path, save=None, load=None)])
    run = build_run(cfg, detect(), NullReporter())
    plain = run.sampler

    class Shorter:
        def batch(self, consumed: int, micro: int):
            x, y = plain.batch(consumed, micro)
            return x[:, :16].contiguous(), y[:, :16].contiguous()

        def close(self) -> None:
            plain.close()

    run.sampler = Shorter()  # type: ignore[assignment]
    try:
        train_step(run)
        assert (run.step_tokens, run.step_seq_length, run.tokens_seen) == (8 * 16, 16, 8 * 16)
        run.sampler = plain
        train_step(run)
        assert (run.step_tokens, run.step_seq_length, run.tokens_seen) == (8 * 32, 32, 8 * 16 + 8 * 32)
    finally:
        plain.close()


def test_timing_the_cpu_peak_leaves_the_global_rng_alone() -> None:
    """The peak is re-timed mid-run when a step beats it: dropout and sampling must not see that."""
    import torch

    from neoxcli.model.flops import measured_matmul_flops
    from neoxcli.model.precision import matmul_seconds

    torch.manual_seed(7)
    before = torch.get_rng_state()
    measured_matmul_flops(again=True)
    matmul_seconds(torch.float32, 64, 1)
    assert torch.equal(torch.get_rng_state(), before)
