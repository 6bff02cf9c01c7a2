"""Engine tier for launchers: real `neox train` runs with 2 ranks on this machine through DeepSpeed (gloo).

Three launches, each checking several things: the local launcher trains 3
steps; a rank that dies mid-run makes the launcher end the other and name the
rank within 60 s; and jsrun, through the fake in tests/fake_bin, trains with
the JSM/OMPI variables it sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import neoxcli.training.trainer  # noqa: F401
except Exception as exc:  # pragma: no cover - only while the trainer is unfinished
    pytest.skip(f"the trainer does not import yet: {exc}", allow_module_level=True)

pytestmark = pytest.mark.slow

FAKE_BIN = Path(__file__).parent / "fake_bin"
sys.path.insert(0, str(Path(__file__).parent / "cluster"))
from runs import NEOX, finish_timed, processes_mentioning, wait_for_path, write_hooks, write_tiny_config  # noqa: E402


def env_for_runs(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI", "LSB_", "JSM_"))
    }
    env.update(DS_ACCELERATOR="cpu", NEOX_DEBUG="0", **extra)
    return env


def test_local_two_ranks_train_three_steps(tmp_path: Path) -> None:
    save = tmp_path / "run"
    cfg = write_tiny_config(tmp_path, save)
    result = subprocess.run(
        [*NEOX, "train", str(cfg), "--launcher", "local", "--num-gpus", "2"],
        env=env_for_runs(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on cpu x2" in result.stdout
    assert "step      3" in result.stdout
    assert (save / "run-config.yml").is_file()
    assert (save / "global_step3").is_dir()


def test_local_failed_rank_ends_the_job_and_is_named(tmp_path: Path) -> None:
    hooks = write_hooks(tmp_path / "hooks")
    save = tmp_path / "run"
    cfg = write_tiny_config(tmp_path, save, train_iters=2000, checkpoint_factor=2)
    trigger = save / "global_step2"
    pythonpath = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    env = env_for_runs(PYTHONPATH=pythonpath, NEOX_TEST_FAIL_RANK="1", NEOX_TEST_FAIL_AFTER=str(trigger))
    proc = subprocess.Popen(
        [*NEOX, "train", str(cfg), "--launcher", "local", "--num-gpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reached = wait_for_path(trigger, proc)
    out, err, took = finish_timed(proc, 90)
    assert reached, "training never reached step 2"
    assert proc.returncode == 3, out[-2000:] + err[-3000:]
    assert "error: rank 1 on localhost exited with code 3; stopped the other ranks" in err
    assert took < 60
    assert "step   2000" not in out
    assert processes_mentioning(str(save / "run-config.yml")) == []


def test_jsrun_through_fake_trains_with_jsm_variables(tmp_path: Path) -> None:
    save = tmp_path / "run"
    cfg = write_tiny_config(
        tmp_path, save, master_addr="127.0.0.1", launcher_env={"GLOO_SOCKET_IFNAME": "lo", "JS_CHECK": "a b"}
    )
    log = tmp_path / "jsrun.log"
    env = env_for_runs(
        PATH=f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}",
        LSB_MCPU_HOSTS="batch1 1 hostA 1 hostB 1",
        FAKE_JSRUN_LOG=str(log),
    )
    result = subprocess.run(
        [*NEOX, "train", str(cfg), "--launcher", "jsrun"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on cpu x2" in result.stdout and "step      3" in result.stdout
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:6] == ["-n", "2", "-r", "1", "-a", "1"]
    exported = [argv[i + 1] for i, word in enumerate(argv) if word == "-E"]
    assert "MASTER_ADDR=127.0.0.1" in exported and "JS_CHECK=a b" in exported and "WORLD_SIZE=2" in exported
    assert (save / "global_step3").is_dir()
