"""Find out who we are in a job and bring up torch.distributed through DeepSpeed.

Every launcher names rank and world size differently (torchrun, Open MPI, PMI,
Slurm, IBM JSM). Workers read whichever is present, always use an explicit
master address and port (never one guessed from ``hostname -I``), and give
the rendezvous a short timeout so a missing peer fails fast instead of hanging.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from neoxcli.errors import NeoxError

# (rank, world size, local rank) variable names, in order of preference.
_RANK_SOURCES: tuple[tuple[str, str, str | None], ...] = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank, world size, local rank and rendezvous address from the launcher's variables."""
    env = os.environ if env is None else env
    rank, world, local = 0, 1, 0
    for rank_key, size_key, local_key in _RANK_SOURCES:
        if rank_key in env and size_key in env:
            try:
                rank, world = int(env[rank_key]), int(env[size_key])
                local = int(env[local_key]) if local_key and local_key in env else 0
            except ValueError as exc:
                raise NeoxError(f"launcher variable {rank_key}/{size_key} is not an integer: {exc}") from None
            break
    if world > 1 and not env.get("MASTER_ADDR"):
        raise NeoxError(
            "MASTER_ADDR is not set for a multi-process job",
            hint="neox launchers set it; when starting workers yourself, export MASTER_ADDR and MASTER_PORT",
        )
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env.get("MASTER_PORT", "0") or 0) or (free_port() if world == 1 else 29500),
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def quiet_deepspeed() -> None:
    """Pick DeepSpeed's accelerator explicitly and keep its INFO chatter off the user's screen."""
    import logging

    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed  # noqa: F401
    from deepspeed.utils import logger as ds_logger

    if os.environ.get("NEOX_DEBUG", "") in ("", "0"):
        ds_logger.setLevel(logging.WARNING)


def _skip_shm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (~40 s) at init.

    Training never uses it (it only serves an inference all-reduce path), so
    replace the builder on the real ``deepspeed.comm.torch`` module.
    """
    import importlib

    module = importlib.import_module("deepspeed.comm.torch")
    module.build_shm_op = lambda: None  # type: ignore[attr-defined]


# Defaults of ``distributed_timeout_minutes``: CPU steps are short, so a frozen peer should end a
# gloo job within minutes; NCCL keeps DeepSpeed's default (large GPU checkpoints save slowly).
GLOO_TIMEOUT_MINUTES = 5.0
NCCL_TIMEOUT_MINUTES = 30.0


def collective_timeout_s(minutes: float | None, nccl: bool | None = None) -> float:
    """Seconds from ``distributed_timeout_minutes``; unset means the backend's default above."""
    if minutes is None:
        if nccl is None:
            import torch

            nccl = torch.cuda.is_available()
        minutes = NCCL_TIMEOUT_MINUTES if nccl else GLOO_TIMEOUT_MINUTES
    return float(minutes) * 60.0


def init_distributed(dist: DistEnv, timeout_s: float = 120.0) -> str:
    """Initialise torch.distributed via DeepSpeed; return the backend used (gloo or nccl).

    ``timeout_s`` bounds the rendezvous and every collective of the default
    group; on NCCL, asynchronous error handling makes a timed-out collective
    end the process instead of leaving it blocked.
    """
    import torch

    quiet_deepspeed()
    import deepspeed

    if dist.world_size > 1:
        # torch's env:// rendezvous reads these. A one-rank job needs none (see below), and leaving
        # them out keeps an in-process run from passing RANK/WORLD_SIZE on to processes started later.
        os.environ.update(
            RANK=str(dist.rank),
            WORLD_SIZE=str(dist.world_size),
            LOCAL_RANK=str(dist.local_rank),
            MASTER_ADDR=dist.master_addr,
            MASTER_PORT=str(dist.master_port),
        )
    else:
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and dist.world_size == 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(dist.local_rank)
    _skip_shm_build()
    timeout = _dt.timedelta(seconds=timeout_s)
    if dist.world_size == 1 and not torch.distributed.is_initialized():
        # One rank needs no rendezvous: an in-memory store opens no port, so two runs on one
        # machine can never race for the same free port. DeepSpeed adopts the group below.
        torch.distributed.init_process_group(
            backend, store=torch.distributed.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    if not torch.distributed.is_initialized() or not _deepspeed_comm_ready():
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=timeout,
            verbose=False,
        )
    return backend


def _deepspeed_comm_ready() -> bool:
    from deepspeed import comm

    return comm.is_initialized()
