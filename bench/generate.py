"""Decode throughput: ``neoxcli.generation.generate_batch`` against Hugging Face and against the memory bound.

Default mode (``--vs-hf``): the same weights (a random GPTNeoXForCausalLM mapped
through ``neoxcli.convert``), greedy, ``use_cache=True``, the same prompts,
timed alternately in one process at batch 1 and batch 8: new tokens/s of neox
eager, neox compiled (``--compile``: a static cache and a compiled step) and
Hugging Face, the ratios, and whether all greedy tokens are identical.

``--bound`` mode (for a CUDA machine; on CPU it runs the same code on small
shapes): decode tokens/s at batch 1 of Pythia-410M- and 1.4B-shaped random
models, eager and compiled, against the memory-bandwidth bound, i.e. the
bytes of weights read per token divided by the device's copy bandwidth
measured in the same run; prints the fraction of the bound reached. Decode
speed is measured without the prompt: ``(N - 1) / (t(N new tokens) - t(1 new token))``.

    python bench/generate.py                          # vs HF: quickstart shape (4 x 256) and Pythia-70M shape
    python bench/generate.py --shapes 6x512 --new 64 --repeats 2
    python bench/generate.py --bound                  # CUDA: pythia-410m, pythia-1.4b in bf16
    python bench/generate.py --bound --shapes 4x256   # the same code on CPU, small
    python bench/generate.py --profile --shapes 4x256 # where eager decode time goes (torch.profiler)
    python bench/generate.py --shapes 4x256 --threads 1  # steadier ratios on a CPU shared with other jobs

On a CPU that other jobs share, runs with more than one thread are dominated by
threads waiting for each other's time slices (tokens/s swing 10x between rows);
``--threads 1`` keeps the eager/compiled/HF ratios comparable.

Runs on torch 2.11 and later.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

# _common also puts this checkout first on sys.path.
from _common import hf_gptneox_config

# layers, hidden, heads, vocab
SHAPES = {
    "4x256": (4, 256, 8, 8192),
    "6x512": (6, 512, 8, 50304),
    "pythia-410m": (24, 1024, 16, 50304),
    "pythia-1.4b": (24, 2048, 16, 50304),
}


def hf_config(layers: int, hidden: int, heads: int, vocab: int, ctx: int) -> Any:
    return hf_gptneox_config(vocab=vocab, hidden=hidden, layers=layers, heads=heads, seq=ctx, rotary_pct=0.25)


def build(layers: int, hidden: int, heads: int, vocab: int, ctx: int) -> tuple[Any, Any]:
    """A random HF GPT-NeoX model and the same weights as a neox ``GPTModel``."""
    from transformers import GPTNeoXForCausalLM

    from neoxcli.config.schema import ModelConfig
    from neoxcli.convert import hf_gptneox_to_neox
    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    cfg = hf_config(layers, hidden, heads, vocab, ctx)
    hf = GPTNeoXForCausalLM(cfg).eval()
    kwargs, sd = hf_gptneox_to_neox(hf.state_dict(), cfg)
    ours = GPTModel(ModelConfig(**kwargs), vocab).eval()
    ours.load_state_dict(sd)
    return hf, ours


def build_neox(layers: int, hidden: int, heads: int, vocab: int, ctx: int, device: str, dtype: Any) -> Any:
    """A random neox model of the Pythia layout, built straight on the device (no HF copy of big weights)."""
    from neoxcli.config.schema import ModelConfig
    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        seq_length=ctx,
        max_position_embeddings=ctx,
        pos_emb="rotary",
        rotary_pct=0.25,
        gpt_j_residual=True,
        no_weight_tying=True,
    )
    with torch.device(device):
        model = GPTModel(cfg, vocab)
    return model.to(dtype=dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of ``dst.copy_(src)`` on ``device``, counting the read and the write (best of ``repeats``)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter but the input embedding (one row is looked up)."""
    emb = model.embedding.word_embeddings.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    tied = model.head._tied_to is not None
    return total if tied else total - emb.numel() * emb.element_size()


def timed(fn: Any, device: str, *fn_args: Any) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn(*fn_args)
    sync(device)
    return time.perf_counter() - t0


def vs_hf(args: argparse.Namespace) -> None:
    from neoxcli.generation.decode import CompiledStep

    print(f"threads={torch.get_num_threads()} prompt={args.prompt} new={args.new} greedy, KV cache on all")
    print(
        f"{'shape':>6} {'batch':>5} {'eager tok/s':>11} {'compiled':>9} {'HF tok/s':>9} "
        f"{'eager/HF':>8} {'comp/HF':>8}  same tokens"
    )
    for shape in args.shapes.split(","):
        layers, hidden, heads, vocab = SHAPES[shape]
        hf, ours = build(layers, hidden, heads, vocab, args.prompt + args.new)
        step = CompiledStep(ours) if args.compiled else None
        for batch in (int(b) for b in args.batches.split(",")):
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(2, vocab, (batch, args.prompt), generator=g)
            runs: dict[str, Any] = {
                "eager": (neox_generate, (ours, prompts, args.new, None)),
                "hf": (hf_generate, (hf, prompts, args.new)),
            }
            if step is not None:
                runs["compiled"] = (neox_generate, (ours, prompts, args.new, step))
            times: dict[str, list[float]] = {k: [] for k in runs}
            outs: dict[str, list[list[int]]] = {}
            for rep in range(args.repeats + 1):  # the first round warms up (and compiles)
                for name, (fn, fn_args) in runs.items():  # interleaved: every round times each in turn
                    t0 = time.perf_counter()
                    outs[name] = fn(*fn_args)
                    if rep:
                        times[name].append(time.perf_counter() - t0)
            new = batch * args.new
            tps = {k: new / statistics.median(v) for k, v in times.items()}
            same = all(o == outs["hf"] for o in outs.values())
            comp = tps.get("compiled")
            comp_tps = f"{comp:9.0f}" if comp else f"{'-':>9}"
            comp_ratio = f"{comp / tps['hf']:7.2f}x" if comp else f"{'-':>8}"
            print(
                f"{shape:>6} {batch:>5} {tps['eager']:11.0f} {comp_tps} {tps['hf']:9.0f} "
                f"{tps['eager'] / tps['hf']:7.2f}x {comp_ratio}  {same}"
            )
        if step is not None and step.failed:
            print("(the compiled step fell back to eager: see the warning above)")


