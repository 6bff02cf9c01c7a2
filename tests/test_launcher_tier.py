"""Launcher tier, real: 3-step trainings across a two-host cluster brought up on this machine.

The cluster (tests/cluster/cluster.py) is two network namespaces, ``node01``
and ``node02``, each with its own address, host name, sshd and slurmd. Every
launch runs `neox train` on node01 (the login node) and checks, through a
rank hook, that rank 0 ran on node01 and rank 1 on node02 with the variables
the launcher had to carry. Few launches, several checks each:

* pdsh: trains; a hostile launcher_env value arrives intact and injects nothing.
* pdsh: a rank dying on node02 ends the job within 60 s, named, nothing left running;
  SIGTERM to the launcher makes both hosts' ranks save and stop (exit 75), a second
  Ctrl-C ends the ranks on both hosts at once.
* mpi (Open MPI): trains.
* slurm inside a real allocation (salloc): `neox hostfile --slurm` agrees with
  `scontrol show hostnames`, then srun trains.
* slurm: a rank dying on node02 ends the srun step, named; SIGTERM to every process of the
  step (a preemption) makes both ranks save and stop (exit 75).
* slurm --sbatch: the submitted batch job trains.

(jsrun cannot be installed; the fake in tests/fake_bin is exercised by the engine tier.)
Skipped, with the reason, where the machine lacks root or the packages
(`apt-get install -y pdsh openssh-server openssh-client openmpi-bin libopenmpi-dev slurm-wlm munge`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neoxcli.launchers.signals import STOPPED_EXIT_CODE

sys.path.insert(0, str(Path(__file__).parent / "cluster"))
from cluster import IFACE, Cluster, missing_requirements  # noqa: E402
from runs import (  # noqa: E402
    NEOX,
    finish_timed,
    processes_mentioning,
    read_where,
    wait_for_path,
    wait_gone,
    write_hooks,
    write_tiny_config,
)

_why = missing_requirements()
if _why is None:
    try:
        import neoxcli.training.trainer  # noqa: F401
    except Exception as exc:  # pragma: no cover - only while the trainer is unfinished
        _why = f"the trainer does not import yet: {exc}"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why is not None, reason=_why or "")]

HOSTILE = "a b; touch SENTINEL_T $(touch SENTINEL_U) 'q\" 50%h"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    started = Cluster(root, tag=str(os.getpid() % 100000)).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hooks(tmp_path_factory.mktemp("hooks"))


def run_env(hooks: Path, where: Path, **extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath, "DS_ACCELERATOR": "cpu", "NEOX_TEST_WHERE": str(where), **extra}


def setup_run(tmp_path: Path, **extra: object) -> tuple[Path, Path, Path, Path]:
    """(config, save dir, worker-record dir, hostfile) for one launch."""
    save = tmp_path / "run"
    where = tmp_path / "where"
    where.mkdir()
    settings: dict[str, object] = {"launcher_env": {"GLOO_SOCKET_IFNAME": IFACE, "TIER_VALUE": HOSTILE}}
    settings.update(extra)
    cfg = write_tiny_config(tmp_path, save, **settings)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node01 slots=1\nnode02 slots=1\n")
    return cfg, save, where, hostfile


def wait_for_rows(proc: subprocess.Popen, metrics: Path, rows: int, timeout_s: float = 240) -> None:
    """Until the run has logged ``rows`` metrics rows: it is training on both hosts."""
    deadline = time.monotonic() + timeout_s
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= rows):
        assert proc.poll() is None and time.monotonic() < deadline, "training made no progress"
        time.sleep(0.05)


def assert_two_host_run(out: str, where: Path, save: Path) -> None:
    """Three steps done; rank 0 on node01, rank 1 on node02, each with what the launcher had to carry."""
    assert "on cpu x2" in out and "step      3" in out
    ranks = read_where(where)
    assert sorted(ranks) == ["0", "1"], ranks
    assert (ranks["0"]["host"], ranks["1"]["host"]) == ("node01", "node02")
    for record in ranks.values():
        env = record["env"]
        assert env["MASTER_ADDR"] == "node01" and env["TIER_VALUE"] == HOSTILE
        assert env["GLOO_SOCKET_IFNAME"] == IFACE and "OMP_NUM_THREADS" in env
    assert (save / "global_step3").is_dir()
    assert not list(save.parent.rglob("SENTINEL*"))


def test_pdsh_trains_across_two_hosts(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    cfg, save, where, hostfile = setup_run(tmp_path)
    result = cluster.run(
        "node01",
        [*NEOX, "train", str(cfg), "--launcher", "pdsh", "--hostfile", str(hostfile)],
        env=run_env(hooks, where),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "node01: " in result.stdout  # pdsh's prefix: rank 0's log came back over ssh
    assert_two_host_run(result.stdout, where, save)


def test_pdsh_failed_rank_on_other_host_ends_the_job(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    cfg, save, where, hostfile = setup_run(tmp_path, train_iters=2000, checkpoint_factor=2)
    trigger = save / "global_step2"
    env = run_env(hooks, where, NEOX_TEST_FAIL_RANK="1", NEOX_TEST_FAIL_AFTER=str(trigger))
    proc = cluster.popen(
        "node01", [*NEOX, "train", str(cfg), "--launcher", "pdsh", "--hostfile", str(hostfile)], env=env
    )
    reached = wait_for_path(trigger, proc)
    out, err, took = finish_timed(proc, 90)
    assert reached, "training never reached step 2"
    assert proc.returncode == 3, out[-2000:] + err[-3000:]
    assert "error: rank 1 on host node02 exited with code 3; stopped the other ranks" in err
    assert took < 60
    # node01's agent sees its ssh session drop and stops its rank: SIGTERM, then SIGKILL after the
    # agent's grace period, since a rank blocked in a collective with the dead peer ignores SIGTERM.
    assert wait_gone(str(save / "run-config.yml")) == []


def test_pdsh_sigterm_saves_and_stops_on_both_hosts(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    """ssh forwards no signal; the stop still reaches both hosts: same last step, one checkpoint, exit 75."""
    cfg, save, where, hostfile = setup_run(tmp_path, train_iters=2000, checkpoint_factor=1000)
    stops = tmp_path / "stops"
    stops.mkdir()
    proc = cluster.popen(
        "node01",
        [*NEOX, "train", str(cfg), "--launcher", "pdsh", "--hostfile", str(hostfile)],
        env=run_env(hooks, where, NEOX_TEST_STOPS=str(stops)),
    )
    try:
        wait_for_rows(proc, save / "metrics.jsonl", 2)
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err, took = finish_timed(proc, 120)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-2000:] + err[-3000:]
    assert "SIGTERM: every rank finishes its step, saves a checkpoint and stops" in err
    tag = save / (save / "latest").read_text().strip()
    stopped_at = int(tag.name.removeprefix("global_step"))
    assert 2 <= stopped_at < 2000 and (tag / "config.yml").is_file()  # finalized: complete
    # Rank 0 names its own signal, or, when node02's agent passed the stop on first, the peer's.
    said = " ".join(out.split()).replace(" node01:", "")
    assert any(
        f"stopped by {by} after iteration {stopped_at}" in said
        for by in ("SIGUSR1", "a signal to another rank")
    ), said[-800:]
    # Each rank, as it exited: the signal reached node02's too, and both stopped after the same step.
    ranks = {p.stem: json.loads(p.read_text()) for p in stops.glob("rank-*.json")}
    assert sorted(ranks) == ["rank-0", "rank-1"], ranks
    assert (ranks["rank-0"]["host"], ranks["rank-1"]["host"]) == ("node01", "node02")
    # What the agents passed on from the pdsh stop; a rank whose peer's copy came first hears of it
    # through the step's stop vote instead.
    signals = {r["signal"] for r in ranks.values()}
    assert "SIGUSR1" in signals and signals <= {"SIGUSR1", "a signal to another rank"}, ranks
    for record in ranks.values():
        assert record["iteration"] == stopped_at and record["exit"] == STOPPED_EXIT_CODE, ranks
    assert wait_gone(str(save / "run-config.yml")) == []


def test_pdsh_second_ctrl_c_stops_ranks_on_both_hosts(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    """The second Ctrl-C stops pdsh, dropping the ssh sessions; each host's agent sees that and ends its ranks."""
    cfg, save, where, hostfile = setup_run(tmp_path, train_iters=2000, checkpoint_factor=2)
    proc = cluster.popen(
        "node01",
        [*NEOX, "train", str(cfg), "--launcher", "pdsh", "--hostfile", str(hostfile)],
        env=run_env(hooks, where),
    )
    marker = str(save / "run-config.yml")
    try:
        wait_for_path(save / "global_step2", proc)
        assert sorted(read_where(where)) == ["0", "1"]
        assert len(processes_mentioning(marker)) >= 4  # two agents and two workers
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal delivers: the first saves and stops
        time.sleep(0.1)  # handled, and long before the ranks could have saved
        proc.send_signal(signal.SIGINT)  # the second stops at once
    finally:
        out, err, _ = finish_timed(proc, 60)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted (SIGINT): stopped all ranks" in err
    assert wait_gone(marker) == []


