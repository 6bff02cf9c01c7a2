"""GPU training throughput: ``neox train``'s real step on the Pythia presets against Hugging Face.

For each size (Pythia-160M, 410M, 1.4B at seq 2048, bf16) and variant (``plain``; ``compile``:
regional torch.compile; ``ckpt``: full activation checkpointing, when this build acts on
``checkpoint_activations``) it builds the run exactly as ``neox train`` does (``build_run``:
DeepSpeed engine, our GPTModel, fused AdamW, the preset's ZeRO stage) on a random-token
dataset, picks the largest micro-batch that fits (an estimate from the memory it needs,
halved on out-of-memory), warms up, times ``--steps`` steps of ``train_step`` and records
tokens/s, TFLOP/s, MFU and peak memory. In the same process Transformers'
``GPTNeoXForCausalLM`` (bf16 autocast over fp32 weights, fused AdamW, SDPA attention) runs
the same shape and batch as the peer baseline; the ratio is ours / HF.

Runs are ordered so the headline numbers come first (plain and HF for every size, then the
other variants) and stop cleanly when ``--budget`` seconds are spent.

    python bench/train_gpu.py                                  # on one GPU, all sizes
    python bench/train_gpu.py --sizes 1.4b --variants plain,ckpt --json out.json
    python bench/train_gpu.py --device cpu --tiny              # the same code on a tiny shape
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_cpu import write_inputs  # noqa: E402

from neoxcli.model.flops import flops_per_token  # noqa: E402

SIZES = {"160m": "pythia-160m", "410m": "pythia-410m", "1.4b": "pythia-1.4b"}
VARIANTS = ("plain", "compile", "ckpt")
# Dense bf16 peaks (no sparsity), TFLOP/s, by a substring of the device name.
PYTHIA_VOCAB = 50277  # the 20B tokenizer's size; padded to 50304 as in Pythia
TINY = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "seq_length": 64,
    "max_position_embeddings": 64,
}


@dataclass
class Result:
    """One timed run, as printed and written to ``--json``."""

    size: str
    variant: str
    impl: str  # neox or hf
    micro_batch: int = 0
    seq: int = 0
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    tflops: float = 0.0
    mfu: float | None = None
    peak_mem_gb: float = 0.0
    loss: float = 0.0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="160m,410m,1.4b", help=f"of {', '.join(SIZES)}")
    ap.add_argument("--variants", default="plain,compile,ckpt", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=30, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=0, help="0: the largest that fits")
    ap.add_argument("--max-micro-batch", type=int, default=64)
    ap.add_argument("--zero", type=int, default=None, help="ZeRO stage (default: the preset's)")
    ap.add_argument("--no-hf", dest="hf", action="store_false", help="skip the Hugging Face baseline")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument(
        "--precision", default=None, choices=["bf16", "fp32"], help="default: bf16 on GPU, fp32 on CPU"
    )
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model at seq 64 (CPU checks)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="override the device's dense peak")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds for all runs (0: no limit)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    args.sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    args.variants = [v.strip().lower() for v in args.variants.split(",") if v.strip()]
    for s in args.sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    for v in args.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if args.device == "cpu" and not args.tiny:
        ap.error("--device cpu needs --tiny (the Pythia shapes take hours per step on a CPU)")
    if args.tiny:
        args.seq = TINY["seq_length"]
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    return args


def run_order(sizes: list[str], variants: list[str], hf: bool) -> list[tuple[str, str, str]]:
    """(size, variant, impl) with the headline runs first: neox plain and HF for every size, then the rest."""
    order: list[tuple[str, str, str]] = []
    for size in sizes:
        if "plain" in variants:
            order.append((size, "plain", "neox"))
            if hf:
                order.append((size, "plain", "hf"))
    for variant in (v for v in VARIANTS if v != "plain" and v in variants):
        for size in sizes:
            order.append((size, variant, "neox"))
            if hf and variant == "ckpt":
                order.append((size, variant, "hf"))
    return order


def peak_tflops(device_name: str, override: float = 0.0) -> float | None:
    """The dense bf16 peak of the device by name (neox's table); None when unknown (MFU is then not printed)."""
    from neoxcli.model.flops import table_peak

    if override > 0:
        return override
    peak = table_peak(device_name, "bf16")
    return peak / 1e12 if peak is not None else None


def guess_micro_batch(
    n_params: int, layers: int, hidden: int, seq: int, vocab: int, mem: float, ckpt: bool
) -> int:
    """The largest power-of-two micro-batch the memory estimate allows (a start; OOM halves it).

    State: bf16 weights and gradients, fp32 master weights, gradients and two Adam moments
    (20 bytes a parameter). Activations per sample: ~34 bytes per hidden element per layer
    with flash attention (Megatron's accounting), only each block's input when checkpointed
    plus one block's worth, and the logits (bf16, fp32 and their gradient).
    """
    state = 20 * n_params
    block = 34 * seq * hidden
    acts = (2 * seq * hidden * layers + block) if ckpt else block * layers
    per_sample = acts + 10 * seq * vocab
    room = 0.85 * mem - state
    if room <= per_sample:
        return 1
    return 2 ** int(math.log2(room / per_sample))


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def neox_config(
    args: argparse.Namespace, size: str, variant: str, micro: int, inputs: tuple[Path, Path]
) -> Any:
    from neoxcli.config import load_config

    tok, prefix = inputs
    sets = {
        "data_path": str(prefix),
        "vocab_file": str(tok),
        "tokenizer_type": "HFTokenizer",
        "split": "100,0,0",
        "seq_length": args.seq,
        "max_position_embeddings": max(args.seq, 2048) if not args.tiny else args.seq,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro,
        # just the steps timed: the sample index is built for these, so it stays small
        "train_iters": args.warmup + args.steps + 2,
        "lr_decay_iters": args.warmup + args.steps + 2,
        "eval_iters": 0,
        "eval_interval": 10**6,
        "precision": args.precision,
        "sample_at_end": False,
        "compile": variant == "compile",
        "save": None,
        "load": None,
    }
    if args.tiny:
        sets.update(TINY)
    if args.zero is not None:
        sets["zero_optimization"] = {"stage": args.zero}
    if variant == "ckpt":
        sets["checkpoint_activations"] = True
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    return load_config([SIZES[size]], overrides, warn=lambda _m: None)


def time_steps(step: Any, warmup: int, steps: int, sync: Any) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps after ``warmup`` (the mean of one timed stretch), and the last loss."""
    loss = 0.0
    for _ in range(warmup):
        loss = step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    return (time.perf_counter() - t) / steps, loss


def run_neox(
    args: argparse.Namespace, size: str, variant: str, micro: int, inputs: tuple[Path, Path]
) -> Result:
    import torch

    from neoxcli.parallel.distributed import DistEnv
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run
    from neoxcli.training.trainer import train_step

    cfg = neox_config(args, size, variant, micro, inputs)
    if variant == "ckpt" and "checkpoint_activations" in (cfg.ignored_keys or {}):
        return Result(
            size, variant, "neox", note="skipped: this build does not act on checkpoint_activations"
        )
    run = build_run(cfg, DistEnv(), NullReporter())
    try:
        sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        step_s, loss = time_steps(lambda: train_step(run), args.warmup, args.steps, sync)
        res = Result(size, variant, "neox", micro, args.seq, step_s, loss=loss)
        res.extra = {
            "precision": run.plan.precision,
            "zero_stage": run.plan.zero_stage,
            "params": run.n_params,
        }
        return res
    finally:
        destroy = getattr(run.engine, "destroy", None)
        if callable(destroy):
            destroy()  # drops DeepSpeed's hooks, so the memory goes back before the next run


def run_hf(args: argparse.Namespace, size: str, variant: str, micro: int, vocab: int, mcfg: Any) -> Result:
    import torch
    import torch.nn.functional as F
    from _common import hf_training_baseline
    from transformers import GPTNeoXForCausalLM

    device = torch.device(args.device)
    hf_cfg = hf_training_baseline(
        vocab=vocab,
        hidden=mcfg.hidden_size,
        layers=mcfg.num_layers,
        heads=mcfg.num_attention_heads,
        seq=mcfg.max_position_embeddings,
        rotary_pct=mcfg.rotary_pct,
    )
    model = GPTNeoXForCausalLM(hf_cfg).to(device).train()
    if variant == "ckpt":
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=True)
    ids = torch.randint(1, vocab, (micro, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    bf16 = args.precision == "bf16"

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    step_s, loss = time_steps(step, args.warmup, args.steps, sync)
    return Result(size, variant, "hf", micro, args.seq, step_s, loss=loss)


def finish(res: Result, flops_tok: float, peak: float | None, device: str) -> Result:
    import torch

    if res.step_s > 0:
        res.tokens_per_s = res.micro_batch * res.seq / res.step_s
        res.tflops = res.tokens_per_s * flops_tok / 1e12
        res.mfu = res.tflops / peak if peak else None
    if device == "cuda":
        res.peak_mem_gb = torch.cuda.max_memory_allocated() / 2**30
    return res


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --tiny for the CPU check")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    mem = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else 0
    peak = peak_tflops(name, args.peak_tflops)
    print(
        f"{name}, torch {torch.__version__}, {args.precision}, seq {args.seq}, peak {peak or 'unknown'} TFLOP/s"
    )
    deadline = time.monotonic() + args.budget if args.budget > 0 else math.inf
    results: list[Result] = []
    chosen: dict[tuple[str, str], int] = {}  # (size, variant) -> the micro-batch neox ran
    with tempfile.TemporaryDirectory() as tmp:
        # enough random tokens for one epoch of the largest batch the runs may take
        tokens = (
            (args.max_micro_batch if args.device == "cuda" else 8)
            * (args.seq + 1)
            * (args.warmup + args.steps + 4)
        )
        inputs = write_inputs(Path(tmp), PYTHIA_VOCAB if not args.tiny else 512, tokens)
        for size, variant, impl in run_order(args.sizes, args.variants, args.hf):
            if time.monotonic() > deadline - 15:
                results.append(Result(size, variant, impl, note="skipped: out of time"))
                print(f"{size:>5s} {variant:8s} {impl:5s} skipped (budget)", flush=True)
                continue
            mcfg = neox_config(args, size, "plain", 1, inputs).model
            vocab = 50304 if not args.tiny else 512
            flops_tok = float(flops_per_token(mcfg, vocab, args.seq))
            if impl == "hf":
                micro = chosen.get((size, variant), 0)
                if not micro:
                    results.append(Result(size, variant, impl, note="skipped: neox did not run"))
                    continue
            elif args.micro_batch:
                micro = args.micro_batch
            elif args.device == "cuda":
                n = (
                    12 * mcfg.hidden_size**2 + 13 * mcfg.hidden_size
                ) * mcfg.num_layers + 2 * vocab * mcfg.hidden_size
                micro = guess_micro_batch(
                    n, mcfg.num_layers, mcfg.hidden_size, args.seq, vocab, mem, variant == "ckpt"
                )
                micro = min(micro, args.max_micro_batch)
            else:
                micro = 4
            res: Result | None = None
            t0 = time.monotonic()
            while micro >= 1:
                _free()
                try:
                    if impl == "neox":
                        res = run_neox(args, size, variant, micro, inputs)
                    else:
                        res = run_hf(args, size, variant, micro, vocab, mcfg)
                    break
                except Exception as exc:  # OOM halves the batch; anything else is recorded and skipped
                    if not _is_oom(exc):
                        res = Result(
                            size, variant, impl, micro, note=f"failed: {type(exc).__name__}: {exc}"[:300]
                        )
                        break
                    if impl == "hf":  # the baseline does not fit our batch: say so at the largest that does
                        micro //= 2
                        continue
                    micro //= 2
            if res is None:
                res = Result(size, variant, impl, note="skipped: not even micro-batch 1 fits")
            if impl == "neox" and res.step_s > 0:
                chosen[(size, variant)] = res.micro_batch
            finish(res, flops_tok, peak, args.device)
            res.extra["wall_s"] = round(time.monotonic() - t0, 1)
            results.append(res)
            print(format_row(res, results), flush=True)
            _free()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def _hf_match(res: Result, results: list[Result]) -> Result | None:
    variant = "ckpt" if res.variant == "ckpt" else "plain"
    return next(
        (
            r
            for r in results
            if r.impl == "hf" and r.size == res.size and r.variant == variant and r.step_s > 0
        ),
        None,
    )


def format_row(res: Result, results: list[Result]) -> str:
    if res.step_s <= 0:
        return f"{res.size:>5s} {res.variant:8s} {res.impl:5s} {res.note}"
    mfu = f"{res.mfu:6.1%}" if res.mfu is not None else "   n/a"
    hf = _hf_match(res, results) if res.impl == "neox" else None
    ratio = (
        f" x{res.tokens_per_s / hf.tokens_per_s:.2f} HF" if hf and hf.micro_batch == res.micro_batch else ""
    )
    return (
        f"{res.size:>5s} {res.variant:8s} {res.impl:5s} mb {res.micro_batch:3d} {res.step_s * 1e3:8.1f} ms/step "
        f"{res.tokens_per_s:10.0f} tok/s {res.tflops:7.1f} TFLOP/s MFU {mfu} peak {res.peak_mem_gb:6.1f} GiB"
        f" loss {res.loss:.3f}{ratio}"
    )


def print_table(results: list[Result]) -> None:
    print("\nsize  variant  impl  (the ratio compares neox with HF at the same micro-batch)")
    for res in results:
        print(format_row(res, results))


if __name__ == "__main__":
    main()
