"""Failure handling with real (tiny, torch-free) processes: the supervisor and the node agent.

A failed rank must end every other rank and be named with its host; Ctrl-C
and a vanished launcher must leave nothing running. Ranks here are short
Python scripts that record their pid and environment, so every check is fast.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neoxcli.launchers.base import AGENT_MODULE, LaunchCommand
from neoxcli.launchers.node_agent import descendants, rank_envs, with_master_from_slurm
from neoxcli.launchers.supervisor import failure_from_line, supervise

# A rank: writes {pid, env} to $OUT/rank-$RANK.json, then sleeps, or exits with $FAIL_CODE if it is $FAIL_RANK.
RANK_SCRIPT = """
import json, os, sys, time
rank = os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "x"))
out = os.environ["OUT"]
tmp = os.path.join(out, f".rank-{rank}.tmp")
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "env": dict(os.environ)}, f)
os.replace(tmp, os.path.join(out, f"rank-{rank}.json"))  # readers never see a half-written file
if rank == os.environ.get("FAIL_RANK"):
    time.sleep(float(os.environ.get("FAIL_AFTER", "0.3")))
    sys.exit(int(os.environ.get("FAIL_CODE", "3")))
time.sleep(float(os.environ.get("SLEEP", "60")))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def pids(out: Path) -> dict[str, int]:
    return {p.stem.split("-", 1)[1]: json.loads(p.read_text())["pid"] for p in out.glob("rank-*.json")}


def rank_command(rank: int, out: Path, **env: str) -> LaunchCommand:
    return LaunchCommand(
        [sys.executable, "-c", RANK_SCRIPT],
        {"RANK": str(rank), "OUT": str(out), **env},
        f"rank {rank} on localhost",
    )


def test_failure_line_parsing() -> None:
    failure = failure_from_line("node02: neox: rank 3 on host node02 exited with code 7\n")
    assert failure is not None and (failure.who, failure.code) == ("rank 3 on host node02", 7)
    killed = failure_from_line("neox: rank 0 on host h was killed by signal SIGKILL")
    assert killed is not None and killed.code == 137
    assert failure_from_line("step 3 loss 1.0") is None


def test_supervise_all_succeed(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    commands = [rank_command(r, tmp_path, SLEEP="0") for r in range(3)]
    assert supervise(commands, stdout=out, stderr=err) == 0
    assert sorted(pids(tmp_path)) == ["0", "1", "2"]


def test_supervise_failed_rank_stops_the_others(tmp_path: Path) -> None:
    err = io.BytesIO()
    commands = [rank_command(r, tmp_path, FAIL_RANK="1", FAIL_CODE="5") for r in range(3)]
    start = time.monotonic()
    code = supervise(commands, stdout=io.BytesIO(), stderr=err, grace_s=5)
    assert code == 5
    assert time.monotonic() - start < 15
    assert b"error: rank 1 on localhost exited with code 5; stopped the other ranks" in err.getvalue()
    assert not any(alive(pid) for pid in pids(tmp_path).values())


def test_supervise_acts_on_agent_report(tmp_path: Path) -> None:
    """A remote failure is only visible as a report line (pdsh keeps running): that is enough to stop."""
    reporter = LaunchCommand(
        [
            sys.executable,
            "-c",
            "import sys, time; print('node02: neox: rank 3 on host node02 exited with code 9', file=sys.stderr, "
            "flush=True); time.sleep(60)",
        ],
        label="pdsh to 2 host(s)",
    )
    err = io.BytesIO()
    start = time.monotonic()
    assert supervise([reporter, rank_command(0, tmp_path)], stdout=io.BytesIO(), stderr=err, grace_s=5) == 9
    assert time.monotonic() - start < 15
    assert b"error: rank 3 on host node02 exited with code 9; stopped the other ranks" in err.getvalue()
    assert not any(alive(pid) for pid in pids(tmp_path).values())


SUPERVISE_SCRIPT = """
import sys
from neoxcli.launchers.base import LaunchCommand
from neoxcli.launchers.supervisor import supervise
script, out = sys.argv[1], sys.argv[2]
cmds = [LaunchCommand([sys.executable, "-c", script], {"RANK": str(r), "OUT": out}) for r in range(2)]
sys.exit(supervise(cmds, grace_s=5))
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_every_rank(tmp_path: Path, sig: int, code: int) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE_SCRIPT, RANK_SCRIPT, str(tmp_path)],
        stderr=subprocess.PIPE,
    )
    assert wait_for(lambda: len(pids(tmp_path)) == 2)
    launcher.send_signal(sig)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == code, err
    assert b"stopped all ranks" in err
    assert not any(alive(pid) for pid in pids(tmp_path).values())


# A launcher that passes no signal on (pdsh): SIGUSR1 would end it, so the supervisor must not send
# it one; it ends with 75, as saved ranks do, once the stop command has left word in $OUT/stop.
FORWARDS_NOTHING = """
import os, sys, time
out = sys.argv[1]
open(os.path.join(out, "started"), "w").close()
while not os.path.exists(os.path.join(out, "stop")):
    time.sleep(0.05)
sys.exit(75)
"""
STOP_SCRIPT = "import sys; open(sys.argv[1] + '/stop', 'w').write('asked')"
SUPERVISE_STOP = """
import sys
from neoxcli.launchers.base import LaunchCommand
from neoxcli.launchers.supervisor import supervise
job, stop, out = sys.argv[1:4]
stop_argv = [sys.executable, "-c", stop, out] if stop else [sys.executable, "-c", "pass"]
sys.exit(supervise([LaunchCommand([sys.executable, "-c", job, out], stop_argv=stop_argv)], grace_s=5))
"""


@pytest.mark.parametrize(
    ("signals", "code"), [((signal.SIGTERM,), 75), ((signal.SIGINT, signal.SIGINT), 130)]
)
def test_stop_command_carries_the_graceful_stop(tmp_path: Path, signals: tuple[int, ...], code: int) -> None:
    """The first signal runs the command's stop command instead of signalling it; a second stops it at once."""
    stop = STOP_SCRIPT if len(signals) == 1 else ""  # twice: the job never hears of the first
    launcher = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE_STOP, FORWARDS_NOTHING, stop, str(tmp_path)],
        stderr=subprocess.PIPE,
    )
    assert wait_for(lambda: (tmp_path / "started").exists())
    for sig in signals:
        launcher.send_signal(sig)
        time.sleep(0.3)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == code, err
    assert b"every rank finishes its step, saves a checkpoint and stops" in err
    if code == 75:
        assert (tmp_path / "stop").read_text() == "asked"
    else:
        assert b"interrupted (SIGINT): stopped all ranks" in err


