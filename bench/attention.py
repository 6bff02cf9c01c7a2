"""ALiBi and local attention: the flex path against the dense-bias path, time and peak memory.

Both paths are ``neoxcli.kernels.attn``'s own: ``causal_attention(backend="torch")``
builds the dense ``[H, T, T]`` ALiBi bias or band mask and runs SDPA on it;
``flex_causal_attention`` applies the same slopes and band inside a compiled
flex kernel. Each case runs both, alternately, in one process, checks that
their outputs agree, and prints the median time, the peak memory each call
adds, and the ratios (dense / flex: above 1 means flex wins).

On CPU only the forward is timed (flex attention has no CPU backward; this is
the evaluation path); on a GPU forward + backward (training) and forward alone.

    python bench/attention.py                          # CPU: 2 heads, T = 2048 and 8192
    python bench/attention.py --heads 16 --batch 2     # a GPU run (bf16), ready as it is
    python bench/attention.py --seqs 1024 --kinds alibi --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _rss_kib() -> tuple[int, int]:
    """(current, peak) resident set of this process in KiB, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _reset_peak(device: torch.device) -> int:
    """Start a peak-memory window; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    return _rss_kib()[0] * 1024


def _peak(device: torch.device, base: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _rss_kib()[1] * 1024 - base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(fn: Callable[[], object], device: torch.device, steps: int) -> tuple[float, int]:
    """(median seconds, peak bytes above the baseline) of ``steps`` calls."""
    times, peaks = [], []
    for _ in range(steps):
        base = _reset_peak(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        peaks.append(_peak(device, base))
    return statistics.median(times), max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--seqs", default="2048,8192", help="sequence lengths, comma-separated")
    ap.add_argument("--kinds", default="alibi,local", help="alibi, local (a band), or both")
    ap.add_argument("--heads", type=int, default=0, help="query heads (0: 2 on CPU, 16 on a GPU)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--window", type=int, default=256, help="band width of local attention")
    ap.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (bf16 on a GPU)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from neoxcli.kernels.attn import causal_attention, flex_causal_attention
    from neoxcli.model.positions import alibi_slopes

    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (torch.bfloat16 if gpu else torch.float32)
    heads = args.heads or (16 if gpu else 2)
    print(
        f"torch {torch.__version__}, {device} ({torch.cuda.get_device_name() if gpu else f'{torch.get_num_threads()} threads'}), "
        f"{dtype}, batch {args.batch}, {heads} heads x {args.head_dim}, window {args.window}, "
        f"median of {args.steps}"
    )
    modes = ["fwd+bwd", "fwd"] if gpu else ["fwd"]
    header = f"{'kind':<6} {'T':>6} {'mode':<8} {'dense ms':>10} {'flex ms':>9} {'speedup':>8} {'dense MiB':>10} {'flex MiB':>9} {'mem ratio':>9} {'compile s':>9} {'max diff':>9}"
    print(header)
    for kind in args.kinds.split(","):
        for t in (int(s) for s in args.seqs.split(",")):
            g = torch.Generator().manual_seed(0)
            q, k, v = (
                torch.randn(args.batch, heads, t, args.head_dim, generator=g).to(device, dtype)
                for _ in range(3)
            )
            kw = {"alibi": alibi_slopes(heads).to(device)} if kind == "alibi" else {"window": args.window}
            for mode in modes:
                train = mode == "fwd+bwd"
                leaves = [x.detach().clone().requires_grad_(train) for x in (q, k, v)]

                def run(
                    flex: bool, leaves: list[torch.Tensor] = leaves, train: bool = train, kw: dict = kw
                ) -> torch.Tensor:
                    with torch.set_grad_enabled(train):
                        if flex:
                            out = flex_causal_attention(*leaves, compiled=True, **kw)
                        else:
                            out = causal_attention(*leaves, backend="torch", **kw)
                        if train:
                            out.sum().backward()
                            for x in leaves:
                                x.grad = None
                    return out.detach()

                start = time.perf_counter()
                flex_out = run(True)  # compiles the kernel for this shape
                _sync(device)
                compile_s = time.perf_counter() - start
                dense_out = run(False)
                diff = (flex_out.float() - dense_out.float()).abs().max().item()
                del flex_out, dense_out
                dense_t, dense_m = _measure(lambda: run(False), device, args.steps)
                flex_t, flex_m = _measure(lambda: run(True), device, args.steps)
                # Below 1 MiB the measurement is page-granular noise: no ratio.
                ratio = f"{dense_m / flex_m:.1f}x" if flex_m >= 2**20 else "-"
                print(
                    f"{kind:<6} {t:>6} {mode:<8} {dense_t * 1e3:>10.1f} {flex_t * 1e3:>9.1f} "
                    f"{dense_t / flex_t:>7.2f}x {dense_m / 2**20:>10.0f} {flex_m / 2**20:>9.0f} "
                    f"{ratio:>9} {compile_s:>9.1f} {diff:>9.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