def test_mpi_trains_across_two_hosts(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    mca = [
        "--mca",
        "btl",
        "self,tcp",
        "--mca",
        "btl_tcp_if_include",
        IFACE,
        "--mca",
        "oob_tcp_if_include",
        IFACE,
    ]
    cfg, save, where, hostfile = setup_run(tmp_path, mpi_flavor="openmpi", launcher_args=mca)
    result = cluster.run(
        "node01",
        [*NEOX, "train", str(cfg), "--launcher", "mpi", "--hostfile", str(hostfile)],
        env=run_env(hooks, where),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_two_host_run(result.stdout, where, save)
    ranks = read_where(where)
    assert [ranks[r]["env"]["OMPI_COMM_WORLD_RANK"] for r in ("0", "1")] == ["0", "1"]
    assert "RANK" not in ranks["1"]["env"]  # rank numbers came from Open MPI, not from us


def test_slurm_srun_in_allocation_and_hostfile(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    cfg, save, where, _ = setup_run(tmp_path)
    neox = shlex.join(NEOX)
    script = (
        f'echo "$SLURM_JOB_NODELIST" > nodelist && {neox} hostfile --slurm -o hostfile.slurm && '
        f"scontrol show hostnames > scontrol.names && exec {neox} train {shlex.quote(str(cfg))} --launcher slurm"
    )
    result = cluster.run(
        "node01",
        ["salloc", "--nodes=2", "--ntasks-per-node=1", "sh", "-c", script],
        env=run_env(hooks, where),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "nodelist").read_text().strip() == "node[01-02]"
    names = (tmp_path / "scontrol.names").read_text().split()
    assert names == ["node01", "node02"]
    assert (tmp_path / "hostfile.slurm").read_text() == "".join(f"{n} slots=1\n" for n in names)
    assert_two_host_run(result.stdout, where, save)
    ranks = read_where(where)
    assert [ranks[r]["env"]["SLURM_PROCID"] for r in ("0", "1")] == ["0", "1"]


def test_slurm_failed_rank_ends_the_step(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    cfg, save, where, _ = setup_run(tmp_path, train_iters=2000, checkpoint_factor=2)
    trigger = save / "global_step2"
    env = run_env(hooks, where, NEOX_TEST_FAIL_RANK="1", NEOX_TEST_FAIL_AFTER=str(trigger))
    script = f"exec {shlex.join(NEOX)} train {shlex.quote(str(cfg))} --launcher slurm"
    start = time.monotonic()
    result = cluster.run(
        "node01", ["salloc", "--nodes=2", "--ntasks-per-node=1", "sh", "-c", script], env=env, timeout=240
    )
    assert trigger.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    took = time.time() - trigger.stat().st_mtime  # from step 2 (when the rank dies) to the end
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    assert "error: rank 1 on host node02 exited with code 3; stopped the other ranks" in result.stderr
    assert took < 60 and time.monotonic() - start < 240
    assert processes_mentioning(str(save / "run-config.yml")) == []


def test_slurm_step_sigterm_saves_and_stops(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    """A preemption's SIGTERM reaches every process of the step, node agents and ranks: both save, exit 75."""
    cfg, save, where, _ = setup_run(tmp_path, train_iters=2000, checkpoint_factor=1000)
    stops = tmp_path / "stops"
    stops.mkdir()
    script = f"exec {shlex.join(NEOX)} train {shlex.quote(str(cfg))} --launcher slurm"
    proc = cluster.popen(
        "node01",
        ["salloc", "--nodes=2", "--ntasks-per-node=1", "sh", "-c", script],
        env=run_env(hooks, where, NEOX_TEST_STOPS=str(stops)),
    )
    try:
        wait_for_rows(proc, save / "metrics.jsonl", 2)
        jobs = cluster.run("node01", ["squeue", "-h", "-o", "%i"], timeout=30).stdout.split()
        assert len(jobs) == 1, jobs
        # What a preemption does: SIGTERM to every task of the job's steps and all their processes.
        cancel = cluster.run("node01", ["scancel", "--signal=TERM", jobs[0]], timeout=30)
        assert cancel.returncode == 0, cancel.stderr
    finally:
        out, err, _ = finish_timed(proc, 120)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-2000:] + err[-3000:]
    tag = save / (save / "latest").read_text().strip()
    stopped_at = int(tag.name.removeprefix("global_step"))
    assert 2 <= stopped_at < 2000 and (tag / "config.yml").is_file()  # finalized: complete
    ranks = {p.stem: json.loads(p.read_text()) for p in stops.glob("rank-*.json")}
    assert sorted(ranks) == ["rank-0", "rank-1"], ranks
    for record in ranks.values():  # each rank's own SIGTERM came first; its agent's copy changed nothing
        assert record["signal"] == "SIGTERM" and record["exit"] == STOPPED_EXIT_CODE, ranks
        assert record["iteration"] == stopped_at, ranks
    assert wait_gone(str(save / "run-config.yml")) == []


def test_slurm_sbatch_job_trains(cluster: Cluster, hooks: Path, tmp_path: Path) -> None:
    cfg, save, where, _ = setup_run(tmp_path, num_nodes=2)
    result = cluster.run(
        "node01",
        [*NEOX, "train", str(cfg), "--launcher", "slurm", "--sbatch"],
        env=run_env(hooks, where),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"submitted batch job (\d+): script (\S+), output (\S+)", result.stdout)
    assert match, result.stdout
    job, script, output = match.group(1), Path(match.group(2)), Path(match.group(3))
    assert script == save / "neox.sbatch" and script.is_file()
    state = ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        info = cluster.run("node01", ["scontrol", "show", "job", job], timeout=30).stdout
        found = re.search(r"JobState=(\w+)", info)
        state = found.group(1) if found else ""
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(0.5)
    text = output.read_text() if output.exists() else "(no output file)"
    assert state == "COMPLETED", f"job {job} ended {state}:\n{text[-3000:]}"
    assert f"neox: job {job} on node[01-02]" in text
    assert_two_host_run(text, where, save)
