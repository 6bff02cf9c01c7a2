"""Per-host agent: ``python -m neoxcli.launchers.node_agent [--host H --node H=0,1 ...] -- CMD...``.

Two jobs, both about never leaving ranks behind:

* With ``--node`` (pdsh): start this host's ranks of CMD with ``RANK``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE`` worked out from the
  ordered host list, so one remote command serves every host.
* Without (srun, mpirun, jsrun): run CMD as the one rank the launcher started.

Either way, when a rank fails the agent stops its other ranks and prints
``neox: rank R on host H exited with code C (log: PATH)`` for the launcher to
act on; the same when a rank stops beating its heartbeat (``heartbeat``:
``... stopped responding during step 12 (no heartbeat for 30 s)``). Worker
ranks' output goes to their logs under the run directory (``rankio``).

Signals: SIGUSR1 is passed on to the ranks (a second later, so that a copy
Slurm sends them itself comes first), which save and stop. So is the first
SIGTERM when the ranks are neox training workers: Slurm's preemption and
``scancel`` send SIGTERM to every process of the step, the agent included, and
the agent must not kill ranks that are saving. A second SIGTERM, SIGINT and
SIGHUP stop the ranks at once, as does the agent's parent going away (an ssh
connection dropped by a stopped pdsh gives no signal without a tty).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from neoxcli.launchers.heartbeat import HANG_EXIT_CODE, Watch
from neoxcli.launchers.rankio import WORKER_MODULE, Gate, RankLog, Relay, rank_log_path
from neoxcli.launchers.signals import STOPPED_EXIT_CODE

STOP_GRACE_S = 10.0
# How long a stop waits before the agent passes it on as SIGUSR1. Slurm signals the ranks too, at
# about the same moment (a preemption's SIGTERM, ``--signal=USR1``); a rank takes a SIGTERM after a
# SIGUSR1 as "stop at once", so the agent's copy must come second (a stopping rank ignores SIGUSR1).
STOP_FORWARD_DELAY_S = 1.0
_DONE_CODES = frozenset({0, STOPPED_EXIT_CODE})  # a rank's exit codes that are no failure
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for children: SIGKILL them if their parent dies (Linux), even by SIGKILL.

    A rank that outlives its agent would sit in a collective until the timeout.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


class _Stop(Exception):
    def __init__(self, signum: int, why: str) -> None:
        super().__init__(why)
        self.signum = signum
        self.why = why


def parse_node(text: str) -> tuple[str, tuple[int, ...]]:
    """``host=0,1`` as ``("host", (0, 1))``."""
    name, sep, devices = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected HOST=DEV[,DEV...], got {text!r}")
    try:
        values = tuple(int(d) for d in devices.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"device indices must be integers in {text!r}") from None
    return name, values


def rank_envs(
    nodes: Sequence[tuple[str, tuple[int, ...]]], host: str, base_env: Mapping[str, str]
) -> list[dict[str, str]]:
    """The environment of each rank ``host`` runs, in local-rank order."""
    names = [name for name, _ in nodes]
    if host not in names:
        raise SystemExit(f"neox: host {host!r} is not one of the job's hosts ({', '.join(names)})")
    index = names.index(host)
    devices = nodes[index][1]
    base = sum(len(d) for _, d in nodes[:index])
    world = sum(len(d) for _, d in nodes)
    envs = []
    for local, _device in enumerate(devices):
        env = dict(base_env)
        env.update(
            RANK=str(base + local),
            LOCAL_RANK=str(local),
            LOCAL_WORLD_SIZE=str(len(devices)),
            WORLD_SIZE=str(world),
            NODE_RANK=str(index),
        )
        if devices != tuple(range(len(devices))):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
        envs.append(env)
    return envs


def with_master_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``MASTER_ADDR`` set to the allocation's first host when the launcher could not know it.

    A batch job's nodes are chosen after submission; every task of the job
    expands the same ``SLURM_JOB_NODELIST`` and so agrees on the first host.
    """
    out = dict(env)
    nodelist = out.get("SLURM_JOB_NODELIST") or out.get("SLURM_NODELIST")
    if not out.get("MASTER_ADDR") and nodelist:
        from neoxcli.launchers.hostlist import expand_nodelist

        hosts = expand_nodelist(nodelist)
        if hosts:
            out["MASTER_ADDR"] = hosts[0]
    return out


