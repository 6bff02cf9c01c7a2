"""Forward + backward throughput: our GPTModel against Transformers' GPTNeoXForCausalLM.

Both models get the same config and the same weights (HF's random init mapped
through ``neoxcli.convert``), the same batches, and are timed alternately in
one process so machine noise hits both alike. Prints tokens/s and the ratio.

    python bench/forward.py                      # Pythia-like 6 x 512 block stack, T=512
    python bench/forward.py --layers 2 --hidden 128 --steps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# _common also puts this checkout first on sys.path.
from _common import add_shape_args, hf_gptneox_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap, layers=6, hidden=512, heads=8, vocab=8192, seq=512, batch=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rotary-pct", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPTNeoXForCausalLM

    from neoxcli.config.schema import ModelConfig
    from neoxcli.convert import hf_gptneox_to_neox
    from neoxcli.model import GPTModel

    torch.manual_seed(0)
    hf_cfg = hf_gptneox_config(
        vocab=args.vocab,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        seq=args.seq,
        rotary_pct=args.rotary_pct,
    )
    hf = GPTNeoXForCausalLM(hf_cfg).train()
    kwargs, sd = hf_gptneox_to_neox(hf.state_dict(), hf_cfg)
    ours = GPTModel(ModelConfig(**kwargs), args.vocab).train()
    ours.load_state_dict(sd)

    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()

    def step_ours() -> None:
        logits = ours(ids)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()

    def step_hf() -> None:
        logits = hf(ids).logits.float()
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for i in range(args.warmup + args.steps):
        for name, fn, model in (("ours", step_ours, ours), ("hf", step_hf, hf)):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    tokens = args.batch * args.seq
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(
        f"config: layers={args.layers} hidden={args.hidden} heads={args.heads} vocab={args.vocab} "
        f"batch={args.batch} seq={args.seq} rotary_pct={args.rotary_pct} threads={torch.get_num_threads()} "
        f"(attn: HF {hf.config._attn_implementation})"
    )
    print(f"max |logits diff| = {diff:.2e}")
    print(f"ours fwd+bwd: {tps['ours']:9.0f} tokens/s  (median of {args.steps})")
    print(f"HF   fwd+bwd: {tps['hf']:9.0f} tokens/s")
    print(f"ratio ours/HF: {tps['ours'] / tps['hf']:.2f}x")


if __name__ == "__main__":
    main()
