"""Learning-rate schedule with GPT-NeoX's semantics (linear warmup, then decay to min_lr)."""

from __future__ import annotations

import math
from typing import Any


def lr_at(
    iteration: int,
    *,
    max_lr: float,
    min_lr: float,
    warmup_iters: int,
    decay_iters: int,
    style: str,
) -> float:
    """Learning rate after ``iteration`` optimizer steps, as GPT-NeoX's annealing schedule computes it."""
    if warmup_iters > 0 and iteration <= warmup_iters:
        return max_lr * iteration / warmup_iters
    if style == "constant":
        return max_lr
    done = iteration - warmup_iters
    # The decay runs over what is left after warmup, unrounded (warmup_iters may be
    # fractional, so this span can be below one step), as in GPT-NeoX.
    span = decay_iters - warmup_iters
    if span <= 0:  # warmup: 1.0 leaves no decay span (GPT-NeoX divides by zero here)
        return min_lr
    if style == "linear":
        lr = max_lr * (span - done) / span  # below zero past decay_iters: min_lr
    elif style == "cosine":
        # Past decay_iters GPT-NeoX's cosine climbs back towards max_lr; neox holds
        # min_lr there instead (deliberately: "cosine to min_lr over lr_decay_iters").
        lr = min_lr + (max_lr - min_lr) / 2.0 * (math.cos(math.pi * min(done, span) / span) + 1)
    elif style == "exponential":
        # Halves every span and, as in GPT-NeoX, keeps halving past decay_iters (floored at min_lr).
        lr = max_lr * math.exp(-0.693 * done / span)
    else:  # pragma: no cover - the schema restricts the styles
        raise ValueError(f"unknown lr_decay_style {style!r}")
    return max(lr, min_lr)


class AnnealingLR:
    """A torch-style LR scheduler DeepSpeed can drive and checkpoint.

    Each param group may carry ``lr_scale`` (muP and friends scale the
    learning rate per tensor group); the schedule's value is multiplied by it.
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        max_lr: float,
        min_lr: float,
        warmup_iters: int,
        decay_iters: int,
        style: str,
        last_iter: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.max_lr, self.min_lr = max_lr, min_lr
        self.warmup_iters, self.decay_iters, self.style = warmup_iters, decay_iters, style
        self.num_iters = last_iter
        self._apply()

    def _lr(self) -> float:
        return lr_at(
            self.num_iters,
            max_lr=self.max_lr,
            min_lr=self.min_lr,
            warmup_iters=self.warmup_iters,
            decay_iters=self.decay_iters,
            style=self.style,
        )

    def _apply(self) -> None:
        lr = self._lr()
        for group in self.optimizer.param_groups:
            value = lr * group.get("lr_scale", 1.0)
            if hasattr(group["lr"], "fill_"):
                group["lr"].fill_(value)  # a tensor learning rate (torchao's optimizers) stays a tensor
            else:
                group["lr"] = value

    def step(self, increment: int = 1) -> None:
        self.num_iters += increment
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def get_lr(self) -> float:
        return self._lr()

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_iters": self.num_iters,
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "warmup_iters": self.warmup_iters,
            "decay_iters": self.decay_iters,
            "style": self.style,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The schedule's shape comes from the (possibly edited) config; only the position is restored.
        self.num_iters = int(state["num_iters"])
        self._apply()
