"""What several bench scripts set up alike: model-shape arguments, the Hugging Face baseline, timed rounds.

A bench script is run as ``python bench/X.py``, so this folder is first on ``sys.path`` and
``from _common import ...`` finds this module; the repository root is added here so the scripts
measure this checkout's ``neoxcli`` rather than whichever copy is installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def add_shape_args(
    ap: argparse.ArgumentParser,
    *,
    layers: int,
    hidden: int,
    heads: int | None = None,
    vocab: int | None = None,
    seq: int | None = None,
    batch: int | None = None,
) -> None:
    """``--layers --hidden`` and, for each default given, ``--heads --vocab --seq --batch``."""
    ap.add_argument("--layers", type=int, default=layers)
    ap.add_argument("--hidden", type=int, default=hidden)
    for name, default in (("heads", heads), ("vocab", vocab), ("seq", seq), ("batch", batch)):
        if default is not None:
            ap.add_argument(f"--{name}", type=int, default=default)


def hf_gptneox_config(
    *, vocab: int, hidden: int, layers: int, heads: int, seq: int, rotary_pct: float, **extra: Any
) -> Any:
    """Transformers' GPTNeoXConfig of a Pythia-shaped model: parallel residual, untied head, 4x MLP.

    The baseline every training and forward bench compares against, so all of them mean the same
    model by "Hugging Face"; ``extra`` sets further GPTNeoXConfig fields.
    """
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=seq,
        rotary_pct=rotary_pct,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        **extra,
    )


def hf_training_baseline(**shape: Any) -> Any:
    """``hf_gptneox_config`` as the training benches time it: neox's GELU, no dropout, SDPA attention."""
    cfg = hf_gptneox_config(**shape, hidden_act="gelu", attention_dropout=0.0, hidden_dropout=0.0)
    cfg._attn_implementation = "sdpa"
    return cfg


def best_seconds(fn: Callable[[], Any], reps: int) -> float:
    """The fastest of ``reps`` timed calls of ``fn`` (warm it up first): one descheduled call does not count."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed_rounds(
    steps: dict[str, Callable[[], Any]], rounds: int, per_round: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """(wall, CPU) seconds per call of each step, one pair per round, and what each step last returned.

    The steps take turns each round, which spreads load from other processes over every contender alike. CPU seconds (this
    process, all threads) move far less than wall time on a shared machine.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    last: dict[str, Any] = {}
    for _ in range(rounds):
        for name, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                last[name] = step()
            times[name].append(((time.perf_counter() - t) / per_round, (time.process_time() - c) / per_round))
    return times, last
