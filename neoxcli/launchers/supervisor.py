"""Run a launch plan's commands side by side and never let a job hang on a dead rank.

Distributed ranks block in collectives when a peer dies, so waiting for every
process to exit on its own can take as long as the collective timeout. The
supervisor watches every command and, when one fails (or a node agent reports
a failed rank in its output, as it does through pdsh), stops all of them at once
and says which rank on which host failed. Ranks it starts itself (the local
launcher's) beat into heartbeat files (``heartbeat``): one that stops beating
(frozen) or reports its main thread stuck ends the job just the same. Their
output goes to ``{run}/logs/rank-N.log`` (``rankio``); the console gets rank
0's progress, each distinct error once, and one line about the first failure
with the path to that rank's log. Ctrl-C (or SIGTERM) stops everything too,
except for neox training ranks: to them the first Ctrl-C, SIGTERM or SIGUSR1
is passed on as SIGUSR1 (which srun and mpirun forward to their tasks too; for
pdsh, which forwards nothing, a second pdsh command sends it to the node agents), so
each finishes its step, saves and exits with ``STOPPED_EXIT_CODE``; a second
Ctrl-C or SIGTERM stops everything at once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from neoxcli.launchers.heartbeat import HANG_EXIT_CODE, Watch
from neoxcli.launchers.node_agent import (
    STOP_GRACE_S,
    ExitWatcher,
    describe_status,
    die_with_parent,
    stop_all,
)
from neoxcli.launchers.plan import LaunchCommand
from neoxcli.launchers.rankio import WORKER_MODULE, Gate, RankLog, Relay, failure_hint, rank_log_path
from neoxcli.launchers.signals import GRACEFUL_SIGNALS

# Written by neoxcli.launchers.node_agent when a rank fails; found anywhere in a line, because
# pdsh and srun prefix lines with the host or task.
FAILURE_LINE = re.compile(
    r"neox: rank (?P<rank>\d+) on host (?P<host>\S+) "
    r"(?P<what>exited with code (?P<code>-?\d+)|was killed by signal (?P<signal>\w+)"
    r"|(?P<hang>stopped responding|made no progress) .*?)"
    r"(?: \(log: (?P<log>[^)]+)\))?$"
)


@dataclass
class Failure:
    """Who failed first, as precisely as the output or exit status tells."""

    who: str
    what: str
    code: int
    log: RankLog | Path | None = None


def failure_from_line(line: str) -> Failure | None:
    match = FAILURE_LINE.search(line.rstrip("\r\n"))
    if match is None:
        return None
    log = Path(match["log"]) if match["log"] else None
    who = f"rank {match['rank']} on host {match['host']}"
    if match["hang"] is not None:
        return Failure(who, match["what"], HANG_EXIT_CODE, log)
    if match["code"] is not None:
        code = int(match["code"])
        code = code if code > 0 else 1
    else:
        try:
            code = 128 + signal.Signals[match["signal"]].value
        except KeyError:
            code = 1
    return Failure(who, match["what"], code, log)


class Callback:
    """Keeps the first failure reported by any relay."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: Failure | None = None

    def __call__(self, failure: Failure) -> None:
        with self.lock:
            if self.first is None:
                self.first = failure

    def line(self, text: str) -> None:
        """A relayed line: keep it if it is a node agent's failure report."""
        failure = failure_from_line(text)
        if failure is not None:
            self(failure)


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
    label). Ctrl-C or SIGTERM stops every command and returns 130 or 143; for
    training ranks the first one asks them to save and stop instead, and the
    code is theirs (``STOPPED_EXIT_CODE`` when they did).
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    reported = Callback()
    gate = Gate()
    procs: list[subprocess.Popen[bytes]] = []
    relays: list[Relay] = []
    logs: dict[int, RankLog] = {}
    watcher = ExitWatcher()
    beats = Path(tempfile.mkdtemp(prefix="neox-heartbeat-"))
    watch = Watch(beats)
    previous: dict[int, object] = {}

    def interrupt(signum: int, _frame: object) -> None:
        raise _Interrupted(signum)

    asked: list[int] = []  # the graceful stop passed on to the ranks, if any

    def save_and_stop(signum: int, _frame: object) -> None:
        if asked:
            if signum == signal.SIGUSR1:
                return
            raise _Interrupted(signum)  # asked twice: stop now
        asked.append(signum)
        for command, proc in zip(commands, procs, strict=False):  # procs: those started so far
            if proc.poll() is not None:
                continue
            if command.stop_argv is not None:  # pdsh: ssh passes no signal on, so send it there
                pass_stop(command, err)
            else:
                proc.send_signal(signal.SIGUSR1)
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        _say(
            err,
            f"neox: {signal.Signals(signum).name}: every rank finishes its step, saves a checkpoint "
            f"and stops ({again} again stops at once)",
        )

    # Only neox's own training workers save on a signal; anything else is stopped as before.
    graceful = any(WORKER_MODULE in command.argv or command.stop_argv is not None for command in commands)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
        if graceful:
            for sig in GRACEFUL_SIGNALS:
                previous[sig] = signal.signal(sig, save_and_stop)
    try:
        for index, command in enumerate(commands):
            env = {**os.environ, **command.env}
            log_path = rank_log_path(command.argv, command.env.get("RANK", index))
            if log_path is not None:  # a rank we start ourselves: its log, its heartbeat
                logs[index] = RankLog(log_path, command.env.get("RANK", index))
                env.update(watch.env(index))
            proc = subprocess.Popen(
                command.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            procs.append(proc)
            watcher.watch(len(procs) - 1, proc)
            assert proc.stdout is not None and proc.stderr is not None
            log = logs.get(index)
            relays += [
                Relay(proc.stdout, out, log=log, gate=gate, on_line=reported.line),
                Relay(
                    proc.stderr, err, log=log, gate=gate, tagged_only=log is not None, on_line=reported.line
                ),
            ]
            relays[-2].start()
            relays[-1].start()
        failure = _watch(commands, procs, relays, reported, watcher, watch, logs, poll_s)
    except (KeyboardInterrupt, _Interrupted) as exc:
        signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
        stop_all(procs, grace_s)
        _finish(relays, logs, beats)
        _say(err, f"interrupted ({signal.Signals(signum).name}): stopped all ranks")
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    if failure is None:
        _finish(relays, logs, beats)
        return watcher.exit_code()
    stop_all(procs, grace_s)
    _finish(relays, logs, beats)
    # A rank that already printed its own error line gets no second one: the summary is a hint.
    kind = "hint" if gate.error_shown else "error"
    _say(err, f"{kind}: {failure.who} {failure.what}; stopped the other ranks")
    hint = failure_hint(failure.who.split(" on ")[0], failure.log)
    if hint is not None:
        _say(err, f"hint: {hint}")
    return failure.code


def _watch(
    commands: Sequence[LaunchCommand],
    procs: Sequence[subprocess.Popen[bytes]],
    relays: Sequence[Relay],
    reported: Callback,
    watcher: ExitWatcher,
    watch: Watch,
    logs: dict[int, RankLog],
    poll_s: float,
) -> Failure | None:
    def who(index: int) -> str:
        return commands[index].label or shlexname(commands[index].argv)

    while True:
        if reported.first is not None:
            return reported.first
        hang = watch.check(exclude=set(watcher.exits))
        if hang is not None:
            return Failure(who(hang.key), hang.what, HANG_EXIT_CODE, logs.get(hang.key))
        failed = watcher.first_failure()
        if failed is not None:
            index, code = failed
            # Let the relays drain: an agent's report names the rank better than our label.
            for relay in relays[2 * index : 2 * index + 2]:
                relay.join(timeout=2.0)
            if reported.first is not None:
                return reported.first
            # A peer gave up waiting for a rank that is frozen: name the frozen one.
            silent = watch.silent(exclude=set(watcher.exits))
            if silent is not None:
                return Failure(who(silent.key), silent.what, HANG_EXIT_CODE, logs.get(silent.key))
            what, exit_code = describe_status(code)
            return Failure(who(index), what, exit_code if exit_code > 0 else 1, logs.get(index))
        if watcher.all_succeeded(len(procs)):
            return None
        time.sleep(poll_s)


STOP_COMMAND_TIMEOUT_S = 60.0


def pass_stop(command: LaunchCommand, err: IO[bytes]) -> threading.Thread:
    """Run ``command.stop_argv`` in the background (the signal handler must not block) and say if it failed.

    Its own session keeps a Ctrl-C in the terminal from ending it halfway.
    """
    assert command.stop_argv is not None
    argv = command.stop_argv

    def run() -> None:
        try:
            done = subprocess.run(
                argv,
                env={**os.environ, **command.env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                start_new_session=True,
                timeout=STOP_COMMAND_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            _say(err, f"warning: could not pass the stop on to the ranks ({shlexname(argv)}: {exc})")
            return
        # pkill finds nothing on a host whose ranks already ended (exit 1): no news.
        if done.returncode not in (0, 1):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            _say(
                err,
                f"warning: passing the stop on to the ranks failed ({shlexname(argv)} exited with "
                f"{done.returncode}{': ' + tail[0] if tail else ''})",
            )

    thread = threading.Thread(target=run, name="neox-pass-stop", daemon=True)
    thread.start()
    return thread


def shlexname(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "command"


def _finish(relays: Sequence[Relay], logs: dict[int, RankLog], beats: Path) -> None:
    for relay in relays:
        relay.join(timeout=5.0)
    for log in logs.values():
        log.close()
    shutil.rmtree(beats, ignore_errors=True)


def _say(err: IO[bytes], message: str) -> None:
    try:
        err.write((message + "\n").encode())
        err.flush()
    except (OSError, ValueError):
        pass
