"""Run a launch plan's commands side by side and never let a job hang on a dead rank.

Distributed ranks block in collectives when a peer dies, so waiting for every
process to exit on its own can take as long as the collective timeout. The
supervisor watches every command and, when one fails (or a node agent reports
a failed rank in its output, as it does through pdsh), stops all of them at once
and says which rank on which host failed. Ctrl-C (or SIGTERM) stops everything too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from neoxcli.launchers.node_agent import (
    STOP_GRACE_S,
    ExitWatcher,
    describe_status,
    die_with_parent,
    stop_all,
)
from neoxcli.launchers.plan import LaunchCommand

# Written by neoxcli.launchers.node_agent when a rank fails; found anywhere in a line, because
# pdsh and srun prefix lines with the host or task.
FAILURE_LINE = re.compile(
    r"neox: rank (?P<rank>\d+) on host (?P<host>\S+) "
    r"(?P<what>exited with code (?P<code>-?\d+)|was killed by signal (?P<signal>\w+))"
)


@dataclass
class Failure:
    """Who failed first, as precisely as the output or exit status tells."""

    who: str
    what: str
    code: int


def failure_from_line(line: str) -> Failure | None:
    match = FAILURE_LINE.search(line)
    if match is None:
        return None
    if match["code"] is not None:
        code = int(match["code"])
        code = code if code > 0 else 1
    else:
        try:
            code = 128 + signal.Signals[match["signal"]].value
        except KeyError:
            code = 1
    return Failure(f"rank {match['rank']} on host {match['host']}", match["what"], code)


class _Relay(threading.Thread):
    """Copies one child stream to ours line by line, looking for failure reports."""

    def __init__(self, src: IO[bytes], dst: IO[bytes], on_failure: Callback) -> None:
        super().__init__(daemon=True)
        self.src, self.dst, self.on_failure = src, dst, on_failure

    def run(self) -> None:
        for raw in iter(self.src.readline, b""):
            try:
                self.dst.write(raw)
                self.dst.flush()
            except (OSError, ValueError):
                pass
            failure = failure_from_line(raw.decode("utf-8", "replace"))
            if failure is not None:
                self.on_failure(failure)
        self.src.close()


class Callback:
    """Keeps the first failure reported by any relay."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: Failure | None = None

    def __call__(self, failure: Failure) -> None:
        with self.lock:
            if self.first is None:
                self.first = failure


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def supervise(
    commands: Sequence[LaunchCommand],
    *,
    grace_s: float = STOP_GRACE_S,
    poll_s: float = 0.1,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> int:
    """Start every command, relay its output, and return 0 only if all of them succeed.

    On the first failure the others are stopped and an ``error:`` line names
    the failed rank and host (from a node agent's report, else the command's
    label). Ctrl-C or SIGTERM stops every command and returns 130 or 143.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    reported = Callback()
    procs: list[subprocess.Popen[bytes]] = []
    relays: list[_Relay] = []
    watcher = ExitWatcher()
    previous: dict[int, object] = {}

    def interrupt(signum: int, _frame: object) -> None:
        raise _Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        for command in commands:
            proc = subprocess.Popen(
                command.argv,
                env={**os.environ, **command.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            procs.append(proc)
            watcher.watch(len(procs) - 1, proc)
            assert proc.stdout is not None and proc.stderr is not None
            relays += [_Relay(proc.stdout, out, reported), _Relay(proc.stderr, err, reported)]
            relays[-2].start()
            relays[-1].start()
        failure = _watch(commands, procs, relays, reported, watcher, poll_s)
    except (KeyboardInterrupt, _Interrupted) as exc:
        signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
        stop_all(procs, grace_s)
        _finish(relays)
        _say(err, f"interrupted ({signal.Signals(signum).name}): stopped all ranks")
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    if failure is None:
        _finish(relays)
        return 0
    stop_all(procs, grace_s)
    _finish(relays)
    _say(err, f"error: {failure.who} {failure.what}; stopped the other ranks")
    return failure.code


def _watch(
    commands: Sequence[LaunchCommand],
    procs: Sequence[subprocess.Popen[bytes]],
    relays: Sequence[_Relay],
    reported: Callback,
    watcher: ExitWatcher,
    poll_s: float,
) -> Failure | None:
    while True:
        if reported.first is not None:
            return reported.first
        failed = watcher.first_failure()
        if failed is not None:
            index, code = failed
            # Let the relays drain: an agent's report names the rank better than our label.
            for relay in relays[2 * index : 2 * index + 2]:
                relay.join(timeout=2.0)
            if reported.first is not None:
                return reported.first
            what, exit_code = describe_status(code)
            who = commands[index].label or shlexname(commands[index].argv)
            return Failure(who, what, exit_code if exit_code > 0 else 1)
        if watcher.all_succeeded(len(procs)):
            return None
        time.sleep(poll_s)


def shlexname(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "command"


def _finish(relays: Sequence[_Relay]) -> None:
    for relay in relays:
        relay.join(timeout=5.0)


def _say(err: IO[bytes], message: str) -> None:
    try:
        err.write((message + "\n").encode())
        err.flush()
    except (OSError, ValueError):
        pass