def neox_generate(model: Any, prompts: torch.Tensor, new: int, step: Any) -> list[list[int]]:
    from neoxcli.generation import generate_batch

    return [c.tokens for c in generate_batch(model, prompts.tolist(), new, greedy=True, step=step)]


def hf_generate(hf: Any, prompts: torch.Tensor, new: int) -> list[list[int]]:
    with torch.inference_mode():
        seq = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return seq[:, prompts.shape[1] :].tolist()


def bound(args: argparse.Namespace) -> None:
    """Batch-1 decode tokens/s against bytes-of-weights / measured copy bandwidth."""
    from neoxcli.generation.decode import CompiledStep

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if cuda else "fp32")
    ]
    shapes = args.shapes if args.shapes_given else ("pythia-410m,pythia-1.4b" if cuda else "4x256")
    name = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    bw = copy_bandwidth(device, (1 << 30) if cuda else (256 << 20))
    print(f"device={name} dtype={str(dtype).removeprefix('torch.')} torch={torch.__version__}")
    print(
        f"measured copy bandwidth: {bw / 1e9:.1f} GB/s (read + write of a {'1 GiB' if cuda else '256 MiB'} copy)"
    )
    print(f"batch 1, prompt {args.prompt}, decode tokens/s from {args.new} vs 1 new tokens, greedy")
    print(
        f"{'shape':>12} {'MB/token':>9} {'bound tok/s':>11} {'path':>9} {'tok/s':>8} {'of bound':>9}  same tokens"
    )
    for shape in shapes.split(","):
        layers, hidden, heads, vocab = SHAPES[shape]
        model = build_neox(layers, hidden, heads, vocab, args.prompt + args.new, device, dtype)
        per_token = weight_bytes_per_token(model)
        limit = bw / per_token
        prompt = torch.randint(2, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
        step = CompiledStep(model)
        paths: dict[str, Any] = {"eager": None, "compiled": step}
        tokens: dict[str, list[int]] = {}
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for rep in range(args.repeats + 1):  # round 0 warms up, compiles and records the CUDA graphs
            for path, s in paths.items():
                t1 = timed(neox_generate, device, model, prompt, 1, s)
                tn = timed(neox_generate, device, model, prompt, args.new, s)
                tokens[path] = neox_generate(model, prompt, args.new, s)[0] if rep == 0 else tokens[path]
                if rep:
                    rates[path].append((args.new - 1) / max(tn - t1, 1e-9))
        same = tokens["eager"] == tokens["compiled"]
        for path in paths:
            tps = statistics.median(rates[path])
            print(
                f"{shape:>12} {per_token / 1e6:9.1f} {limit:11.0f} {path:>9} {tps:8.0f} {tps / limit:8.1%}"
                f"  {same}"
            )
        if step.failed:
            print("(the compiled step fell back to eager: see the warning above)")
        del model, step
        if cuda:
            torch.cuda.empty_cache()


def profile(args: argparse.Namespace) -> None:
    """Where a batch-1 eager decode spends its time: torch.profiler's operator table, matmuls vs the rest."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    layers, hidden, heads, vocab = SHAPES[args.shapes.split(",")[0]]
    _hf, ours = build(layers, hidden, heads, vocab, args.prompt + args.new)
    prompts = torch.randint(2, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    neox_generate(ours, prompts, 8, None)  # warm up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        neox_generate(ours, prompts, args.new, None)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    print(
        f"{args.new} tokens in {wall:.3f} s (profiled); operator time: matmuls {matmul / total:.0%}, "
        f"attention {attn / total:.0%}, everything else {(total - matmul - attn) / total:.0%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bound", action="store_true", help="decode vs the memory-bandwidth bound (GPU mode)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one eager batch-1 decode")
    ap.add_argument("--shapes", default=None, help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--batches", default="1,8", help="batch sizes (vs-HF mode)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--no-compiled", dest="compiled", action="store_false", help="skip the compiled path")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="--bound mode")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="--bound mode")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shapes_given = args.shapes is not None
    args.shapes = args.shapes or "4x256,6x512"
    if args.profile:
        profile(args)
    elif args.bound:
        bound(args)
    else:
        vs_hf(args)


if __name__ == "__main__":
    main()
