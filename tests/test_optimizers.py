"""Memory-saving optimizers: which one each key builds, their state sizes, Lion's rule, exact 8-bit resume.

torchao's 8-bit AdamW compiles its step per tensor shape on first use (~50 s per shape
on a 2-core CPU), so here it is only built and scheduled; bench/optimizer_memory.py steps it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_train_config
from procs import run_ranks

torch = pytest.importorskip("torch")

from neoxcli.cli import main  # noqa: E402
from neoxcli.config import load_config  # noqa: E402
from neoxcli.errors import ConfigError  # noqa: E402
from neoxcli.training.optim import Lion, build_optimizer, optimizer_kind, state_bytes  # noqa: E402


def _cfg(tmp: Path, **over: Any) -> Any:
    return load_config([tiny_train_config(tmp, **over)])


def _model(cfg: Any) -> Any:
    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    return GPTModel(cfg.model, 128)


@pytest.mark.parametrize(
    ("over", "kind", "cls"),
    [
        ({}, "adamw", "AdamW"),
        ({"use_bnb_optimizer": True}, "adamw8bit", "AdamW8bit"),
        ({"optimizer": {"type": "adamw8bit", "params": {"lr": 1e-3}}}, "adamw8bit", "AdamW8bit"),
        (
            {"optimizer": {"type": "torchao_adamw8bit", "params": {"lr": 1e-3}}},
            "torchao_adamw8bit",
            "AdamW8bit",
        ),
        ({"optimizer": {"type": "Lion", "params": {"lr": 3e-4}}}, "lion", "Lion"),
        ({"optimizer": {"type": "adafactor", "params": {"lr": 1e-2}}}, "adafactor", "Adafactor"),
        ({"optimizer": {"type": "SGD", "params": {"lr": 1e-2}}}, "sgd", "SGD"),
    ],
)
def test_each_key_builds_its_optimizer(tmp_path: Path, over: dict[str, Any], kind: str, cls: str) -> None:
    if kind == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    if kind == "torchao_adamw8bit":
        pytest.importorskip("torchao")
    cfg = _cfg(tmp_path, **over)
    assert optimizer_kind(cfg) == kind
    opt = build_optimizer(cfg, _model(cfg), "cpu")
    assert type(opt).__name__ == cls
    module = type(opt).__module__.split(".")[0]
    assert module == {"adamw8bit": "bitsandbytes", "torchao_adamw8bit": "torchao"}.get(kind, module)
    # Weight decay stays per group (none on biases and norms), whatever the optimizer.
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, cfg.train.weight_decay}


def test_schedule_drives_a_tensor_learning_rate(tmp_path: Path) -> None:
    """torchao's optimizers take the LR as a tensor; the schedule fills it in place."""
    pytest.importorskip("torchao")
    from neoxcli.training.schedule import AnnealingLR

    cfg = _cfg(tmp_path, optimizer={"type": "torchao_adamw8bit", "params": {"lr": 1e-3}})
    opt = build_optimizer(cfg, _model(cfg), "cpu")
    sched = AnnealingLR(opt, max_lr=1e-3, min_lr=0.0, warmup_iters=4, decay_iters=10, style="linear")
    sched.step()
    assert all(torch.is_tensor(g["lr"]) for g in opt.param_groups)
    assert sched.get_last_lr()[0] == pytest.approx(2.5e-4)


def test_torchao_states_load_through_deepspeeds_reader(tmp_path: Path) -> None:
    """DeepSpeed reads with an identity map_location callable; a tensor subclass state still loads, safely."""
    pytest.importorskip("torchao")
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from torchao.optim.subclass_8bit import OptimState8bit

    from neoxcli.checkpoint.io import safe_engine_loads

    state = OptimState8bit.zeros((64, 128))
    state.copy_(torch.linspace(-1, 1, 64 * 128).view(64, 128))
    path = tmp_path / "optim_states.pt"
    torch.save({"state": {0: {"exp_avg": state, "step": torch.tensor(3.0)}}}, path)
    with safe_engine_loads(object()):
        back = TorchCheckpointEngine().load(str(path), map_location=lambda storage, loc: storage)
    got = back["state"][0]["exp_avg"]
    assert type(got) is OptimState8bit
    assert torch.equal(got.dequantize(), state.dequantize()) and float(back["state"][0]["step"]) == 3.0


