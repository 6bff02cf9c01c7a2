"""Heartbeats between a rank and whoever started it, so a frozen or stuck rank ends the job instead of hanging it.

A collective blocks forever (or for the backend's timeout, 30 min by default
for DeepSpeed's groups) when one peer stops: killed ranks are seen by their
exit, but a rank that is frozen (``SIGSTOP``, a hung NFS read, a wedged
driver) or whose main thread is stuck never exits. So:

* The process that starts ranks (the supervisor for local ranks, the node
  agent on every other host) gives each rank a heartbeat file on its own host
  (``NEOX_HEARTBEAT_FILE``, on local disk: no shared filesystem involved).
* The rank (``start``, called by the worker) rewrites that file from a daemon
  thread every ``interval_s``, with what the main thread is doing (``progress``,
  called by the training loop at each step) and for how long it has made no
  progress. The thread also notices a main thread stuck for longer than the
  timeout, says so in the rank's log once with its stack, and flags it.
* The starter (``Watch``) reads the files from outside: a rank whose file is
  older than the timeout cannot run at all (a stopped process runs none of its
  threads) and is named as frozen; a rank flagged stuck is named once the flag
  has stood a few beats, unless a frozen peer explains it.

The timeout is the config's ``distributed_timeout_minutes`` (the collective
timeout), carried in the file itself, so starters need no configuration.
Standard library only: the node agent imports it before any rank starts.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_FILE_ENV = "NEOX_HEARTBEAT_FILE"
# Exit code of a job ended because a rank stopped responding, as `timeout` uses.
HANG_EXIT_CODE = 124


def interval_for(timeout_s: float) -> float:
    """Seconds between beats: often enough that a few missed ones are well inside the timeout."""
    return max(0.2, min(2.0, timeout_s / 10))


# --- the rank's side ---------------------------------------------------------------------------


class _Progress:
    """What the main thread last said it was doing, and when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase = "start-up"
        self.step = -1
        self.since = time.monotonic()
        self.watched = False
        # Wakes the heartbeat thread, so the file names the current phase, not one a beat old.
        self.changed = threading.Event()

    def set(self, phase: str, step: int | None, watched: bool) -> None:
        with self.lock:
            self.phase, self.since, self.watched = phase, time.monotonic(), watched
            if step is not None:
                self.step = step
        self.changed.set()

    def get(self) -> tuple[str, int, float, bool]:
        with self.lock:
            return self.phase, self.step, time.monotonic() - self.since, self.watched


_progress = _Progress()


def progress(phase: str, step: int | None = None, *, watched: bool = True) -> None:
    """The main thread starts ``phase`` ("step 12"); ``watched``: being in it longer than the timeout is a hang.

    Cheap (a lock and three assignments), and harmless when no heartbeat runs.
    Phases that may legitimately take long without collectives (start-up,
    the end-of-run sample) pass ``watched=False``.
    """
    _progress.set(phase, step, watched)


