"""Stop a run cleanly on SIGTERM, SIGUSR1 or the first Ctrl-C: finish the step, save, say how to resume.

``StopRequest`` notes the first such signal (a second Ctrl-C or SIGTERM stops
at once) and ``agreed`` tells the training loop after every step whether any
rank got one: a one-element all-reduce, so every rank stops after the same
step and their checkpoint shards belong together. The loop then saves and
raises ``Stopped``, whose exit code (``STOPPED_EXIT_CODE``, 75) tells a
scheduler or a wrapper script that the run stopped on request and resumes
from its ``latest`` checkpoint with the same command.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from neoxcli.launchers.signals import GRACEFUL_SIGNALS, STOPPED_EXIT_CODE


class Stopped(Exception):
    """The run saved and stopped because a signal asked it to."""

    exit_code = STOPPED_EXIT_CODE

    def __init__(self, signal_name: str, iteration: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by {signal_name} after iteration {iteration}")
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint


class StopRequest:
    """Signal handlers for one run, installed by ``install`` and put back by ``restore``."""

    def __init__(self, announce: bool = True) -> None:
        self.requested: str | None = None  # the name of the first signal received
        self.saved = False  # the stop's checkpoint is complete: nothing is left to stop "at once"
        self.announce = announce  # rank 0 says what happens; the other ranks stay quiet
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for sig in GRACEFUL_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            if sig == signal.SIGUSR1 and self.requested is not None:
                # A repeat of the warning (a scheduler, or a node agent reached twice) may still
                # arrive while the stopped run exits; its default action would turn exit 75 into a kill.
                handler = signal.SIG_IGN
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            if signum == signal.SIGUSR1:
                return  # a repeated warning from the scheduler: the save is already on its way
            if self.saved and signum == signal.SIGTERM:
                # Saved and on the way out: Slurm ends a step with SIGTERM once a peer has exited
                # 75 (non-zero to it); a kill now would only turn this run's exit 75 into 143.
                return
            raise KeyboardInterrupt(f"second {name}")  # the user insists: stop now, unsaved
        self.requested = name
        if self.announce:
            again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            print(
                f"\n{name}: finishing this step, then saving a checkpoint and stopping ({again} again stops at once)",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self, world_size: int, device: Any) -> bool:
        """Whether any rank was asked to stop: every rank calls this after the same step."""
        if world_size == 1:
            return self.requested is not None
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0.0 if self.requested is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.requested is None:
            self.requested = "a signal to another rank"
        return bool(flag.item() > 0)


def stopped_message(stop: Stopped, config_sources: list[str] | None) -> str:
    """Where the checkpoint is and the command that resumes from it."""
    command = "neox train " + " ".join(config_sources) if config_sources else "the same neox train command"
    if stop.checkpoint is None:
        return (
            f"stopped by {stop.signal_name} after iteration {stop.iteration}; nothing was saved "
            "(no `save` directory is set)"
        )
    return (
        f"stopped by {stop.signal_name} after iteration {stop.iteration}: checkpoint {stop.checkpoint}; "
        f"resume with `{command}` (it continues from `latest`; exit code {STOPPED_EXIT_CODE})"
    )