def _one_step(opt: Any, params: list[Any]) -> None:
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()


def test_state_bytes_per_parameter(tmp_path: Path) -> None:
    """Counted from the state tensors: 8 bytes for fp32 Adam, 4 for Lion, ~2 for bitsandbytes' 8-bit."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(128, 256)) for _ in range(2)]
    n = sum(p.numel() for p in params)
    adam = torch.optim.AdamW(params, lr=1e-3, fused=True)
    _one_step(adam, params)
    assert state_bytes(adam) / n == pytest.approx(8.0, abs=0.01)
    lion = Lion(params, lr=1e-4, betas=(0.9, 0.99))
    _one_step(lion, params)
    assert state_bytes(lion) / n == pytest.approx(4.0, abs=0.01)
    bnb = pytest.importorskip("bitsandbytes")
    eight = bnb.optim.AdamW8bit(params, lr=1e-3)
    _one_step(eight, params)
    # Two uint8 codes per parameter, plus one fp32 maximum per 256-element block for each.
    assert 2.0 <= state_bytes(eight) / n <= 2.1


def test_lion_follows_its_update_rule() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    start = p.detach().clone()
    opt = Lion([{"params": [p], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99))
    g1, g2 = torch.randn(5, 3), torch.randn(5, 3)
    p.grad = g1
    opt.step()
    after1 = start * (1 - 0.01 * 0.1) - 0.01 * torch.sign(0.1 * g1)
    assert torch.allclose(p.detach(), after1)
    m = 0.01 * g1
    p.grad = g2
    opt.step()
    after2 = after1 * (1 - 0.01 * 0.1) - 0.01 * torch.sign(0.9 * m + 0.1 * g2)
    assert torch.allclose(p.detach(), after2)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.99 * m + 0.01 * g2)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            {"use_bnb_optimizer": True, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}},
            "use_bnb_optimizer replaces Adam/AdamW, but optimizer.type is SGD",
        ),
        (
            {"optimizer": {"type": "torchao_adamw8bit"}, "zero_optimization": {"stage": 3}},
            "torchao_adamw8bit runs with ZeRO stage 0 or 1 only (zero_optimization.stage is 3)",
        ),
    ],
)
def test_optimizer_mistakes_are_one_config_error(tmp_path: Path, over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **over)
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- end to end


def _train(tmp: Path, name: str, **over: Any) -> Any:
    from neoxcli.training.trainer import train

    base = {
        "train-iters": 5,
        "warmup": 0.0,
        "checkpoint-factor": 2,
        "eval-interval": 5,
        "sample_at_end": False,
        "save": str(tmp / name),
        "load": str(tmp / name),
    }
    base.update(over)
    return train(load_config([tiny_train_config(tmp, **base)]))


def _resume_dir(tmp: Path, source: str, name: str) -> Path:
    from neoxcli.checkpoint import write_latest

    again = tmp / name
    again.mkdir()
    shutil.copytree(tmp / source / "global_step2", again / "global_step2")
    write_latest(again, "global_step2")
    return again


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 1])
def test_8bit_optimizer_resume_is_bit_identical(tmp_path: Path, zero: int, capsys: Any) -> None:
    """bitsandbytes' 8-bit AdamW as DeepSpeed's client optimizer: stop at 2, resume, same losses 3..5."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("deepspeed")
    over = {"use_bnb_optimizer": True, "zero_optimization": {"stage": zero}}
    first = _train(tmp_path, "run", **over)
    losses = {r["iteration"]: r["loss"] for r in first.history}
    assert losses[5] < losses[1] - 0.5
    _resume_dir(tmp_path, "run", "again")
    second = {r["iteration"]: r["loss"] for r in _train(tmp_path, "again", **over).history}
    assert sorted(second) == [3, 4, 5]
    assert all(second[k] == losses[k] for k in second), (losses, second)
    if zero == 1:
        # Another ZeRO stage needs the layout-free state, which 8-bit moments are not: one line.
        _resume_dir(tmp_path, "run", "moved")
        moved = {**over, "zero_optimization": {"stage": 0}}
        cfg = tiny_train_config(tmp_path, **moved, save=str(tmp_path / "moved"), load=str(tmp_path / "moved"))
        capsys.readouterr()
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert "the adamw8bit optimizer's state resumes only under the layout it was saved with" in err
        assert "Traceback" not in err


