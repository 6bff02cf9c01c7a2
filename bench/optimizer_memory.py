"""Optimizer state bytes per parameter and optimizer steps/s, for each optimizer neox can build.

Every choice is built by neox's own ``build_optimizer`` over the same GPT model
(same weights, same synthetic gradients), stepped ``--warmup`` times (torchao
compiles its step per tensor shape there), then timed over ``--steps`` steps.
Bytes are counted from the live state tensors (``neoxcli.training.optim.state_bytes``:
quantized tensors by their codes and scales). Fused fp32 AdamW is the baseline
of both ratios; the optimizers take turns in timed rounds.

    python bench/optimizer_memory.py
    python bench/optimizer_memory.py --layers 2 --hidden 128 --optimizers adamw,adamw8bit,lion
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# _common also puts this checkout first on sys.path.
from _common import add_shape_args, timed_rounds

CHOICES = ("adamw", "adamw8bit", "torchao_adamw8bit", "lion", "adafactor", "sgd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap, layers=4, hidden=256, vocab=8192)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--optimizers", default=",".join(CHOICES), help=f"comma-separated, from {', '.join(CHOICES)}"
    )
    args = ap.parse_args()

    from neoxcli.config.schema import ModelConfig, NeoXConfig, OptimizerConfig, TrainConfig
    from neoxcli.model import GPTModel
    from neoxcli.training.optim import build_optimizer, state_bytes

    model_cfg = ModelConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=max(args.hidden // 64, 1),
        seq_length=512,
        no_weight_tying=True,
    )
    torch.manual_seed(0)
    template = GPTModel(model_cfg, args.vocab)
    n = sum(p.numel() for p in template.parameters())
    gen = torch.Generator().manual_seed(1)
    grads = {name: torch.randn(p.shape, generator=gen) * 1e-3 for name, p in template.named_parameters()}
    print(f"model: {args.layers} layers x {args.hidden}, vocab {args.vocab}: {n / 1e6:.2f}M parameters")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    built = []
    for kind in args.optimizers.split(","):
        lr = {"lion": 1e-4, "adafactor": 1e-2, "sgd": 1e-2}.get(kind, 6e-4)
        params: dict[str, object] = {"lr": lr}
        if kind == "sgd":
            params["momentum"] = 0.9
        cfg = NeoXConfig(
            model=model_cfg, train=TrainConfig(optimizer=OptimizerConfig(type=kind, params=params))
        )
        model = GPTModel(model_cfg, args.vocab)
        model.load_state_dict(template.state_dict())
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        try:
            opt = build_optimizer(cfg, model, "cpu")
        except Exception as exc:  # a missing optional package: say so and go on
            print(f"{kind}: skipped ({exc})")
            continue
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            opt.step()
        built.append((kind, opt, time.perf_counter() - t0))
    # Rounds take turns, so load from other processes hits every optimizer alike; the median is kept.
    times, _ = timed_rounds({kind: opt.step for kind, opt, _first in built}, args.rounds, args.steps)
    rows = [
        (kind, state_bytes(opt) / n, 1.0 / statistics.median(w for w, _ in times[kind]), first)
        for kind, opt, first in built
    ]

    base = next((r for r in rows if r[0] == "adamw"), None)
    print(
        f"{'optimizer':<20}{'state B/param':>14}{'vs adamw':>10}{'steps/s':>10}{'vs adamw':>10}{'warmup s':>10}"
    )
    for kind, bpp, sps, first in rows:
        mem = f"{bpp / base[1]:.2f}x" if base else "-"
        speed = f"{sps / base[2]:.2f}x" if base else "-"
        print(f"{kind:<20}{bpp:>14.3f}{mem:>10}{sps:>10.2f}{speed:>10}{first:>10.1f}")


if __name__ == "__main__":
    main()
