"""Which floating-point format a device runs fastest: what ``precision: auto`` (and ``--dtype auto``) picks.

GPUs: bf16 wherever CUDA says the device supports it. CPUs differ far more: on
Intel Xeons with AMX tiles a bf16 train step runs 2-4x faster than fp32; on AMD
Zen 4 (AVX512-BF16, no AMX) a d=512 step took ~1.5x less CPU time in bf16 but a
quickstart-sized one gained nothing; on AVX2-only CPUs bf16 is 50x slower. So a
CPU gets bf16 only when it has AMX *and* a short timed matmul (fp32 against
bf16, once per process) confirms bf16 is faster here; everything else stays
fp32. ``NEOX_CPU_BF16=1`` / ``=0`` overrides the CPU answer for people (and
tests) who know better than the probe.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

# bf16 must beat fp32 by this much in the probe: AMX gives 5x and more, so a
# marginal win means the tiles are not really there (a VM hiding them, say).
_MIN_SPEEDUP = 1.5
ENV_OVERRIDE = "NEOX_CPU_BF16"


@dataclass(frozen=True)
class Bf16Verdict:
    """Whether bf16 is the fast format on a device, and the reason, as the start-up banner prints it."""

    fast: bool
    reason: str


def matmul_seconds(dtype: Any, n: int, reps: int) -> float:
    """The best of ``reps`` timings of one ``n``-square matmul in ``dtype`` on the CPU, after a warm-up."""
    import torch

    from neoxcli.kernels.gemm import training_matmul

    gen = torch.Generator().manual_seed(0)  # leaves the global RNG where a run's seed put it
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    for _ in range(2):  # the first calls build oneDNN's kernels
        training_matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        training_matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=1)
def probe_cpu_bf16_speedup(n: int = 512, reps: int = 5) -> float:
    """How many times faster an ``n``-square bf16 matmul is than fp32 on this CPU (measured once, ~10 ms)."""
    import torch

    return matmul_seconds(torch.float32, n, reps) / matmul_seconds(torch.bfloat16, n, reps)


def cpu_has_amx() -> bool:
    """AMX tiles (Intel Sapphire Rapids and later), through torch's private check when it exists."""
    import torch

    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # a private API: any failure means "not known to be there"
        return False


def cpu_bf16(env: dict[str, str] | None = None) -> Bf16Verdict:
    """The CPU's verdict: bf16 with AMX and a probe that confirms it, fp32 otherwise."""
    forced = (os.environ if env is None else env).get(ENV_OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return Bf16Verdict(forced == "1", f"{ENV_OVERRIDE}={forced}")
    if not cpu_has_amx():
        return Bf16Verdict(False, f"no AMX on this CPU ({ENV_OVERRIDE}=1 forces bf16)")
    speedup = probe_cpu_bf16_speedup()
    if speedup < _MIN_SPEEDUP:
        return Bf16Verdict(False, f"AMX present but bf16 matmul only {speedup:.1f}x fp32 here")
    return Bf16Verdict(True, f"AMX: bf16 matmul {speedup:.1f}x fp32 on this CPU")


def bf16_verdict(device: Any) -> Bf16Verdict:
    """Whether ``device`` (a ``torch.device`` or its name) runs bf16 faster than fp32."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Bf16Verdict(True, f"{torch.cuda.get_device_name(dev)} supports bf16")
        return Bf16Verdict(False, "this GPU has no bf16")
    if dev.type == "cpu":
        return cpu_bf16()
    return Bf16Verdict(False, f"{dev.type} devices run fp32 unless told otherwise")


def auto_dtype(device: Any) -> tuple[Any, str]:
    """The inference dtype ``auto`` means on ``device`` (bf16 or fp32), and why."""
    import torch

    verdict = bf16_verdict(device)
    return (torch.bfloat16 if verdict.fast else torch.float32), verdict.reason
