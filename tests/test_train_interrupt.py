"""SIGTERM, SIGUSR1 and Ctrl-C: the run finishes its step, saves, says how to resume and exits 75."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_train_config

from neoxcli.launchers.base import AGENT_MODULE
from neoxcli.launchers.node_agent import descendants
from neoxcli.launchers.rankio import WORKER_MODULE
from neoxcli.launchers.signals import STOPPED_EXIT_CODE
from neoxcli.training.interrupt import StopRequest


def _rows(save: Path) -> list[dict]:
    path = save / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "neoxcli", "train", str(cfg), *extra],
        cwd=cfg.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_after_rows(proc: subprocess.Popen[str], save: Path, sig: int, rows: int = 2) -> None:
    deadline = time.monotonic() + 240
    while len(_rows(save)) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)


@pytest.mark.slow
def test_sigterm_saves_then_the_run_resumes_exactly(tmp_path: Path) -> None:
    """One process: stopped by SIGTERM at some step k, then resumed, the losses are the uninterrupted run's."""
    over = {"train-iters": 60, "checkpoint-factor": 1000, "eval-interval": 20}
    (tmp_path / "ref").mkdir()
    (tmp_path / "cut").mkdir()
    ref_cfg = tiny_train_config(tmp_path / "ref", **over)
    cfg = tiny_train_config(tmp_path / "cut", **over)
    save = tmp_path / "cut" / "run"

    proc = _start(cfg)
    _signal_after_rows(proc, save, signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == STOPPED_EXIT_CODE, err
    tag = (save / "latest").read_text().strip()
    stopped_at = int(tag.removeprefix("global_step"))
    assert 2 <= stopped_at < 60
    assert "SIGTERM: finishing this step" in err
    said = " ".join(out.split())  # the console wraps long lines
    assert f"stopped by SIGTERM after iteration {stopped_at}" in said and "resume with" in said

    # All three runs in fresh processes of the same environment, so the losses compare bit for bit.
    for run_cfg in (cfg, ref_cfg):  # resume from `latest`; never interrupted
        done = _start(run_cfg)
        out, err = done.communicate(timeout=240)
        assert done.returncode == 0, err
    resumed = [(r["iteration"], r["loss"], r.get("valid_loss")) for r in _rows(save)]
    reference = [(r["iteration"], r["loss"], r.get("valid_loss")) for r in _rows(tmp_path / "ref" / "run")]
    assert [r[0] for r in resumed] == list(range(1, 61))
    assert resumed == reference


@pytest.mark.slow
def test_sigusr1_through_the_local_launcher_saves_on_both_ranks(tmp_path: Path) -> None:
    """Two ranks: the supervisor passes the signal on, both ranks stop after the same step, exit 75."""
    cfg = tiny_train_config(tmp_path, **{"train-iters": 200, "checkpoint-factor": 1000, "eval-interval": 100})
    save = tmp_path / "run"
    proc = _start(cfg, "--num-gpus", "2")
    _signal_after_rows(proc, save, signal.SIGUSR1)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == STOPPED_EXIT_CODE, err
    assert "SIGUSR1: every rank finishes its step, saves a checkpoint" in err
    tag = save / (save / "latest").read_text().strip()
    stopped_at = int(tag.name.removeprefix("global_step"))
    assert 2 <= stopped_at < 200 and "stopped by SIGUSR1" in " ".join(out.split())
    assert (tag / "config.yml").is_file(), sorted(p.name for p in tag.iterdir())  # finalized: complete


@pytest.mark.slow
@pytest.mark.parametrize("everyone", [False, True], ids=["agent-only", "every-process"])
def test_sigterm_to_the_node_agent_saves_and_stops(tmp_path: Path, everyone: bool) -> None:
    """A node agent passes SIGTERM on as the graceful stop: its rank saves and the agent exits 75.

    ``every-process`` is Slurm's preemption: the rank gets the same SIGTERM directly, at once.
    """
    cfg = tiny_train_config(
        tmp_path, **{"train-iters": 2000, "checkpoint-factor": 1000, "eval-interval": 1000}
    )
    save = tmp_path / "run"
    argv = [sys.executable, "-m", AGENT_MODULE, "--host", "h1", "--", sys.executable, "-m", WORKER_MODULE]
    proc = subprocess.Popen(
        [*argv, "--config", str(cfg)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _signal_after_rows(proc, save, 0)  # signal 0: only wait for the run to be under way
    workers = [
        pid for pid in descendants(proc.pid) if WORKER_MODULE in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(workers) == 1, workers
    proc.send_signal(signal.SIGTERM)
    if everyone:
        time.sleep(0.3)  # the rank's own copy may come a little later (another node, a busy one)
        os.kill(workers[0], signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == STOPPED_EXIT_CODE, err
    assert "host h1: SIGTERM: its ranks finish their step, save a checkpoint and stop" in err
    tag = save / (save / "latest").read_text().strip()
    stopped_at = int(tag.name.removeprefix("global_step"))
    assert 2 <= stopped_at < 2000 and (tag / "config.yml").is_file()  # finalized: complete
    told = "SIGTERM" if everyone else "SIGUSR1"  # a SIGUSR1 after the rank's own SIGTERM changes nothing
    assert f"stopped by {told} after iteration {stopped_at}" in " ".join(out.split())


@pytest.mark.slow
def test_a_second_sigterm_to_the_node_agent_stops_at_once(tmp_path: Path) -> None:
    """The agent's hard stop: its ranks get SIGTERM and, after the grace, SIGKILL; the agent exits 143.

    No grace here: given one, a rank that had not yet been told of the first SIGTERM takes the
    hard stop's SIGTERM as its graceful stop, may save in time, and the agent then exits 75.
    """
    cfg = tiny_train_config(tmp_path, **{"train-iters": 2000, "checkpoint-factor": 1000})
    argv = [sys.executable, "-m", AGENT_MODULE, "--grace", "0", "--", sys.executable, "-m", WORKER_MODULE]
    proc = subprocess.Popen(
        [*argv, "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _signal_after_rows(proc, tmp_path / "run", signal.SIGTERM, rows=1)
    workers = descendants(proc.pid)
    time.sleep(0.2)  # handled, before the rank is told
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "received SIGTERM again; stopped 1 rank(s)" in err
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_second_ctrl_c_stops_at_once() -> None:
    stop = StopRequest(announce=False).install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT" and stop.agreed(1, "cpu")
        os.kill(os.getpid(), signal.SIGUSR1)  # a repeated warning changes nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_after_the_stop_saved_is_ignored() -> None:
    """Once the stop's checkpoint is complete, a SIGTERM (Slurm ending the step after a peer's exit 75)
    changes nothing; before that, a second SIGTERM still stops at once."""
    original = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest(announce=False).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested == "SIGUSR1"
        stop.saved = True
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: no KeyboardInterrupt
        assert stop.requested == "SIGUSR1"
        stop.saved = False
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.restore()
        signal.signal(signal.SIGUSR1, original)


def test_a_late_repeat_of_sigusr1_cannot_kill_a_stopped_run() -> None:
    """After the save, the handlers go back, except SIGUSR1's: a repeat would turn exit 75 into a kill."""
    original = signal.getsignal(signal.SIGUSR1)
    try:
        untouched = StopRequest(announce=False).install()
        untouched.restore()
        assert signal.getsignal(signal.SIGUSR1) == original

        stop = StopRequest(announce=False).install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested == "SIGUSR1"
        stop.restore()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)  # ignored: the test process lives on
        assert signal.getsignal(signal.SIGTERM) != stop._handle
    finally:
        signal.signal(signal.SIGUSR1, original)
