"""Sequence-length curricula: DeepSpeed's schedules exactly, staged warmup, config errors, exact resume.

The end-to-end runs train the tiny model in-process; the pipeline check starts two
DeepSpeed worker processes (this file is their entry point) once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_train_config
from procs import run_ranks

from neoxcli.config import load_config
from neoxcli.config.schema import CurriculumLearning, SeqLengthWarmup
from neoxcli.errors import ConfigError
from neoxcli.training.curriculum import DeepSpeedCurriculum, Stage, StagedWarmup, describe
from neoxcli.training.report import NullReporter

DEEPSPEED_CASES = {
    "linear": dict(
        min_difficulty=8,
        max_difficulty=1024,
        schedule_type="fixed_linear",
        schedule_config={"total_curriculum_step": 300, "difficulty_step": 8},
    ),
    # min_difficulty below (and not a multiple of) difficulty_step: DeepSpeed lifts the floor.
    "linear-low-floor": dict(
        min_difficulty=5,
        max_difficulty=100,
        schedule_type="fixed_linear",
        schedule_config={"total_curriculum_step": 37, "difficulty_step": 16},
    ),
    "root": dict(
        min_difficulty=64,
        max_difficulty=2048,
        schedule_type="fixed_root",
        schedule_config={"total_curriculum_step": 500, "difficulty_step": 8, "root_degree": 2},
    ),
    # A discrete list that reaches max_difficulty and then names a shorter length:
    # DeepSpeed stops updating once max is reached.
    "discrete": dict(
        min_difficulty=16,
        max_difficulty=64,
        schedule_type="fixed_discrete",
        schedule_config={"difficulty": [16, 32, 64, 48], "max_step": [10, 20, 30]},
    ),
}


@pytest.mark.parametrize("case", list(DEEPSPEED_CASES))
def test_schedules_match_deepspeeds_curriculum_scheduler(case: str) -> None:
    """Step k (from 1) gets what DeepSpeed's scheduler says after update_difficulty(k), step after step."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    spec = dict(DEEPSPEED_CASES[case], enabled=True, curriculum_type="seqlen")
    theirs = CurriculumScheduler(spec)
    ours = DeepSpeedCurriculum(CurriculumLearning(**spec))
    horizon = ours.horizon + 50
    want = [theirs.update_difficulty(k) for k in range(1, horizon + 1)]
    got = [ours.at(k) for k in range(1, horizon + 1)]
    assert got == want
    assert ours.length_sum(horizon) == sum(want) and ours.length_sum(7) == sum(want[:7])
    assert len(set(want)) > 2  # the schedule actually moves


def test_staged_warmup_splits_steps_and_reports_tokens_per_stage() -> None:
    """The GPT* recipe: five stages over 15000 steps, then seq_length for the rest of the run."""
    even = StagedWarmup(SeqLengthWarmup(stages=[128, 192, 256, 384, 512], steps=15000), full=512)
    assert even.stages(50000) == [
        Stage(1, 3000, 128),
        Stage(3001, 6000, 192),
        Stage(6001, 9000, 256),
        Stage(9001, 12000, 384),
        Stage(12001, 50000, 512),
    ]
    assert describe(even, 50000, train_batch=8)[0] == "steps 1-3000: seq_length 128, 1,024 tokens per batch"
    uneven = StagedWarmup(SeqLengthWarmup(stages=[8, 16], steps=5), full=32)
    assert [uneven.at(k) for k in range(1, 8)] == [8, 8, 16, 16, 16, 32, 32]
    assert uneven.length_sum(7) == 128 and uneven.length_sum(0) == 0
    listed = StagedWarmup(SeqLengthWarmup(stages=[8, 16], steps=[1, 3]), full=16)
    assert [listed.at(k) for k in range(1, 7)] == [8, 16, 16, 16, 16, 16]
    assert listed.stages(6) == [Stage(1, 1, 8), Stage(2, 6, 16)]


def _load(tmp: Path, **over: Any) -> Any:
    return load_config([tiny_train_config(tmp, **over)])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            {"seq_length_warmup": {"stages": [8, 64], "steps": 4}},
            "a sequence length of 64 is above seq_length (32)",
        ),
        ({"seq_length_warmup": {"stages": [8, 16], "steps": [4]}}, "lists 1 counts for 2 stages"),
        (
            {
                "seq_length_warmup": {"stages": [8], "steps": 2},
                "curriculum_learning": {**DEEPSPEED_CASES["linear"], "enabled": True, "max_difficulty": 32},
            },
            "seq_length_warmup and curriculum_learning both set the sequence length",
        ),
        (
            {
                "curriculum_learning": {
                    "enabled": True,
                    "min_difficulty": 8,
                    "max_difficulty": 32,
                    "schedule_type": "fixed_root",
                    "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
                }
            },
            "schedule_config lacks root_degree",
        ),
        (
            {"curriculum_learning": {**DEEPSPEED_CASES["discrete"], "enabled": True, "max_difficulty": 16}},
            "a sequence length of 64 is above seq_length (32)",
        ),
    ],
)
def test_curriculum_mistakes_are_one_config_error(tmp_path: Path, over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **over)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_disabled_curriculum_block_changes_nothing(tmp_path: Path) -> None:
    cfg = _load(tmp_path, curriculum_learning={"enabled": False, "min_difficulty": 8})
    from neoxcli.training.curriculum import build_schedule

    assert build_schedule(cfg) is None


