"""Which implementation a kernel call runs: the model's ``kernels`` setting, resolved per device.

``torch``: exact PyTorch everywhere. ``liger``: liger-kernel's Triton kernels
where liger computes exactly our op, ours elsewhere. ``triton``: our own Triton
kernels. ``auto``: ``liger`` on CUDA when liger-kernel is installed, else
``triton`` on CUDA when Triton is, else ``torch``. Triton kernels need a GPU,
so on CPU every setting runs PyTorch, except an explicit ``liger`` or
``triton`` under ``TRITON_INTERPRET=1`` (Triton's interpreter, which the tests
use to run the kernels on CPU; ``auto`` stays on PyTorch there).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "liger", "triton")


_FOUND: dict[str, bool] = {}


def has_module(name: str) -> bool:
    """Whether ``name`` is importable, looked up once (a plain dict, not ``functools.cache``, which
    ``torch.compile`` warns about when a compiled block calls it)."""
    if name not in _FOUND:
        _FOUND[name] = importlib.util.find_spec(name) is not None
    return _FOUND[name]


def triton_interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, device: torch.device) -> str:
    """``torch``, ``liger`` or ``triton``: what ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernels backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torch" or not has_module("triton"):
        return "torch"
    if device.type != "cuda" and (backend == "auto" or not triton_interpreted()):
        return "torch"
    if backend == "auto":
        return "liger" if has_module("liger_kernel") else "triton"
    if backend == "liger" and not has_module("liger_kernel"):
        return "triton"
    return backend