# --- the node agent ----------------------------------------------------------------------------


def test_rank_envs_from_ordered_host_list() -> None:
    nodes = [("node01", (0, 1)), ("node02", (0, 2)), ("node03", (0,))]
    envs = rank_envs(nodes, "node02", {"KEEP": "1"})
    assert [(e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["NODE_RANK"]) for e in envs] == [
        ("2", "0", "2", "1"),
        ("3", "1", "2", "1"),
    ]
    assert all(e["WORLD_SIZE"] == "5" and e["KEEP"] == "1" for e in envs)
    assert all(e["CUDA_VISIBLE_DEVICES"] == "0,2" for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in rank_envs(nodes, "node01", {})[0]
    with pytest.raises(SystemExit, match="not one of the job's hosts"):
        rank_envs(nodes, "elsewhere", {})


def test_master_from_slurm_nodelist() -> None:
    assert with_master_from_slurm({"SLURM_JOB_NODELIST": "node[07-08]"})["MASTER_ADDR"] == "node07"
    assert with_master_from_slurm({"SLURM_JOB_NODELIST": "n1", "MASTER_ADDR": "x"})["MASTER_ADDR"] == "x"
    assert "MASTER_ADDR" not in with_master_from_slurm({})


def agent(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "-m", AGENT_MODULE, *args, "--grace", "5", "--", sys.executable, "-c", RANK_SCRIPT],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_agent_starts_this_hosts_ranks(tmp_path: Path) -> None:
    proc = agent(
        "--node",
        "a=0,1",
        "--node",
        "b=0,1",
        "--host",
        "b",
        env={"OUT": str(tmp_path), "SLEEP": "0", "X": "y z"},
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen = {rank: json.loads((tmp_path / f"rank-{rank}.json").read_text())["env"] for rank in ("2", "3")}
    assert seen["2"]["LOCAL_RANK"] == "0" and seen["3"]["LOCAL_RANK"] == "1"
    assert all(e["WORLD_SIZE"] == "4" and e["X"] == "y z" for e in seen.values())


def test_agent_failed_rank_reported_and_others_stopped(tmp_path: Path) -> None:
    proc = agent(
        "--node", "a=0,1", "--host", "a", env={"OUT": str(tmp_path), "FAIL_RANK": "1", "FAIL_CODE": "4"}
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4
    assert "neox: rank 1 on host a exited with code 4" in err
    assert not any(alive(pid) for pid in pids(tmp_path).values())


def test_agent_wrap_mode_names_launcher_rank(tmp_path: Path) -> None:
    env = {
        "OUT": str(tmp_path),
        "OMPI_COMM_WORLD_RANK": "5",
        "OMPI_COMM_WORLD_SIZE": "8",
        "MASTER_ADDR": "h",
        "FAIL_RANK": "5",
        "FAIL_CODE": "6",
    }
    proc = agent("--host", "hostX", env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 6
    assert "neox: rank 5 on host hostX exited with code 6" in err


def test_agent_stops_ranks_when_its_launcher_vanishes(tmp_path: Path) -> None:
    """An ssh session dropped without a tty sends no signal: the agent notices its parent is gone."""
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-m', {AGENT_MODULE!r}, '--node', 'a=0,1', '--host', 'a', "
            f"'--grace', '5', '--', sys.executable, '-c', {RANK_SCRIPT!r}]); time.sleep(120)",
        ],
        env={**os.environ, "OUT": str(tmp_path)},
    )
    try:
        assert wait_for(lambda: len(pids(tmp_path)) == 2)
        ranks = pids(tmp_path)
        middle.kill()
        middle.wait()
        assert wait_for(lambda: not any(alive(pid) for pid in ranks.values()), timeout=20)
    finally:
        if middle.poll() is None:
            middle.kill()


# A rank that notes each signal it gets in $OUT/signals, and exits 75 (saved) on SIGUSR1.
NOTING_RANK = """
import os, signal, sys, time
out = os.environ["OUT"]
def note(signum, _frame):
    with open(os.path.join(out, "signals"), "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGUSR1:
        sys.exit(75)
signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGUSR1, note)
open(os.path.join(out, "started"), "w").close()
time.sleep(60)
"""


def test_agent_passes_sigusr1_on_after_the_ranks_own_copy(tmp_path: Path) -> None:
    """Slurm signals every task; the agent's copy comes second, so the rank sees one request, not two."""
    proc = subprocess.Popen(
        [sys.executable, "-m", AGENT_MODULE, "--host", "h", "--", sys.executable, "-c", NOTING_RANK],
        env={**os.environ, "OUT": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: (tmp_path / "started").exists())
    (rank,) = descendants(proc.pid)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    os.kill(rank, signal.SIGTERM)  # the rank's own copy, a moment later
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert (tmp_path / "signals").read_text().split() == ["SIGTERM", "SIGUSR1"]


# A training rank, as far as its agent can tell (the worker module is in its argv): on the agent's
# SIGUSR1 it "saves" and then takes its time to exit 75, ignoring SIGTERM as a saved rank does.
SAVING_RANK = """
import os, signal, sys, time
out = os.environ["OUT"]
def saved(_signum, _frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(out, "saved"), "w").close()
    time.sleep(1.5)
    sys.exit(75)
signal.signal(signal.SIGUSR1, saved)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # its own copy of the preemption: handled, not fatal
open(os.path.join(out, "started"), "w").close()
time.sleep(60)
"""


def test_agent_exits_75_when_a_hard_stop_finds_its_ranks_saved(tmp_path: Path) -> None:
    """Slurm ends a step with SIGTERM once one task exits 75: an agent whose ranks had already saved
    and exit 75 by themselves reports 75, not 143, so the job can be requeued."""
    worker = "neoxcli.training.worker"  # only its presence in argv matters to the agent
    proc = subprocess.Popen(
        [sys.executable, "-m", AGENT_MODULE, "--host", "h", "--grace", "10", "--"]
        + [sys.executable, "-c", SAVING_RANK, worker],
        env={**os.environ, "OUT": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: (tmp_path / "started").exists())
    proc.send_signal(signal.SIGTERM)  # the preemption: passed on as SIGUSR1 a second later
    assert wait_for(lambda: (tmp_path / "saved").exists())
    proc.send_signal(signal.SIGTERM)  # srun ending the step after a peer's exit 75
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err


def test_agent_killed_outright_takes_its_ranks_along(tmp_path: Path) -> None:
    proc = agent("--node", "a=0,1", "--host", "a", env={"OUT": str(tmp_path)})
    assert wait_for(lambda: len(pids(tmp_path)) == 2)
    proc.kill()
    proc.communicate()
    ranks = pids(tmp_path)
    assert wait_for(lambda: not any(alive(pid) for pid in ranks.values()), timeout=10)
