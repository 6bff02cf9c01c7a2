"""Graceful stops: which signals ask a run to save and stop, and the exit code that says it did.

SIGTERM (what ``kill``, Kubernetes and Slurm's time limit send), SIGUSR1 (what
Slurm sends ahead of the limit with ``#SBATCH --signal=B:USR1@SECONDS``) and the
first Ctrl-C ask every rank to finish its step, save a checkpoint and exit with
``STOPPED_EXIT_CODE``; the supervisors pass them on to the ranks instead of
killing them. A second Ctrl-C (or SIGTERM) stops at once.
"""

from __future__ import annotations

import signal

# sysexits' EX_TEMPFAIL: "a temporary failure, the user is invited to retry", here by resuming.
STOPPED_EXIT_CODE = 75

GRACEFUL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
