"""Decode throughput: ``neoxcli.generation.generate_batch`` against Hugging Face ``model.generate``.

The same weights (a random GPTNeoXForCausalLM mapped through ``neoxcli.convert``),
greedy, ``use_cache=True``, the same prompts, timed alternately in one process
at batch 1 and batch 8; prints new tokens/s of both, the ratio, and whether the
greedy tokens are identical.

    python bench/generate.py                         # quickstart shape (4 x 256) and Pythia-70M shape (6 x 512)
    python bench/generate.py --shapes 6x512 --new 64 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"4x256": (4, 256, 8, 8192), "6x512": (6, 512, 8, 50304)}  # layers, hidden, heads, vocab


def build(layers: int, hidden: int, heads: int, vocab: int, ctx: int) -> tuple[object, object]:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from neoxcli.config.schema import ModelConfig
    from neoxcli.convert import hf_gptneox_to_neox
    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=ctx,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    hf = GPTNeoXForCausalLM(cfg).eval()
    kwargs, sd = hf_gptneox_to_neox(hf.state_dict(), cfg)
    ours = GPTModel(ModelConfig(**kwargs), vocab).eval()
    ours.load_state_dict(sd)
    return hf, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4x256,6x512")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from neoxcli.generation import generate_batch

    print(f"threads={torch.get_num_threads()} prompt={args.prompt} new={args.new} greedy, KV cache on both")
    print(f"{'shape':>6} {'batch':>5} {'neox tok/s':>11} {'HF tok/s':>10} {'ratio':>6}  same tokens")
    for shape in args.shapes.split(","):
        layers, hidden, heads, vocab = SHAPES[shape]
        hf, ours = build(layers, hidden, heads, vocab, args.prompt + args.new)
        for batch in (int(b) for b in args.batches.split(",")):
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(2, vocab, (batch, args.prompt), generator=g)
            times: dict[str, list[float]] = {"neox": [], "hf": []}
            outs: dict[str, list[list[int]]] = {}
            for rep in range(args.repeats + 1):  # the first round warms up
                t0 = time.perf_counter()
                done = generate_batch(ours, prompts.tolist(), args.new, greedy=True)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    seq = hf.generate(
                        prompts,
                        attention_mask=torch.ones_like(prompts),
                        max_new_tokens=args.new,
                        min_new_tokens=args.new,
                        do_sample=False,
                        use_cache=True,
                        pad_token_id=0,
                    )
                t2 = time.perf_counter()
                if rep:
                    times["neox"].append(t1 - t0)
                    times["hf"].append(t2 - t1)
                outs["neox"] = [c.tokens for c in done]
                outs["hf"] = seq[:, args.prompt :].tolist()
            new = batch * args.new
            tps = {k: new / statistics.median(v) for k, v in times.items()}
            same = outs["neox"] == outs["hf"]
            print(
                f"{shape:>6} {batch:>5} {tps['neox']:11.0f} {tps['hf']:10.0f} {tps['neox'] / tps['hf']:5.2f}x  {same}"
            )


if __name__ == "__main__":
    main()