class Heartbeat(threading.Thread):
    """Rewrites the heartbeat file every ``interval_s`` until ``stop``; flags a main thread stuck past the timeout."""

    def __init__(self, path: Path, rank: int, timeout_s: float) -> None:
        super().__init__(name="neox-heartbeat", daemon=True)
        self.path, self.rank, self.timeout_s = path, rank, timeout_s
        self.interval_s = interval_for(timeout_s)
        self.host = socket.gethostname()
        self._stop_event = threading.Event()
        self._told = False

    def beat(self) -> None:
        phase, step, stalled, watched = _progress.get()
        stuck = watched and stalled > self.timeout_s
        if stuck and not self._told:
            self._told = True
            print(
                f"neox: rank {self.rank} made no progress during {phase} for {stalled:.0f} s; "
                "where each thread is:",
                file=sys.stderr,
                flush=True,
            )
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        record = {
            "rank": self.rank,
            "host": self.host,
            "pid": os.getpid(),
            "phase": phase,
            "step": step,
            "timeout_s": self.timeout_s,
            "interval_s": self.interval_s,
            "stuck_s": stalled if stuck else 0.0,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # the starter's directory went away: it is ending the job anyway

    def run(self) -> None:
        last = time.monotonic()  # start() wrote the first beat
        while not self._stop_event.is_set():
            _progress.changed.wait(max(self.interval_s - (time.monotonic() - last), 0.0))
            _progress.changed.clear()
            # A change is written at once, but at most a few times a second however fast steps go.
            gap = min(0.25, self.interval_s) - (time.monotonic() - last)
            if gap > 0 and self._stop_event.wait(gap):
                break
            self.beat()
            last = time.monotonic()

    def stop(self) -> None:
        """Stop beating and remove the file: a rank that finished is not a frozen one."""
        self._stop_event.set()
        _progress.changed.set()
        self.join(timeout=5)
        self.path.unlink(missing_ok=True)


def start(rank: int, timeout_s: float, env: Mapping[str, str] | None = None) -> Heartbeat | None:
    """Start beating into ``$NEOX_HEARTBEAT_FILE``; None when the rank was started by something else."""
    env = os.environ if env is None else env
    target = env.get(HEARTBEAT_FILE_ENV)
    if not target:
        return None
    heartbeat = Heartbeat(Path(target), rank, timeout_s)
    heartbeat.beat()  # the file exists before the thread's first wait
    heartbeat.start()
    return heartbeat


# --- the starter's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Beat:
    """One rank's last heartbeat, as the starter reads it."""

    key: int
    rank: int
    phase: str
    step: int
    timeout_s: float
    interval_s: float
    stuck_s: float
    age_s: float

    @property
    def silent(self) -> bool:
        """Several beats missed: the process is not running (stopped, or frozen in the kernel)."""
        return self.age_s > 3 * self.interval_s + 2.0


@dataclass(frozen=True)
class Hang:
    """The rank to blame for a hang, and what to say about it."""

    key: int
    what: str


class Watch:
    """The heartbeat files of the ranks one starter runs, keyed by the starter's own index for each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stuck_since: dict[int, float] = {}

    def path(self, key: int) -> Path:
        return self.directory / f"{key}.json"

    def env(self, key: int) -> dict[str, str]:
        """What to add to the environment of the rank started as ``key``."""
        return {HEARTBEAT_FILE_ENV: str(self.path(key))}

    def beats(self, exclude: set[int] | frozenset[int] = frozenset()) -> list[Beat]:
        now = time.time()
        found = []
        for path in self.directory.glob("*.json"):
            if not path.stem.isdigit() or int(path.stem) in exclude:
                continue
            key = int(path.stem)
            try:
                age = now - path.stat().st_mtime
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.append(
                Beat(
                    key,
                    int(data.get("rank", key)),
                    str(data.get("phase", "?")),
                    int(data.get("step", -1)),
                    float(data.get("timeout_s", 300.0)),
                    float(data.get("interval_s", 2.0)),
                    float(data.get("stuck_s", 0.0)),
                    max(age, 0.0),
                )
            )
        return found

    def check(self, exclude: set[int] | frozenset[int] = frozenset()) -> Hang | None:
        """A rank to end the job for, or None; ``exclude`` the ranks that already exited."""
        beats = self.beats(exclude)
        frozen = [b for b in beats if b.age_s > b.timeout_s]
        if frozen:
            return self._frozen(max(frozen, key=lambda b: b.age_s))
        now = time.monotonic()
        stuck = [b for b in beats if b.stuck_s > 0]
        for b in stuck:
            self._stuck_since.setdefault(b.key, now)
        for key in set(self._stuck_since) - {b.key for b in stuck}:
            del self._stuck_since[key]
        # A peer frozen just before this rank got stuck waiting for it is the one to name: give it
        # a few beats to show as silent.
        ripe = [b for b in stuck if now - self._stuck_since[b.key] >= 3 * b.interval_s + 2.0]
        if not ripe:
            return None
        blamed = self.silent(exclude)
        if blamed is not None:
            return blamed
        first = min(ripe, key=lambda b: (b.step, -b.stuck_s))
        return Hang(first.key, f"made no progress during {first.phase} for {first.stuck_s:.0f} s")

    def silent(self, exclude: set[int] | frozenset[int] = frozenset()) -> Hang | None:
        """The longest-silent rank still expected to beat, if any: the likely cause when a peer fails."""
        quiet = [b for b in self.beats(exclude) if b.silent]
        return self._frozen(max(quiet, key=lambda b: b.age_s)) if quiet else None

    @staticmethod
    def _frozen(beat: Beat) -> Hang:
        return Hang(beat.key, f"stopped responding during {beat.phase} (no heartbeat for {beat.age_s:.0f} s)")
