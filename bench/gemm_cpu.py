"""The GEMMs of a training step on CPU: PyTorch's BLAS (MKL on x86) against oneDNN, shape by shape.

For each linear layer of a GPT-NeoX block (QKV, attention output, MLP in and out) and the
vocabulary head, at ``--tokens`` rows, it times the three GEMMs of a training step the way
``neoxcli.kernels.gemm`` can run them (forward ``x @ W^T + b``, input gradient ``g @ W``,
weight gradient ``g^T @ x``) by each library, in alternating rounds (best of each), and prints
GFLOP/s and the ratio. The totals weight each shape by how often a step runs it, and the last
line is the split ``neoxcli.kernels.gemm`` uses (oneDNN forward and input gradient, BLAS weight
gradient) against all-BLAS. It also says which library the process picked for training GEMMs.

    python bench/gemm_cpu.py                      # d=512, 6 layers, 2048 tokens, vocab 8192
    python bench/gemm_cpu.py --hidden 1024 --tokens 4096
"""

from __future__ import annotations

import argparse
from typing import Any

from _common import add_shape_args, best_seconds


def _time_shape(x: Any, w: Any, b: Any, g: Any, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """Best seconds of each GEMM kind by each library, the libraries alternating round by round."""
    import torch

    from neoxcli.kernels.gemm import _onednn

    ways = {
        "fwd": (lambda: torch.addmm(b, x, w.t()), lambda: _onednn(x, w, b)),
        "dX": (lambda: g @ w, lambda: _onednn(g, w.t(), None)),
        "dW": (lambda: g.t() @ x, lambda: _onednn(g.t(), x.t(), None)),
    }
    out: dict[str, dict[str, float]] = {}
    for kind, (blas, onednn) in ways.items():
        blas(), onednn()  # warm-up: oneDNN builds its kernel on the first call
        best = {"blas": float("inf"), "onednn": float("inf")}
        for _ in range(rounds):
            best["blas"] = min(best["blas"], best_seconds(blas, reps))
            best["onednn"] = min(best["onednn"], best_seconds(onednn, reps))
        out[kind] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap, layers=6, hidden=512, vocab=8192)
    ap.add_argument("--tokens", type=int, default=2048, help="rows of each GEMM (micro-batch x sequence)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="timings per GEMM per round (the best counts)")
    args = ap.parse_args()

    import torch

    from neoxcli.kernels.gemm import cpu_prefers_onednn, onednn_gemm_available

    if not onednn_gemm_available():
        raise SystemExit("this torch build has no oneDNN linear op")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
        f"training GEMMs here: {'oneDNN' if cpu_prefers_onednn() else 'BLAS'} (NEOX_CPU_GEMM overrides)"
    )
    d, n = args.hidden, args.tokens
    shapes = [  # (name, out, in, times per step)
        ("qkv", 3 * d, d, args.layers),
        ("attn out", d, d, args.layers),
        ("mlp in", 4 * d, d, args.layers),
        ("mlp out", d, 4 * d, args.layers),
        ("head", args.vocab, d, 1),
    ]
    gen = torch.Generator().manual_seed(0)
    seconds: dict[tuple[str, str], float] = {}
    print(f"{'GEMM':9s} {'kind':5s} {'BLAS GFLOP/s':>13s} {'oneDNN GFLOP/s':>15s} {'oneDNN/BLAS':>12s}")
    for name, out, inp, count in shapes:
        x = torch.randn(n, inp, generator=gen)
        w = torch.randn(out, inp, generator=gen) * 0.02
        b = torch.randn(out, generator=gen)
        g = torch.randn(n, out, generator=gen)
        best = _time_shape(x, w, b, g, args.rounds, args.reps)
        flops = 2 * n * out * inp
        for kind, by_lib in best.items():
            for lib, sec in by_lib.items():
                seconds[(kind, lib)] = seconds.get((kind, lib), 0.0) + sec * count
            print(
                f"{name:9s} {kind:5s} {flops / by_lib['blas'] / 1e9:13.0f} {flops / by_lib['onednn'] / 1e9:15.0f} "
                f"{by_lib['blas'] / by_lib['onednn']:11.2f}x"
            )
    print("per step (ms, weighted by layers):")
    for kind in ("fwd", "dX", "dW"):
        blas, onednn = seconds[(kind, "blas")], seconds[(kind, "onednn")]
        print(f"  {kind:4s} BLAS {blas * 1e3:7.1f}  oneDNN {onednn * 1e3:7.1f}  x{blas / onednn:.2f}")
    all_blas = sum(seconds[(k, "blas")] for k in ("fwd", "dX", "dW"))
    split = seconds[("fwd", "onednn")] + seconds[("dX", "onednn")] + seconds[("dW", "blas")]
    print(
        f"all BLAS {all_blas * 1e3:.1f} ms; neox's split (oneDNN fwd + dX, BLAS dW) {split * 1e3:.1f} ms: "
        f"x{all_blas / split:.2f}"
    )


if __name__ == "__main__":
    main()
