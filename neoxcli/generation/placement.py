"""Where ``neox generate`` samples: the device, the floating-point format and the tensor-parallel ranks.

Decided once, before any weights load, so a request the machine cannot serve
(fp16 on a CPU, say) is one error line and costs no loading time. ``auto``
dtype is the answer ``neox eval --dtype auto`` and ``precision: auto`` give
(``neoxcli.model.precision.auto_dtype``). The tensor-parallel default follows
the run's ``model_parallel_size`` on GPUs, where each rank holds a shard in its
own GPU's memory, but is 1 on the CPU: ranks there share the same cores and
memory, so splitting the model only adds collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neoxcli.errors import NeoxError

DTYPES = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class DtypeChoice:
    """The format the model samples in (``fp32``, ``bf16`` or ``fp16``) and why, as the start-up line says it."""

    name: str
    reason: str

    def line(self, device: str) -> str:
        return f"sampling in {self.name} on {device} ({self.reason})"


def inference_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the device every generate rank samples on."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(name: str, device: str) -> DtypeChoice:
    """What ``--dtype name`` means on ``device``; fp16 on a CPU (no fast kernels, easy overflow) is refused."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DTYPES:
        raise NeoxError(f"unknown --dtype {name!r}", hint=f"use one of {', '.join(DTYPES)}")
    kind = device.split(":")[0]
    if key == "fp16" and kind != "cuda":
        raise NeoxError(
            f"--dtype fp16 needs a GPU; this run samples on {kind}", hint="use bf16 or fp32 (or auto)"
        )
    if key != "auto":
        return DtypeChoice(key, f"--dtype {key}")
    import torch

    from neoxcli.model.precision import auto_dtype

    dtype, why = auto_dtype(kind)
    return DtypeChoice("bf16" if dtype == torch.bfloat16 else "fp32", f"auto: {why}")


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of a ``DtypeChoice.name``."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def visible_gpus() -> int:
    """How many CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_tensor_parallel(
    explicit: int | None, run_size: int, device: str, visible_gpus: int, one_process: str | None = None
) -> tuple[int, str | None]:
    """How many tensor-parallel ranks sample, and a note when that is not what the run used.

    ``explicit`` (``--tensor-parallel N``) always wins. Otherwise a CPU samples
    in one process, and GPUs use the run's ``model_parallel_size`` when that
    many are visible, else the largest divisor of it that fits (a divisor, so
    the heads and the padded vocabulary still split evenly). ``one_process``
    names an option that needs a single process (``--interactive``): the
    default then stays 1 rather than refusing the option.
    """
    if explicit is not None:
        return explicit, None
    if run_size <= 1:
        return 1, None
    if one_process is not None:
        return 1, (
            f"{one_process} runs in one process: sampling the merged model "
            f"(the run has model_parallel_size {run_size})"
        )
    if device.split(":")[0] != "cuda":
        return 1, (
            f"the run has model_parallel_size {run_size}; on the CPU one process samples the merged model "
            f"(its ranks would share the same cores; --tensor-parallel {run_size} shards it anyway)"
        )
    if run_size <= visible_gpus:
        return run_size, f"sampling on {run_size} tensor-parallel ranks, the run's model_parallel_size"
    fits = max(d for d in range(1, max(visible_gpus, 1) + 1) if run_size % d == 0)
    gpus = f"{visible_gpus} GPU{'s' if visible_gpus != 1 else ''} {'are' if visible_gpus != 1 else 'is'}"
    return fits, (
        f"the run has model_parallel_size {run_size} but only {gpus} visible; "
        f"sampling on {fits} tensor-parallel rank{'s' if fits != 1 else ''}"
    )


def run_model_parallel_size(checkpoint: str | Path, tag: str | None = None) -> int:
    """The ``model_parallel_size`` the checkpoint's run trained with (1 for a Hugging Face directory).

    Only the run's config is read, not its weights; a directory that is not a
    checkpoint raises the loader's own error, as loading it would.
    """
    from neoxcli.checkpoint import CONFIG_NAME, read_latest, resolve_checkpoint
    from neoxcli.config import load_config
    from neoxcli.convert.any_model import checkpoint_kind

    path = Path(checkpoint)
    kind = checkpoint_kind(path, tag)
    if kind == "hf":
        return 1
    if kind == "gpt-neox":
        from neoxcli.convert.neox_checkpoint import find_gpt_neox_configs

        step = path / (tag or read_latest(path) or "")
        configs = find_gpt_neox_configs(step) or find_gpt_neox_configs(path)
        if not configs:
            return 1  # the loader says what is missing
        return load_config(configs, warn=lambda _msg: None).parallel.model_parallel_size
    tag_dir = resolve_checkpoint(path, tag)
    return load_config([tag_dir / CONFIG_NAME]).parallel.model_parallel_size
