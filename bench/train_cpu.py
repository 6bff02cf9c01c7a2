"""CPU training throughput: ``neox train``'s real step against a plain Hugging Face loop.

Contenders, each in its own process (as a user runs one tool or the other: the allocator
settings neox makes for its own process must not help the baseline, nor the baseline's memory
state slow neox), timed in interleaved rounds so machine noise hits all alike:

* ``neox``: ``build_run`` + ``train_step`` exactly as ``neox train`` runs them (DeepSpeed
  engine, our GPTModel, fused AdamW, LR schedule, data from a real ``.bin/.idx`` file);
* ``hf``: Transformers' ``GPTNeoXForCausalLM`` with fused AdamW in a plain PyTorch loop
  (``loss.backward()``, clipping at 1 as neox does, ``opt.step()``) on the same shape and batch;
* ``ours-plain``: our GPTModel in that same plain loop, which separates the engine's cost
  from the model's;
* ``neox-malloc`` (``--malloc``): the neox step with ``NEOX_CPU_MALLOC=0``, i.e. without
  ``neoxcli.cpu_memory.keep_freed_memory``, to show what keeping freed memory saves;
* ``neox+reduce`` (``--allreduce``): the neox step with DeepSpeed's one-replica gradient
  all-reduce left on, to show what skipping it saves;
* ``neox-blas`` (``--gemm``): the neox step with ``NEOX_CPU_GEMM=blas``, i.e. every GEMM by
  PyTorch's BLAS (MKL) as the baseline's are, to show what ``neoxcli.kernels.gemm``'s
  oneDNN path saves on CPUs where it is chosen.
* ``neox-noattn`` (``--attention``): a timing probe, not a model: the neox step with attention's
  core (``softmax(QK^T)V``) replaced by passing ``V`` through, so its difference to ``neox`` is
  what attention costs in the real step; printed with what the rest of the step achieves on
  the FLOPs outside attention. (The profiler over-attributes small ops: it put rotary at 3% of
  the step, which this kind of swap measured at 0.6%.)

For each precision (fp32, and bf16: DeepSpeed's bf16 with fp32 master weights for neox,
autocast for the plain loops) it prints tokens/s, the ratio to Hugging Face, and achieved
GFLOP/s against this CPU's matmul rate measured in the same run (the better of PyTorch's BLAS
and oneDNN, both printed).

    python bench/train_cpu.py                         # d=512, 6 layers, seq 512, batch 4
    python bench/train_cpu.py --precisions fp32 --steps 2 --rounds 1
    python bench/train_cpu.py --layers 2 --hidden 128 --seq 128 --steps 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# _common also puts this checkout first on sys.path.
from _common import add_shape_args, best_seconds, hf_training_baseline


def _shape(layers: int, hidden: int, seq: int, heads: int) -> Any:
    """The ``ModelConfig`` of a plain GPT-NeoX shape, for ``neoxcli.model.flops``' counts."""
    from neoxcli.config.schema import ModelConfig

    return ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, seq_length=seq)


def train_flops_per_token(layers: int, hidden: int, seq: int, vocab: int, heads: int) -> float:
    """Model FLOPs of one training token for a plain GPT-NeoX shape: ``neoxcli.model.flops``, the count
    every neox log line and metrics row uses (Megatron's, with the attention term and the head)."""
    from neoxcli.model.flops import flops_per_token

    return float(flops_per_token(_shape(layers, hidden, seq, heads), vocab, seq))


def attention_flops_per_token(layers: int, hidden: int, seq: int, heads: int) -> float:
    """The attention term of ``train_flops_per_token`` (QK^T and AV, forward and backward)."""
    from neoxcli.model.flops import attention_flops_per_token as count

    return float(count(_shape(layers, hidden, seq, heads), seq))


def matmul_gflops(dtype: Any, n: int = 2048, reps: int = 3) -> dict[str, float]:
    """This CPU's dense matmul rate at ``n`` x ``n`` (best of ``reps``), by library: PyTorch's BLAS
    (``a @ b``) and, in fp32, oneDNN (``neoxcli.kernels.gemm``'s path). The better one is the
    peak the step's GFLOP/s are measured against."""
    import torch

    from neoxcli.kernels.gemm import _onednn, onednn_gemm_available

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    ways = {"blas": lambda: a @ b}
    if dtype == torch.float32 and onednn_gemm_available():
        ways["onednn"] = lambda: _onednn(a, b.t(), None)
    rates = {}
    for name, fn in ways.items():
        for _ in range(2):
            fn()
        rates[name] = 2 * n**3 / best_seconds(fn, reps) / 1e9
    return rates


