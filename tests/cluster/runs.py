"""Shared by the engine and launcher tiers: a tiny training config, rank hooks, process checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NEOX = [sys.executable, "-c", "import sys; from neoxcli.cli import main; sys.exit(main(sys.argv[1:]))"]

# Loaded by every Python process that has its directory on PYTHONPATH (launchers forward it to ranks).
# In a worker process it records where the rank runs and what it was given (NEOX_TEST_WHERE), and
# makes the rank named by NEOX_TEST_FAIL_RANK die with code 3 once NEOX_TEST_FAIL_AFTER exists.
# With NEOX_TEST_STOPS it records, per rank, the iteration a graceful stop came after and the exit code.
SITECUSTOMIZE = r"""
import json, os, socket, threading, time

def _is_worker():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    # The worker itself, not a node agent or launcher that merely names it in its argv.
    return args[1:3] == [b"-m", b"neoxcli.training.worker"]

if _is_worker():
    _rank = next((os.environ[k] for k in ("RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID") if k in os.environ), "?")
    _where = os.environ.get("NEOX_TEST_WHERE")
    if _where:
        _keep = [k for k in os.environ if k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "OMP_",
                 "OMPI_COMM_WORLD", "SLURM_PROCID", "SLURM_NTASKS", "JSM_", "TIER_", "GLOO_"))]
        _name = os.path.join(_where, f"{socket.gethostname()}-{os.getpid()}")
        with open(_name + ".tmp", "w") as _f:
            json.dump({"host": socket.gethostname(), "rank": _rank,
                       "env": {k: os.environ[k] for k in _keep}}, _f)
        os.replace(_name + ".tmp", _name + ".json")
    _stops = os.environ.get("NEOX_TEST_STOPS")
    if _stops:
        import sys
        from neoxcli.training import interrupt as _interrupt

        _record = {"rank": _rank, "host": socket.gethostname()}
        _init = _interrupt.Stopped.__init__

        def _stopped(self, signal_name, iteration, *args, **kwargs):
            _record.update(signal=signal_name, iteration=iteration)
            _init(self, signal_name, iteration, *args, **kwargs)

        _interrupt.Stopped.__init__ = _stopped
        _exit = sys.exit

        def _exit_recorded(code=None):
            with open(os.path.join(_stops, f"rank-{_rank}.json"), "w") as _f:
                json.dump({**_record, "exit": code}, _f)
            _exit(code)

        sys.exit = _exit_recorded
    _path = os.environ.get("NEOX_TEST_FAIL_AFTER")
    if _path and _rank == os.environ.get("NEOX_TEST_FAIL_RANK"):
        def _die():
            while not os.path.exists(_path):
                time.sleep(0.05)
            os._exit(3)
        threading.Thread(target=_die, daemon=True).start()
"""


def write_hooks(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory


def write_tiny_config(root: Path, save: Path, **extra: object) -> Path:
    """A 1-layer model on a small random char-level dataset under ``root``; returns the config file."""
    from neoxcli.data.indexed import IndexedDatasetWriter

    prefix = root / "data" / "tiny_text_document"
    if not (root / "data").exists():
        writer = IndexedDatasetWriter(prefix)
        rng = np.random.default_rng(0)
        for _ in range(64):
            writer.add_document(rng.integers(1, 200, 96).tolist())
        writer.close()
    settings: dict[str, object] = {
        "num_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "seq_length": 32,
        "max_position_embeddings": 32,
        "data_path": str(prefix),
        "tokenizer_type": "CharLevelTokenizer",
        "train_micro_batch_size_per_gpu": 2,
        "train_iters": 3,
        "log_interval": 1,
        "eval_interval": 1000,
        "eval_iters": 0,
        "sample_at_end": False,
        "save": str(save),
        **extra,
    }
    path = save.parent / f"{save.name}.json"
    path.write_text(json.dumps(settings))
    return path


def read_where(directory: Path) -> dict[str, dict]:
    """Worker records by rank (as the launcher numbered them)."""
    records = [json.loads(p.read_text()) for p in directory.glob("*.json")]
    return {r["rank"]: r for r in records}


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (to prove nothing was left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for_path(path: Path, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Poll until ``path`` exists, ``proc`` ends or ``timeout`` passes; whether it exists."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.exists()


def finish_timed(proc: subprocess.Popen, timeout: float) -> tuple[str, str, float]:
    """(stdout, stderr, seconds) of ``proc`` running to its end; it is killed if it outlives ``timeout``."""
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, time.monotonic() - started


def wait_gone(text: str, timeout: float = 20) -> list[int]:
    """Poll until no process mentions ``text`` (a rank may need its agent's SIGKILL grace); those left."""
    deadline = time.monotonic() + timeout
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_mentioning(text)