def launcher_rank(env: Mapping[str, str]) -> str:
    """This process's rank as the launcher named it, for messages only."""
    try:
        from neoxcli.parallel.distributed import detect

        return str(detect(env).rank)
    except Exception:
        return "?"


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere), children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process group, wait up to ``grace_s``, then SIGKILL what is left.

    SIGCONT follows SIGTERM, so a stopped (frozen) rank acts on it instead of
    holding the job for the whole grace.
    """
    # Children that left the group (pdsh runs each ssh in its own session) would keep their
    # remote hosts' ranks alive through an open connection: signal them by pid too.
    strays = [pid for proc in procs if proc.poll() is None for pid in descendants(proc.pid)]
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            _signal_group(proc, signal.SIGCONT)
    for pid in strays:
        _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for pid in strays:
        _signal_pid(pid, signal.SIGKILL)
    for proc in procs:
        # Also the group of a leader that already exited: its children may linger.
        _signal_group(proc, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()


def describe_status(returncode: int) -> tuple[str, int]:
    """``(text, exit code)`` for a Popen return code: negative means killed by that signal."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}", 128 - returncode
    return f"exited with code {returncode}", returncode


class ExitWatcher:
    """Notes when each child exits, from one waiting thread per child.

    When a rank dies its peers fail moments later (their connections drop);
    polling in turn could blame a peer. Exit times tell which came first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exits: dict[int, tuple[float, int]] = {}

    def watch(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        def wait() -> None:
            code = proc.wait()
            with self._lock:
                self.exits[index] = (time.monotonic(), code)

        threading.Thread(target=wait, daemon=True).start()

    def first_failure(self) -> tuple[int, int] | None:
        """``(index, return code)`` of the earliest child that failed (a rank that saved and stopped did not)."""
        with self._lock:
            failed = [(t, i, code) for i, (t, code) in self.exits.items() if code not in _DONE_CODES]
        if not failed:
            return None
        _, index, code = min(failed)
        return index, code

    def all_succeeded(self, count: int) -> bool:
        """Every child exited: finished (0) or saved and stopped on a signal (``STOPPED_EXIT_CODE``)."""
        with self._lock:
            return len(self.exits) == count and all(code in _DONE_CODES for _, code in self.exits.values())

    def exit_code(self) -> int:
        """The job's code once ``all_succeeded``: ``STOPPED_EXIT_CODE`` if any rank stopped on a signal."""
        with self._lock:
            stopped = any(code == STOPPED_EXIT_CODE for _, code in self.exits.values())
        return STOPPED_EXIT_CODE if stopped else 0