@pytest.mark.slow
def test_lion_moves_to_another_zero_stage(tmp_path: Path) -> None:
    """Lion's one fp32 moment travels in the layout-free files: ZeRO 1 saved, ZeRO 0 resumed, same losses."""
    pytest.importorskip("deepspeed")
    over = {"optimizer": {"type": "lion", "params": {"lr": 3e-4, "betas": [0.9, 0.99]}}}
    first = _train(tmp_path, "run", zero_optimization={"stage": 1}, **over)
    losses = {r["iteration"]: r["loss"] for r in first.history}
    _resume_dir(tmp_path, "run", "moved")
    second = {r["iteration"]: r["loss"] for r in _train(tmp_path, "moved", **over).history}
    assert sorted(second) == [3, 4, 5]
    assert max(abs(second[k] - losses[k]) for k in second) <= 1e-5, (losses, second)


# --------------------------------------------------------------------------- two data-parallel ranks


def _worker(out: Path, configs: list[str]) -> None:
    from neoxcli.training.trainer import train

    results = {}
    for config in configs:
        result = train(load_config([config]))
        results[Path(config).stem] = {str(r["iteration"]): r["loss"] for r in result.history}
    if os.environ.get("RANK") == "0":
        out.write_text(json.dumps(results))


def _launch(tmp: Path, configs: list[Path], label: str) -> dict[str, Any]:
    out = tmp / f"{label}.json"
    run_ranks([__file__, str(out), *map(str, configs)], tmp, label=f"{label}-", timeout=300)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_8bit_optimizer_under_zero_with_two_ranks_resumes_bit_identical(tmp_path: Path) -> None:
    """Data parallel 2: each rank's 8-bit state covers its ZeRO partition; stop at 2, resume, same losses."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("deepspeed")
    stages = (1, 3)
    configs, resumes = [], []
    for stage in stages:
        name = f"zero{stage}"
        over = {
            "use_bnb_optimizer": True,
            "zero_optimization": {"stage": stage},
            "train-iters": 5,
            "warmup": 0.0,
            "checkpoint-factor": 2,
            "eval-interval": 5,
            "sample_at_end": False,
            "data_cache_dir": str(tmp_path / "cache"),
        }
        path = tiny_train_config(tmp_path, save=str(tmp_path / name), load=str(tmp_path / name), **over)
        configs.append(path.rename(tmp_path / f"{name}.yml"))
        again = tiny_train_config(
            tmp_path, save=str(tmp_path / f"{name}-again"), load=str(tmp_path / f"{name}-again"), **over
        )
        resumes.append(again.rename(tmp_path / f"{name}-again.yml"))
    first = _launch(tmp_path, configs, "first")
    for stage in stages:
        _resume_dir(tmp_path, f"zero{stage}", f"zero{stage}-again")
    second = _launch(tmp_path, resumes, "second")
    for stage in stages:
        losses, again = first[f"zero{stage}"], second[f"zero{stage}-again"]
        assert float(losses["5"]) < float(losses["1"]) - 0.5
        assert sorted(again, key=int) == ["3", "4", "5"]
        assert all(again[k] == losses[k] for k in again), (stage, losses, again)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])
