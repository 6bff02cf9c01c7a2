"""Every linear layer of the model: ``x @ weight^T + bias``, with the GEMM library chosen here.

Two reasons this is not just ``F.linear``:

* **oneDNN on CPUs where MKL is slow.** PyTorch's x86 builds run fp32 GEMMs through
  MKL, which takes its generic code path on non-Intel CPUs (``MKL_VERBOSE`` names no
  AVX-512 there) while oneDNN, also linked into PyTorch, picks its AVX-512 kernels on
  any vendor. Measured on a 2-core AMD EPYC at the shapes of a d=512 model
  (``bench/gemm_cpu.py``, two runs): oneDNN's forward GEMMs ran 1.25-1.38x and the
  input-gradient GEMMs 1.13-1.31x as fast as MKL's, while MKL kept up or stayed ahead
  on the weight-gradient GEMMs (0.89-1.00x: a long reduction over tokens). So a training step on such a
  CPU runs forward and input gradient through oneDNN and keeps MKL for the weight
  gradient. The results differ from MKL's in the last bits (relative 1e-6), so this
  path is used only when a backward pass follows (grad mode on, fp32, no autocast,
  not under ``torch.compile``); evaluation and generation keep PyTorch's own op and
  with it bit-for-bit parity with Hugging Face. ``NEOX_CPU_GEMM=blas`` turns it off,
  ``NEOX_CPU_GEMM=onednn`` turns it on for any CPU.
* **DeepSpeed's ZeRO-3 swaps ``torch.nn.functional.linear`` for the process** (its
  memory-efficient linear, "until manually reset"), and on torch 2.11 a compiled
  block calling that autograd function gets zero weight gradients. Compiled blocks
  therefore call the ATen op itself; eager code keeps the swapped function, which
  ZeRO-3 relies on to free gathered weights between forward and backward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_ATEN_LINEAR = torch._C._nn.linear  # what F.linear is until something replaces it
CPU_GEMM_CHOICES = ("auto", "onednn", "blas")
_CHOICE: dict[str, bool] = {}


def _cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_gemm_available() -> bool:
    """Whether this PyTorch build has oneDNN's fp32 linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_prefers_onednn() -> bool:
    """Whether fp32 training GEMMs on this CPU go to oneDNN (``NEOX_CPU_GEMM``, else: not an Intel CPU
    and PyTorch's BLAS is MKL). Decided once per process, so a run never mixes the two."""
    if "onednn" not in _CHOICE:
        choice = os.environ.get("NEOX_CPU_GEMM", "auto").strip().lower() or "auto"
        if choice not in CPU_GEMM_CHOICES:
            raise ValueError(f"NEOX_CPU_GEMM={choice!r}: expected one of {', '.join(CPU_GEMM_CHOICES)}")
        if choice == "auto":
            use = torch.backends.mkl.is_available() and _cpu_vendor() not in ("", "GenuineIntel")
        else:
            use = choice == "onednn"
        _CHOICE["onednn"] = use and onednn_gemm_available()
    return _CHOICE["onednn"]


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight^T + bias`` by oneDNN, for a 2-D ``x`` (``weight`` may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def training_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D CPU tensors by the library fp32 training GEMMs use here: what a CPU's
    peak for MFU is timed with."""
    if a.dtype == torch.float32 and b.dtype == torch.float32 and cpu_prefers_onednn():
        return _onednn(a, b.t(), None)
    return a @ b


class _OneDNNLinear(torch.autograd.Function):
    """Forward and input gradient by oneDNN, weight gradient by PyTorch's BLAS (faster there)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        ctx.save_for_backward(flat, weight)
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return _onednn(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        flat, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        if not g.is_contiguous():
            g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _onednn(g, weight.t(), None).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(flat)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def uses_onednn(x: Tensor, weight: Tensor, backend: str = "auto") -> bool:
    """Whether ``linear`` sends this call to oneDNN (see the module doc for when)."""
    return (
        backend == "auto"
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and F.linear is _ATEN_LINEAR
        and cpu_prefers_onednn()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """``x @ weight^T + bias`` (``F.linear``'s semantics); ``backend`` is the model's ``kernels`` setting."""
    if torch.compiler.is_compiling():
        return _ATEN_LINEAR(x, weight, bias)
    if uses_onednn(x, weight, backend):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose forward is ``linear``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, kernels: str = "auto"
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.kernels = kernels

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, backend=self.kernels)