def supervise_ranks(
    command: Sequence[str],
    envs: Sequence[Mapping[str, str]],
    ranks: Sequence[str],
    host: str,
    *,
    grace_s: float = STOP_GRACE_S,
    poll_s: float = 0.1,
) -> int:
    """Run one copy of ``command`` per env; on the first failure stop the rest and report it."""
    parent = os.getppid()
    procs: list[subprocess.Popen[bytes]] = []
    watcher = ExitWatcher()
    beats = Path(tempfile.mkdtemp(prefix="neox-heartbeat-"))
    watch = Watch(beats)
    gate = Gate()
    logs: dict[int, RankLog] = {}
    relays: list[Relay] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signum, f"received {signal.Signals(signum).name}")

    asked_at: list[float] = []  # when a stop came that is still to be passed on to the ranks
    stopping: list[int] = []  # the SIGTERM that asked the ranks to save and stop, once it came

    def pass_on(_signum: int, _frame: object) -> None:
        # Slurm's warning before the time limit: each rank saves a checkpoint and stops by itself.
        if not asked_at:
            asked_at.append(time.monotonic())

    def save_and_stop(signum: int, frame: object) -> None:
        if stopping:
            raise _Stop(signum, f"received {signal.Signals(signum).name} again")
        stopping.append(signum)
        pass_on(signum, frame)
        print(
            f"neox: host {host}: SIGTERM: its ranks finish their step, save a checkpoint and stop "
            "(SIGTERM again stops them at once)",
            file=sys.stderr,
            flush=True,
        )

    def report(index: int, what: str) -> None:
        log = logs.get(index)
        suffix = f" (log: {log.path})" if log is not None else ""
        print(f"neox: rank {ranks[index]} on host {host} {what}{suffix}", file=sys.stderr, flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if WORKER_MODULE in command:  # only neox's training workers save on a signal
        signal.signal(signal.SIGTERM, save_and_stop)
    signal.signal(signal.SIGUSR1, pass_on)
    try:
        for index, env in enumerate(envs):
            log_path = rank_log_path(command, ranks[index])
            child_env = dict(env)
            piped: int | None = None
            if log_path is not None:  # a worker: its own log and heartbeat
                logs[index] = RankLog(log_path, ranks[index])
                child_env.update(watch.env(index))
                piped = subprocess.PIPE
            proc = subprocess.Popen(
                list(command),
                env=child_env,
                stdout=piped,
                stderr=piped,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            procs.append(proc)
            watcher.watch(index, proc)
            if proc.stdout is not None and proc.stderr is not None:
                log = logs[index]
                relays += [
                    Relay(proc.stdout, sys.stdout.buffer, log=log, gate=gate),
                    Relay(proc.stderr, sys.stderr.buffer, log=log, gate=gate, tagged_only=True),
                ]
                relays[-2].start()
                relays[-1].start()
        while True:
            hang = watch.check(exclude=set(watcher.exits))
            if hang is not None:
                report(hang.key, hang.what)
                stop_all(procs, grace_s)
                return HANG_EXIT_CODE
            failed = watcher.first_failure()
            if failed is not None:
                index, code = failed
                silent = watch.silent(exclude=set(watcher.exits))
                if silent is not None:  # it failed waiting for a frozen peer: name the frozen one
                    report(silent.key, silent.what)
                    stop_all(procs, grace_s)
                    return HANG_EXIT_CODE
                what, exit_code = describe_status(code)
                # Report first: the launcher can start stopping other hosts while we stop ours.
                report(index, what)
                stop_all(procs, grace_s)
                return exit_code if exit_code > 0 else 1
            if watcher.all_succeeded(len(procs)):
                # Every rank is done: a signal now (Slurm ends the step with SIGTERM as soon as
                # one task exits 75) has nothing left to stop and must not change this exit code.
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_IGN)
                return watcher.exit_code()
            if asked_at and time.monotonic() - asked_at[0] >= STOP_FORWARD_DELAY_S:
                asked_at.clear()
                for proc in procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGUSR1)
            if os.getppid() != parent:
                raise _Stop(signal.SIGHUP, "the launcher went away")
            time.sleep(poll_s)
    except _Stop as stop:
        stop_all(procs, grace_s)
        if stopping and procs and all(proc.returncode == STOPPED_EXIT_CODE for proc in procs):
            # The ranks had saved and were exiting when the hard stop came: Slurm ends a step
            # with SIGTERM as soon as one task exits non-zero, and 75 is non-zero to it.
            return STOPPED_EXIT_CODE
        print(f"neox: host {host}: {stop.why}; stopped {len(procs)} rank(s)", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for relay in relays:
            relay.join(timeout=5.0)
        for log in logs.values():
            log.close()
        shutil.rmtree(beats, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args_in:
        print("usage: python -m neoxcli.launchers.node_agent [OPTIONS] -- COMMAND...", file=sys.stderr)
        return 2
    cut = args_in.index("--")
    command = args_in[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m neoxcli.launchers.node_agent")
    parser.add_argument("--host", help="this host's name as the job lists it (pdsh passes %%h)")
    parser.add_argument(
        "--node",
        action="append",
        type=parse_node,
        default=[],
        metavar="HOST=DEV,...",
        help="every host of the job, in rank order, with its local device indices",
    )
    parser.add_argument(
        "--grace", type=float, default=STOP_GRACE_S, help="seconds between SIGTERM and SIGKILL"
    )
    args = parser.parse_args(args_in[:cut])
    if not command:
        parser.error("no command after --")
    if args.node:
        if not args.host:
            parser.error("--node needs --host")
        envs = rank_envs(args.node, args.host, os.environ)
        return supervise_ranks(command, envs, [e["RANK"] for e in envs], args.host, grace_s=args.grace)
    host = args.host or socket.gethostname()
    env = with_master_from_slurm(os.environ)
    return supervise_ranks(command, [env], [launcher_rank(env)], host, grace_s=args.grace)


if __name__ == "__main__":
    sys.exit(main())
