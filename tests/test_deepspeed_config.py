"""The DeepSpeed config neox generates: GPT-NeoX's ZeRO and reduction keys passed through, typos refused,
and the one-replica gradient reduction skipped with bit-identical losses."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from conftest import tiny_train_config  # noqa: E402

from neoxcli.config import load_config, resolve  # noqa: E402
from neoxcli.errors import ConfigError  # noqa: E402
from neoxcli.parallel.grid import Layout  # noqa: E402
from neoxcli.parallel.plan import check_zero_block, deepspeed_config, lone_replica  # noqa: E402

# GPT-NeoX's 20B config, its zero_optimization block verbatim.
NEOX_20B_ZERO = {
    "stage": 1,
    "allgather_partitions": True,
    "allgather_bucket_size": 1260000000,
    "overlap_comm": True,
    "reduce_scatter": True,
    "reduce_bucket_size": 1260000000,
    "contiguous_gradients": True,
}


def _cfg(tmp_path: Path, **over: object):
    return load_config(tiny_train_config(tmp_path, **over), warn=lambda _m: None)


def test_zero_block_and_reduction_keys_reach_deepspeed(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        zero_optimization=NEOX_20B_ZERO,
        prescale_gradients=True,
        gradient_predivide_factor=2.0,
        communication_data_type="fp32",
    )
    assert not {"prescale_gradients", "gradient_predivide_factor", "communication_data_type"} & set(
        cfg.ignored_keys
    )
    ds = deepspeed_config(cfg, resolve(cfg, world_size=2))
    assert ds["zero_optimization"] == NEOX_20B_ZERO
    assert ds["prescale_gradients"] is True
    assert ds["gradient_predivide_factor"] == 2.0
    assert ds["communication_data_type"] == "fp32"
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 8
    check_zero_block(ds["zero_optimization"])  # DeepSpeed's own schema accepts it


def test_defaults_leave_the_reduction_keys_to_deepspeed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ds = deepspeed_config(cfg, resolve(cfg, world_size=1))
    assert ds["zero_optimization"] == {"stage": 0}
    assert not {"prescale_gradients", "gradient_predivide_factor", "communication_data_type"} & set(ds)


def test_a_mistyped_zero_key_is_one_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"zero_optimization\.overlap_com: Extra inputs"):
        check_zero_block({"stage": 1, "overlap_com": True})
    with pytest.raises(ConfigError, match=r"zero_optimization\.reduce_bucket_size: .*'5e8'"):
        check_zero_block({"stage": 2, "reduce_bucket_size": "5e8"})


def test_a_bad_communication_type_is_refused_by_the_loader(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="communication_data_type"):
        _cfg(tmp_path, communication_data_type="int8")


@pytest.mark.parametrize(
    ("layout", "extra", "skip"),
    [
        (Layout(dp=1), {}, True),
        (Layout(dp=2), {}, False),
        (Layout(dp=1, pp=2), {}, False),
        (Layout(dp=1, zero_stage=1), {"zero_optimization": {"stage": 1}}, False),
        (Layout(dp=1), {"gradient_predivide_factor": 2.0}, False),
        (Layout(dp=1), {"prescale_gradients": True}, False),
        (Layout(dp=1), {"communication_data_type": "bf16"}, False),
        (Layout(dp=1, tp=2), {}, True),
    ],
)
def test_which_runs_skip_the_reduction(layout: Layout, extra: dict, skip: bool) -> None:
    ds = {"zero_optimization": {"stage": layout.zero_stage}, **extra}
    assert lone_replica(layout, ds) is skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_skipping_the_lone_reduction_keeps_losses_bit_identical(tmp_path: Path, precision: str) -> None:
    from neoxcli.parallel.distributed import DistEnv
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run
    from neoxcli.training.trainer import train_step

    cfg = _cfg(
        tmp_path,
        precision=precision,
        save=None,
        load=None,
        gradient_accumulation_steps=2,
        train_micro_batch_size_per_gpu=4,
    )
    skipped = build_run(cfg, DistEnv(), NullReporter())
    assert skipped.engine.enable_backward_allreduce is False
    reduced = build_run(cfg, DistEnv(), NullReporter())
    reduced.engine.enable_backward_allreduce = True  # DeepSpeed's own path, for reference
    a = [train_step(skipped) for _ in range(4)]
    b = [train_step(reduced) for _ in range(4)]
    assert a == b
    for p, q in zip(skipped.engine.module.parameters(), reduced.engine.module.parameters(), strict=True):
        assert p.equal(q)


def test_zero_one_keeps_its_reduction(tmp_path: Path) -> None:
    from neoxcli.parallel.distributed import DistEnv
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run

    cfg = _cfg(tmp_path, zero_optimization={"stage": 1, "overlap_comm": False}, save=None, load=None)
    assert build_run(cfg, DistEnv(), NullReporter()).engine.enable_backward_allreduce is True