def write_inputs(tmp: Path, vocab: int, tokens: int) -> tuple[Path, Path]:
    """A word-level tokenizer JSON of ``vocab`` entries and a ``.bin/.idx`` corpus of random ids."""
    import numpy as np
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from neoxcli.data.indexed import IndexedDatasetWriter

    words = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(WordLevel(words, unk_token="w1"))
    tok_path = tmp / "tokenizer.json"
    tok.save(str(tok_path))
    prefix = tmp / "data" / "bench_text_document"
    prefix.parent.mkdir()
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(max(1, tokens // 4096)):
            w.add_document(rng.integers(1, vocab, 4095).tolist() + [0])
    return tok_path, prefix


def neox_config(args: argparse.Namespace, tok: Path, prefix: Path, precision: str) -> Any:
    from neoxcli.config import load_config

    cfg = {
        "num-layers": args.layers,
        "hidden-size": args.hidden,
        "num-attention-heads": args.heads,
        "seq-length": args.seq,
        "max-position-embeddings": args.seq,
        "pos-emb": "rotary",
        "rotary-pct": 0.25,
        "gpt-j-residual": True,
        "norm": "layernorm",
        "activation": "gelu",
        "no-weight-tying": True,
        "make-vocab-size-divisible-by": 128,
        "tokenizer-type": "HFTokenizer",
        "vocab-file": str(tok),
        "data-path": str(prefix),
        "split": "100,0,0",
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
        "weight-decay": 0.0,
        "train_micro_batch_size_per_gpu": args.batch,
        "train-iters": args.warmup + args.rounds * args.steps + 2,  # keeps the sample index small
        "lr-decay-style": "constant",
        "eval-iters": 0,
        "eval-interval": 10**6,
        "precision": precision,
        "sample_at_end": False,
        "seed": 1234,
        "num_workers": 0,
    }
    import yaml

    path = prefix.parent.parent / f"bench-{precision}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config([path], warn=lambda _m: None)


def plain_step(model: Any, opt: Any, ids: Any, bf16: bool, hf: bool) -> Callable[[], float]:
    """One step of the plain PyTorch loop (autocast under bf16, parameters and optimizer in fp32, clipping at 1)."""
    import torch
    import torch.nn.functional as F

    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if hf:
                logits = model(input_ids=x).logits
            else:
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as neox's gradient_clipping: 1.0
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


CONTENDERS = ("neox", "hf", "ours-plain", "neox-malloc", "neox+reduce", "neox-blas", "neox-noattn")


def build_contender(args: argparse.Namespace, name: str, precision: str) -> Callable[[], float]:
    """One contender's step, built in this (its own) process."""
    import torch

    tok, prefix = Path(args.tok), Path(args.prefix)
    cfg = neox_config(args, tok, prefix, precision)
    bf16 = precision == "bf16"
    if name.startswith("neox"):
        from neoxcli.parallel.distributed import DistEnv
        from neoxcli.training.report import NullReporter
        from neoxcli.training.run import build_run
        from neoxcli.training.trainer import train_step

        if name == "neox-noattn":
            import neoxcli.kernels

            neoxcli.kernels.causal_attention = lambda q, k, v, **_: v * 1.0  # timing only
        run = build_run(cfg, DistEnv(), NullReporter())
        if name == "neox+reduce":
            # the same step with DeepSpeed's one-replica gradient all-reduce left on
            run.engine.enable_backward_allreduce = True
        return lambda: train_step(run)

    from neoxcli.config import resolve

    vocab = resolve(cfg, world_size=1, vocab_size=args.vocab, bf16_supported=bf16).padded_vocab_size
    torch.manual_seed(0)
    ids = torch.randint(1, args.vocab, (args.batch, args.seq + 1))
    if name == "hf":
        from transformers import GPTNeoXForCausalLM

        shape = dict(vocab=vocab, hidden=args.hidden, layers=args.layers, heads=args.heads, seq=args.seq)
        model = GPTNeoXForCausalLM(hf_training_baseline(**shape, rotary_pct=0.25)).train()
    else:
        from neoxcli.model import GPTModel

        model = GPTModel(cfg.model, vocab).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    return plain_step(model, opt, ids, bf16, hf=name == "hf")


def child(args: argparse.Namespace) -> None:
    """A contender's process: build, warm up, then answer each ``run N`` line with N steps' timings."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    step = build_contender(args, args.child, args.precision)
    for _ in range(args.warmup):
        step()
    print(json.dumps({"ready": True}), flush=True)
    import resource

    for line in sys.stdin:
        n = int(line.split()[1])
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t, c = time.perf_counter(), time.process_time()
        loss = 0.0
        for _ in range(n):
            loss = step()
        wall, cpu = (time.perf_counter() - t) / n, (time.process_time() - c) / n
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n
        print(json.dumps({"wall": wall, "cpu": cpu, "loss": loss, "faults": faults}), flush=True)


class Contender:
    """A child process running one contender, driven over its stdin/stdout."""

    def __init__(self, args: argparse.Namespace, name: str, precision: str, tok: Path, prefix: Path) -> None:
        argv = [sys.executable, __file__, "--child", name, "--precision", precision]
        argv += ["--tok", str(tok), "--prefix", str(prefix), "--warmup", str(args.warmup)]
        for key in ("layers", "hidden", "heads", "vocab", "seq", "batch", "steps", "rounds"):
            argv += [f"--{key}", str(getattr(args, key))]
        env = dict(os.environ, DS_ACCELERATOR="cpu")
        if name == "neox-malloc":
            env["NEOX_CPU_MALLOC"] = "0"
        if name == "neox-blas":
            env["NEOX_CPU_GEMM"] = "blas"
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"contender {self.name} exited with {self.proc.wait()}")

    def run(self, steps: int) -> dict[str, Any]:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench_precision(
    args: argparse.Namespace, precision: str, tok: Path, prefix: Path
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per step, medians over rounds, of each contender under ``precision``.

    CPU seconds (the contender's process, all threads) are printed too: on a machine shared with
    other work they move far less than wall time, so their ratios are the steadier comparison.
    Contenders are built one after another, so only one warms up at a time.
    """
    names = ["neox", "hf"]
    names += ["ours-plain"] if args.plain_ours else []
    names += ["neox-malloc"] if args.malloc else []
    names += ["neox+reduce"] if args.allreduce else []
    names += ["neox-blas"] if args.gemm else []
    names += ["neox-noattn"] if args.attention else []
    contenders = [Contender(args, name, precision, tok, prefix) for name in names]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    losses: dict[str, float] = {}
    faults: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _ in range(args.rounds):
            for c in contenders:
                out = c.run(args.steps)
                times[c.name].append((out["wall"], out["cpu"]))
                losses[c.name] = out["loss"]
                faults[c.name].append(out["faults"])
    finally:
        for c in contenders:
            c.close()
    for name in names:
        rounds = " ".join(f"{w * 1e3:.0f}" for w, _ in times[name])
        print(
            f"  {precision} {name:11s} last loss {losses[name]:.4f}, "
            f"{statistics.median(faults[name]):,.0f} page faults/step, ms/step by round: {rounds}",
            flush=True,
        )
    return {
        name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
        for name, ts in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap, layers=6, hidden=512, heads=8, vocab=8192, seq=512, batch=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--no-plain-ours", dest="plain_ours", action="store_false")
    ap.add_argument(
        "--allreduce", action="store_true", help="also time neox with the lone all-reduce left on"
    )
    ap.add_argument("--malloc", action="store_true", help="also time neox with malloc left as is")
    ap.add_argument("--gemm", action="store_true", help="also time neox with every GEMM by PyTorch's BLAS")
    ap.add_argument(
        "--attention", action="store_true", help="also time neox without attention's core (its cost)"
    )
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    flops_tok = train_flops_per_token(args.layers, args.hidden, args.seq, args.vocab, args.heads)
    tokens = args.batch * args.seq
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tok, prefix = write_inputs(tmp, args.vocab, tokens * 64)
        for precision in args.precisions.split(","):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            before = matmul_gflops(dtype)
            step_s = bench_precision(args, precision, tok, prefix)
            rates = {k: max(v, before[k]) for k, v in matmul_gflops(dtype).items()}
            peak = max(rates.values())
            by_lib = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
            print(
                f"{precision}: {precision} matmul rate {peak:.0f} GFLOP/s (2048^2, best of the run: {by_lib})"
            )
            hf_wall, hf_cpu = step_s["hf"]
            probe = step_s.pop("neox-noattn", None)
            for name, (wall, cpu) in step_s.items():
                tps = tokens / wall
                gflops = tps * flops_tok / 1e9
                print(
                    f"  {name:11s} {wall * 1e3:8.0f} ms/step {tps:8.0f} tok/s  x{hf_wall / wall:.3f} HF  "
                    f"{gflops:6.1f} GFLOP/s = {gflops / peak:.0%} of matmul  "
                    f"| CPU {cpu * 1e3:8.0f} ms/step x{hf_cpu / cpu:.3f} HF"
                )
            if probe is not None:
                wall, attn_s = step_s["neox"][0], step_s["neox"][0] - probe[0]
                attn_flops = (
                    attention_flops_per_token(args.layers, args.hidden, args.seq, args.heads) * tokens
                )
                rest = (flops_tok * tokens - attn_flops) / probe[0] / 1e9
                cost = (
                    f"{attn_s * 1e3:.0f} ms = {attn_s / wall:.0%} of it, "
                    f"{attn_flops / attn_s / 1e9:.0f} GFLOP/s on its counted FLOPs"
                    if attn_s > 0
                    else "below this run's noise (more rounds?)"
                )
                print(
                    f"  attention in neox's step: {cost}; the rest of the step "
                    f"{rest:.1f} GFLOP/s = {rest / peak:.0%} of matmul on the FLOPs outside attention"
                )


if __name__ == "__main__":
    main()
