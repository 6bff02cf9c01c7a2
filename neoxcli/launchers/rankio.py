"""Where a rank's output goes: all of it to ``{run}/logs/rank-N.log``, little of it to the console.

When one rank dies, every peer fails moments later with a long backend
traceback (gloo's is ~50 lines); interleaved on the console they bury the one
line that matters. So whoever starts a worker process directly (the
supervisor for local ranks, the node agent elsewhere) writes its stdout and
stderr to its own log under the run directory, copies stdout (rank 0's
progress) to the console, and of stderr only ``error:``/``hint:`` lines, each
distinct one once: a configuration error every rank raises is printed once.
Standard library only.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

WORKER_MODULE = "neoxcli.training.worker"
LOG_DIR_NAME = "logs"

# ``error: [rank 3] ...`` (the worker) or ``node02: error: ...`` (pdsh's prefix): the same message.
_TAGGED = re.compile(rb"^(?:[\w.:-]+: )?(?P<kind>error|hint): (?:\[rank \d+\] )?(?P<text>.*)$", re.DOTALL)


def rank_log_path(argv: Sequence[str], rank: str | int) -> Path | None:
    """``{run}/logs/rank-N.log`` when ``argv`` is the worker itself (its run config lives in the run directory).

    Only ``PYTHON -m neoxcli.training.worker ... --config PATH``: a launcher
    (mpirun, srun) whose argv merely ends with the worker is not a rank.
    """
    words = list(argv)
    if words[1:3] != ["-m", WORKER_MODULE] or "--config" not in words[3:]:
        return None
    at = words.index("--config", 3)
    if at + 1 >= len(words):
        return None
    return Path(words[at + 1]).parent / LOG_DIR_NAME / f"rank-{rank}.log"


class Gate:
    """Lets each distinct ``error:``/``hint:`` message through once, whichever rank (or host) says it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[tuple[bytes, bytes]] = set()
        self.error_shown = False

    def tagged(self, line: bytes) -> bool:
        return _TAGGED.match(line.rstrip(b"\r\n")) is not None

    def admit(self, line: bytes) -> bool:
        """Whether to print ``line``: untagged lines always; a tagged message the first time only."""
        match = _TAGGED.match(line.rstrip(b"\r\n"))
        if match is None:
            return True
        key = (match["kind"], match["text"])
        with self.lock:
            if key in self.seen:
                return False
            self.seen.add(key)
            if match["kind"] == b"error" and b"error: [rank " in line:
                self.error_shown = True  # a rank's own error, not srun's "srun: error: task 1 exited"
            return True


class RankLog:
    """One rank's log file, shared by the relays of its stdout and stderr (whole lines, never interleaved)."""

    def __init__(self, path: Path, rank: str | int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.lock = threading.Lock()
        self.last = b""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write(f"--- neox: rank {rank} started {stamp} ---\n".encode())

    def write(self, raw: bytes) -> None:
        with self.lock:
            try:
                self.file.write(raw)
                self.file.flush()
            except (OSError, ValueError):
                pass
            if raw.strip():
                self.last = raw.strip()

    def last_line(self) -> str:
        return self.last.decode("utf-8", "replace")

    def close(self) -> None:
        with self.lock:
            self.file.close()


class Relay(threading.Thread):
    """Copies one child stream line by line: to its log, to the console where allowed, and to ``on_line``."""

    def __init__(
        self,
        src: IO[bytes],
        console: IO[bytes],
        *,
        log: RankLog | None = None,
        gate: Gate | None = None,
        tagged_only: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.src, self.console, self.log, self.gate = src, console, log, gate
        self.tagged_only, self.on_line = tagged_only, on_line

    def run(self) -> None:
        for raw in iter(self.src.readline, b""):
            if self.log is not None:
                self.log.write(raw)
            show = not self.tagged_only or (self.gate is not None and self.gate.tagged(raw))
            if show and (self.gate is None or self.gate.admit(raw)):
                try:
                    self.console.write(raw)
                    self.console.flush()
                except (OSError, ValueError):
                    pass
            if self.on_line is not None:
                self.on_line(raw.decode("utf-8", "replace"))
        self.src.close()


def failure_hint(who_rank: str, log: RankLog | Path | None) -> str | None:
    """``hint:`` text pointing at the failed rank's log and its last line."""
    if log is None:
        return None
    if isinstance(log, RankLog):
        last = log.last_line()
        path = log.path
    else:
        path, last = log, ""
    text = f"{who_rank}'s output is in {path}"
    if last and not last.startswith("---"):
        text += f"; its last line: {last[:300]}"
    return text
