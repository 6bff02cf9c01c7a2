"""Processes the tests start: a small multi-process torch job, and moto's S3 server, on this machine.

One place for the rendezvous variables (gloo on loopback, CPU DeepSpeed, one thread a rank) so every
multi-process test runs its ranks the same way and reports a failing rank's log the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A scheduler's variables would make a worker think it is part of that allocation instead.
_SCHEDULER_PREFIXES = ("SLURM_", "OMPI_", "PMI", "JSM_")


def rank_env(ranks: int) -> dict[str, str]:
    """This process's environment, less any scheduler's, plus torch-style rendezvous on a free local port."""
    from neoxcli.parallel.distributed import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCHEDULER_PREFIXES)}
    env.update(
        WORLD_SIZE=str(ranks),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        DS_ACCELERATOR="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")])),
    )
    return env


def run_ranks(
    args: list[str], log_dir: Path, *, ranks: int = 2, label: str = "", timeout: float = 240
) -> None:
    """Run ``python ARGS`` as ``ranks`` processes and wait; a rank that fails fails the test with rank 0's log.

    Each rank writes to ``log_dir/{label}rank{r}.log`` (a file, not a pipe, so a chatty rank cannot block
    the others in a collective while the test reads a different one).
    """
    env = rank_env(ranks)
    procs, logs = [], []
    try:
        for r in range(ranks):
            log = open(log_dir / f"{label}rank{r}.log", "w")  # noqa: SIM115
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    if any(codes):
        tail = (log_dir / f"{label}rank0.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"{label or 'job'}: exit codes {codes}\n{tail}")


@contextmanager
def moto_server(log: Path, **env: str) -> Iterator[str]:
    """moto's S3-compatible server on a free local port, with ``env`` added to its environment; yields its URL.

    A real HTTP server in its own process, so the boto3 client, retries and multipart uploads are exercised
    exactly as against object storage.
    """
    from neoxcli.parallel.distributed import free_port

    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's server did not start: {log.read_text()}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
