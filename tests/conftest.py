"""Shared builders for the tests: tiny models, a tiny character-level corpus and a training config over it.

Plain functions rather than fixtures, so a test can ask for a variant with keyword overrides
(``tiny_model_config(pos_emb="alibi")``, ``tiny_train_config(tmp, **{"train-iters": 4})``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

# Triton decides at decoration time whether a kernel runs in its CPU interpreter, so the switch
# must be set before any test imports Triton (inductor and liger-kernel import it too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests compare CPU runs bit for bit (with Hugging Face, across layouts): precision: auto stays
# fp32 even on CPUs with fast bf16 (AMX), except where a test asks for the detection itself.
os.environ.setdefault("NEOX_CPU_BF16", "0")

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "pack my box with five dozen liquor jugs. "
    "how vexingly quick daft zebras jump! "
)


def tiny_model_config(**overrides: Any) -> Any:
    """A two-layer, 32-wide rotary model: big enough for every code path, fast on one core."""
    from neoxcli.config.schema import ModelConfig

    base: dict[str, Any] = dict(
        num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, pos_emb="rotary", rotary_pct=0.5
    )
    base.update(overrides)
    return ModelConfig(**base)


def write_char_corpus(prefix: Path, docs: int = 120) -> None:
    """A GPT-NeoX ``.bin/.idx`` dataset of ``docs`` pangram snippets, character-level, EOD after each."""
    import numpy as np

    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.data.tokenizer import build_tokenizer

    tok = build_tokenizer("CharLevelTokenizer")
    rng = np.random.RandomState(0)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(docs):
            start = rng.randint(0, len(TEXT) - 40)
            text = (TEXT * 3)[start : start + 60 + rng.randint(0, 60)]
            w.add_document(tok.encode(text) + [tok.eod_id])


def tiny_train_config(tmp: Path, **over: object) -> Path:
    """``tmp/tiny.yml``: 30 iterations of a 2-layer model on the corpus above, checkpoints at 15 and 30."""
    import yaml

    prefix = tmp / "data" / "tiny_text_document"
    if not (tmp / "data").exists():
        (tmp / "data").mkdir()
        write_char_corpus(prefix)
    cfg = {
        "num-layers": 2,
        "hidden-size": 64,
        "num-attention-heads": 4,
        "seq-length": 32,
        "max-position-embeddings": 32,
        "pos-emb": "rotary",
        "rotary-pct": 0.5,
        "gpt-j-residual": True,
        "norm": "layernorm",
        "tokenizer-type": "CharLevelTokenizer",
        "data-path": str(prefix),
        "split": "90,10,0",
        "optimizer": {"type": "Adam", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
        "train_micro_batch_size_per_gpu": 8,
        "train-iters": 30,
        "lr-decay-style": "cosine",
        "warmup": 0.1,
        "min-lr": 3e-4,
        "eval-interval": 10,
        "eval-iters": 2,
        "save": str(tmp / "run"),
        "load": str(tmp / "run"),
        "checkpoint-factor": 15,
        "log-interval": 10,
        "seed": 1234,
    }
    cfg.update(over)
    path = tmp / "tiny.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path
