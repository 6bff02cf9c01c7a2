"""Counting a config's parameters: the vocabulary it would be padded to, and the model's sizes.

The model is built on PyTorch's meta device, so even a 20B config needs no
memory. torch and the model are imported only inside ``count_parameters``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neoxcli.config.derived import padded_vocab_size, vocab_size_from_file
from neoxcli.config.loader import dump_yaml
from neoxcli.config.schema import NeoXConfig

#: Tokenizer vocab sizes (without padding) of well-known tokenizers, by type, file name or Hub id.
KNOWN_VOCAB_SIZES: dict[str, int] = {
    "20b_tokenizer.json": 50277,
    "neox-20b-tokenizer.json": 50277,
    "eleutherai/gpt-neox-20b": 50277,
    "gpt2bpetokenizer": 50257,
    "gpt2-vocab.json": 50257,
    "gpt2": 50257,
    "hfgpt2tokenizer": 50258,
    "charleveltokenizer": 512,
    "huggyllama/llama-7b": 32000,
    "huggyllama/llama-13b": 32000,
    "meta-llama/llama-2-7b-hf": 32000,
    "meta-llama/llama-2-13b-hf": 32000,
}
DEFAULT_VOCAB_SIZE = 50277  # the GPT-NeoX-20B tokenizer, GPT-NeoX's and Pythia's


def count_vocab(cfg: NeoXConfig, vocab_size: int | None) -> tuple[int, str]:
    """(tokenizer vocab size, where it came from) for counting parameters."""
    if vocab_size is not None:
        return vocab_size, "--vocab-size"
    tok = cfg.tokenizer
    from_file = vocab_size_from_file(tok.vocab_file)
    if from_file is not None:
        return from_file, f"read from {tok.vocab_file}"
    names = [tok.tokenizer_type] + ([Path(tok.vocab_file).name] if tok.vocab_file else [])
    for name in reversed(names):
        key = name.lower()
        if key in KNOWN_VOCAB_SIZES:
            return KNOWN_VOCAB_SIZES[key], f"known size of {name}"
        if key.startswith("eleutherai/pythia-"):
            return 50277, f"known size of {name}"
    return DEFAULT_VOCAB_SIZE, "assumed: the GPT-NeoX-20B tokenizer's size; pass --vocab-size N"


def count_parameters(model_cfg: Any, padded_vocab: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of the model, built on the meta device (no memory)."""
    import torch

    from neoxcli.model import GPTModel, num_parameters

    with torch.device("meta"):
        model = GPTModel(model_cfg, padded_vocab)
    return num_parameters(model), num_parameters(model, exclude_embeddings=True)


def human(n: int) -> str:
    """``1.01B``, ``70.43M``, ``512``: a count for people."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def params_report(cfg: NeoXConfig, vocab_size: int | None = None) -> str:
    """What ``neox config show --params`` prints: comment lines, then a ``parameters:`` YAML block."""
    vocab, origin = count_vocab(cfg, vocab_size)
    divisible, mp = cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size
    padded = padded_vocab_size(vocab, divisible, mp)
    total, non_embedding = count_parameters(cfg.model, padded)
    lines = [
        f"# resolved from: {', '.join(cfg.sources)}\n",
        f"# vocab {vocab} ({origin}), padded to {padded}: a multiple of "
        f"make_vocab_size_divisible_by {divisible} x model_parallel_size {mp}\n",
        f"# {human(total)} parameters, {human(non_embedding)} without embeddings\n",
    ]
    data = {
        "parameters": {
            "total": total,
            "non_embedding": non_embedding,
            "vocab_size": vocab,
            "padded_vocab_size": padded,
        }
    }
    return "".join(lines) + dump_yaml(data)
