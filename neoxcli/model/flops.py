"""Model FLOPs per token and the accelerator peak they are measured against: the one MFU accounting.

The training log, ``metrics.jsonl`` and the benchmarks all call these
functions, so an MFU printed anywhere in neox means the same thing.

Counting (Megatron-LM's formula with the vocabulary head, as in Narayanan et
al. 2021, which equals PaLM's ``6N + 12·L·H·Q·T`` when N counts the head):
a token costs 2 FLOPs per weight of every matrix it is multiplied by in the
forward pass and twice that in the backward pass, so ``6 · N_matmul``, where
``N_matmul`` is the weights of the QKV, attention output and MLP matrices of
every block plus the output head (tied or not: it is a matmul either way).
Embedding lookups, biases, norms and activations are not counted. Attention
adds ``12 · L · H · Q · T`` (QKᵀ and AV: 2·2·H·Q·T forward per layer, ×3 for
training) with T the sequence length, not halved for the causal mask (as
Megatron and PaLM count it); a local-attention layer uses its window if that
is shorter. Activation recomputation is not counted: that is *model* FLOPs
utilisation, not hardware FLOPs.

This module imports torch only to find or measure a peak.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from neoxcli.config.derived import mlp_width
from neoxcli.config.schema import ModelConfig

#: Dense (no sparsity) peak TFLOP/s per device by precision, from the vendors' data sheets.
#: First matching pattern wins, so the more specific names come first. fp32 is the non-tensor-core
#: rate (PyTorch does not use TF32 for matmuls unless asked).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"GH200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"H200.*NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"H100.*PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    (r"H100.*NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (r"H100|H800", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    (r"B200", {"bf16": 2250.0, "fp16": 2250.0}),
    (r"A100|A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"A10\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    (r"L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    (r"L4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    (r"V100", {"fp16": 125.0, "fp32": 15.7}),
    (r"T4\b", {"fp16": 65.0, "fp32": 8.1}),
    (r"MI300X", {"bf16": 1307.0, "fp16": 1307.0, "fp32": 163.4}),
    (r"MI250X?", {"bf16": 383.0, "fp16": 383.0, "fp32": 47.9}),
]


def matmul_params(model: ModelConfig, vocab_size: int) -> int:
    """Weights a token is multiplied by in one forward pass: every block's matrices and the output head.

    ``vocab_size`` is the padded vocabulary (the head's rows).
    """
    d, hd = model.hidden_size, model.head_dim
    q, kv = model.num_attention_heads, model.kv_heads
    attention = d * (q + 2 * kv) * hd + q * hd * d
    width = mlp_width(model)
    gated = model.mlp_activation in ("swiglu", "geglu")
    mlp = d * width * (3 if gated else 2)
    return model.num_layers * (attention + mlp) + vocab_size * d


def attention_flops_per_token(model: ModelConfig, seq_length: int | None = None) -> int:
    """Training FLOPs of QKᵀ and AV for one token: ``12 · H · Q · T`` per layer (window for local layers)."""
    t = seq_length or model.seq_length
    heads_dim = model.num_attention_heads * model.head_dim
    total = 0
    for kind in model.attention_types:
        span = min(t, model.sliding_window_width) if kind == "local" and model.sliding_window_width else t
        total += 12 * heads_dim * span
    return total


def flops_per_token(model: ModelConfig, vocab_size: int, seq_length: int | None = None) -> int:
    """Model FLOPs of training on one token (forward + backward), counted as the module docstring says.

    ``seq_length`` is the length of the step's sequences (a sequence-length
    curriculum trains shorter ones); it defaults to the model's.
    """
    return 6 * matmul_params(model, vocab_size) + attention_flops_per_token(model, seq_length)


@dataclass(frozen=True)
class Peak:
    """One device's peak rate for a precision, and where the number came from (shown to the user)."""

    flops_per_s: float
    source: str


def table_peak(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a named accelerator (``torch.cuda.get_device_name``) in ``precision``."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            tflops = peaks.get(precision)
            return tflops * 1e12 if tflops is not None else None
    return None


_BEST: dict[tuple[str, int], float] = {}


def measured_matmul_flops(dtype_name: str = "float32", *, again: bool = False) -> float:
    """FLOP/s of a square matmul on this CPU in ``dtype_name`` with torch's threads: the best seen in this process.

    Timed on the first call and cached; ``again`` times it once more and keeps
    the better rate (for when a step ran faster than the cached peak, which
    means the CPU was busy with other work when it was first timed).
    """
    import torch

    key = (dtype_name, torch.get_num_threads())
    if again or key not in _BEST:
        _BEST[key] = max(_BEST.get(key, 0.0), _time_matmul(dtype_name))
    return _BEST[key]


def _time_matmul(dtype_name: str, budget_s: float = 2.0) -> float:
    """Best FLOP/s of square products, sizes 256 to at least 512, and up to 2048 while the next fits the budget.

    A slow dtype (bf16 without AMX) stays small; the best of three timed runs
    at any size counts, so one descheduled product does not set the rate.
    """
    import torch

    from neoxcli.kernels.gemm import training_matmul

    dtype = getattr(torch, dtype_name)
    # A generator of its own: the timing (re-run whenever a step beats the cached peak) must not
    # move the global RNG a training run's dropout and sampling draw from.
    gen = torch.Generator().manual_seed(0)
    n, rate, spent = 256, 0.0, 0.0
    while True:
        a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
        best = float("inf")
        for i in range(4):  # the first is a warm-up
            t0 = time.perf_counter()
            training_matmul(a, b)
            took = time.perf_counter() - t0
            spent += took
            if i:
                best = min(best, took)
        rate = max(rate, 2.0 * n**3 / best)
        # the next size costs ~8x per product, four products
        if n >= 2048 or (n >= 512 and spent + 32 * best > budget_s):
            return rate
        n *= 2


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def device_peak(device: Any, precision: str) -> Peak | None:
    """The peak of one ``device`` (a torch device or its name) in ``precision`` ("fp32", "bf16", "fp16").

    GPUs come from ``PEAK_TFLOPS`` by name (None when the name is not in it);
    a CPU's peak is its measured matmul rate in that precision.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        threads = torch.get_num_threads()
        rate = measured_matmul_flops(DTYPE_NAMES.get(precision, "float32"))
        return Peak(
            rate, f"measured {precision} matmul on this CPU ({threads} thread{'s' if threads > 1 else ''})"
        )
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    rate = table_peak(name, precision)
    if rate is None:
        return None
    return Peak(rate, f"{name} dense {precision} peak")


def mfu(flops_per_s: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilisation as a fraction (0.41 = 41%), None without a known peak."""
    if not peak_flops_per_s or peak_flops_per_s <= 0:
        return None
    return flops_per_s / peak_flops_per_s
