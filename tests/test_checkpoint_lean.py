"""Lean checkpoints: each tensor on disk once, exact resume from the layout-free files, weights-only saves.

One-rank runs in this process; the parallel tier (tests/test_parallel_engine.py) covers the same
files under other ZeRO stages, data-, tensor- and pipeline-parallel sizes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from conftest import tiny_train_config  # noqa: E402

from neoxcli.cli import main  # noqa: E402
from neoxcli.config import load_config  # noqa: E402

pytestmark = pytest.mark.slow

SHORT = {"train-iters": 6, "checkpoint-factor": 3, "eval-interval": 3, "sample_at_end": False}


def _train(tmp: Path, name: str, **over: object) -> tuple[Any, list[float]]:
    from neoxcli.training.trainer import train

    cfg = load_config(
        [tiny_train_config(tmp, **{**SHORT, "save": str(tmp / name), "load": str(tmp / name), **over})]
    )
    result = train(cfg)
    return result, [row["loss"] for row in result.history]


def _resume_from_3(tmp: Path, name: str, **over: object) -> list[float]:
    """Copy run ``name`` without its last checkpoint and train it again from iteration 3."""
    again = tmp / f"{name}-again"
    shutil.copytree(tmp / name, again)
    shutil.rmtree(again / "global_step6")
    (again / "latest").write_text("global_step3")
    (again / "metrics.jsonl").unlink(missing_ok=True)
    _, losses = _train(tmp, again.name, **over)
    return losses


def _state_bytes(model: Any, states_per_weight: int) -> int:
    """fp32 weights plus ``states_per_weight`` fp32 optimizer states per weight (Adam: 2)."""
    return sum(p.numel() for p in model.parameters()) * 4 * (1 + states_per_weight)


def _tag_bytes(tag: Path) -> int:
    return sum(p.stat().st_size for p in tag.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lean")


def test_a_checkpoint_holds_each_tensor_once_and_resumes_bit_for_bit(root: Path) -> None:
    result, losses = _train(root, "adam")
    tag = root / "adam" / "global_step6"
    assert {p.name for p in tag.glob("*.pt")} == {"portable_pp00_tp00.pt"}, (
        "DeepSpeed's files are not written"
    )
    ratio = _tag_bytes(tag) / _state_bytes(result.model, 2)
    print(f"checkpoint bytes / (fp32 weights + Adam state) = {ratio:.3f}")
    assert ratio <= 1.1
    assert _resume_from_3(root, "adam") == losses[3:]


def test_any_optimizer_state_is_saved_and_restored(root: Path) -> None:
    """SGD's momentum buffer is not Adam's: the layout-free files hold whatever the optimizer keeps."""
    from neoxcli.checkpoint import torch_load

    sgd = {"optimizer": {"type": "sgd", "params": {"lr": 0.05, "momentum": 0.9}}}
    _, losses = _train(root, "sgd", **sgd)
    saved = torch_load(root / "sgd" / "global_step3" / "portable_pp00_tp00.pt")
    assert all(set(entry) == {"fp32", "momentum_buffer"} for entry in saved["params"].values())
    assert _resume_from_3(root, "sgd", **sgd) == losses[3:]


def test_deepspeed_files_instead_when_asked(root: Path) -> None:
    """portable_checkpoint: false writes DeepSpeed's own files only, and they resume through its loader."""
    _, losses = _train(root, "ds", portable_checkpoint=False, zero_optimization={"stage": 1})
    tag = root / "ds" / "global_step6"
    names = {p.name for p in tag.glob("*.pt")}
    assert "mp_rank_00_model_states.pt" in names and any(n.endswith("optim_states.pt") for n in names)
    assert not any(n.startswith("portable_") for n in names)
    assert _resume_from_3(root, "ds", portable_checkpoint=False, zero_optimization={"stage": 1}) == losses[3:]


@pytest.mark.parametrize("key", ["save_optimizer=false", "no_save_optim=true"])
def test_weights_only_checkpoint_loads_for_inference_and_refuses_a_resume(
    root: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from neoxcli.checkpoint import load_for_inference, torch_load

    name = key.split("=")[0]
    result, _ = _train(root, name, **{name: key.endswith("true")})
    tag = root / name / "global_step6"
    saved = torch_load(tag / "portable_pp00_tp00.pt")
    assert saved["optimizer"] is False
    assert all(set(entry) == {"fp32"} for entry in saved["params"].values())
    assert _tag_bytes(tag) <= 1.1 * _state_bytes(result.model, 0)

    model, tokenizer, _ = load_for_inference(root / name)
    x = torch.tensor([tokenizer.encode("the quick brown fox")])
    live = result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), live(x))

    cfg = tiny_train_config(root, **{**SHORT, "save": str(root / name), "load": str(root / name)})
    capsys.readouterr()
    assert main(["train", str(cfg), "--set", "train_iters=8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: {tag} holds weights only (saved with save_optimizer: false), so a run cannot resume from it "
        "exactly"
    ]
    assert not (root / name / "global_step8").exists()