# --------------------------------------------------------------------------- end to end


class _Notes(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_info(self, message: str) -> None:
        self.lines.append(message)


def _run(tmp: Path, name: str, report: Any = None, **over: Any) -> Any:
    """A 6-step run: length 8 for steps 1-2, 16 for steps 3-4, then the full 32."""
    from neoxcli.training.trainer import train

    base = {
        "train-iters": 6,
        "checkpoint-factor": 2,
        "eval-interval": 3,
        "sample_at_end": False,
        "seq_length_warmup": {"stages": [8, 16], "steps": [2, 2]},
        "save": str(tmp / name),
        "load": str(tmp / name),
    }
    base.update(over)
    return train(load_config([tiny_train_config(tmp, **base)]), report=report)


@pytest.mark.slow
def test_resume_across_a_stage_boundary_is_exact(tmp_path: Path) -> None:
    """Stop at step 2 (the last at length 8), resume: steps 3..6 match the uninterrupted run bit for bit."""
    pytest.importorskip("deepspeed")
    from neoxcli.checkpoint import write_latest

    notes = _Notes()
    first = _run(tmp_path, "run", report=notes)
    # Each stage's steps, length and tokens per global batch (8 samples) are said up front.
    assert [line.strip() for line in notes.lines if line.strip().startswith("steps ")] == [
        "steps 1-2: seq_length 8, 64 tokens per batch",
        "steps 3-4: seq_length 16, 128 tokens per batch",
        "steps 5-6: seq_length 32, 256 tokens per batch",
    ]
    rows = {r["iteration"]: r for r in first.history}
    assert [rows[k]["seq_length"] for k in range(1, 7)] == [8, 8, 16, 16, 32, 32]
    assert first.tokens_per_s * first.wall_s == pytest.approx(8 * (8 + 8 + 16 + 16 + 32 + 32))
    for k in range(1, 7):
        # tokens_per_s is this step's tokens (8 samples at its length) over its time
        assert rows[k]["tokens_per_s"] * rows[k]["seconds"] == pytest.approx(8 * rows[k]["seq_length"])
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(tmp_path / "run" / "global_step2", again / "global_step2")
    write_latest(again, "global_step2")
    resumed = _run(tmp_path, "again")
    second = {r["iteration"]: r for r in resumed.history}
    assert sorted(second) == [3, 4, 5, 6]
    for k in second:
        assert second[k]["loss"] == rows[k]["loss"], k
        assert second[k]["lr"] == rows[k]["lr"], k
        assert second[k]["seq_length"] == rows[k]["seq_length"]
    # The curriculum changes the losses (a real cut), and the same samples are read either way.
    plain = _run(tmp_path, "plain", seq_length_warmup=None, **{"train-iters": 3})
    assert plain.history[0]["seq_length"] == 32 and plain.history[0]["loss"] != rows[1]["loss"]


@pytest.mark.slow
def test_gpt_neox_curriculum_block_trains_at_deepspeeds_lengths(tmp_path: Path) -> None:
    """A flat GPT-NeoX-style file's ``curriculum_learning`` drives the lengths step by step."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    block = {
        "enabled": True,
        "curriculum_type": "seqlen",
        "min_difficulty": 8,
        "max_difficulty": 32,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 8},
    }
    result = _run(tmp_path, "ds", seq_length_warmup=None, curriculum_learning=block, **{"train-iters": 5})
    theirs = CurriculumScheduler(block)
    assert [r["seq_length"] for r in result.history] == [theirs.update_difficulty(k) for k in range(1, 6)]
    assert [r["seq_length"] for r in result.history] == [8, 16, 24, 32, 32]


# --------------------------------------------------------------------------- pipeline parallel


def _worker(out: Path, config: Path) -> None:
    from neoxcli.training.trainer import train

    result = train(load_config([config]))
    if os.environ.get("RANK") == "0":
        out.write_text(
            json.dumps({str(r["iteration"]): [r["loss"], r["seq_length"]] for r in result.history})
        )


@pytest.mark.slow
def test_pipeline_parallel_follows_the_curriculum(tmp_path: Path) -> None:
    """Two pipeline stages reshape their buffers at each stage change and match one process."""
    pytest.importorskip("deepspeed")
    over = {"sample_at_end": False, "checkpoint-factor": None, "eval-interval": 3, "load": None}
    one = _run(tmp_path, "one", **over)
    path = tiny_train_config(tmp_path, **{"pipe_parallel_size": 2, "save": str(tmp_path / "pp2")})
    cfg = yaml.safe_load(path.read_text())
    cfg.update(
        {
            "train-iters": 6,
            "seq_length_warmup": {"stages": [8, 16], "steps": [2, 2]},
            "pipe_parallel_size": 2,
            "data_cache_dir": str(tmp_path / "cache"),
            **over,
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "pp2.json"
    run_ranks([__file__, str(out), str(path)], tmp_path)
    got = json.loads(out.read_text())
    want = {str(r["iteration"]): r for r in one.history}
    assert [got[k][1] for k in sorted(got, key=int)] == [8, 8, 16, 16, 32, 32]
    for k, (loss, _length) in got.items():
        assert abs(loss - want[k]["loss"]) <= 1e-5, (k, loss, want[k]["loss"])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
