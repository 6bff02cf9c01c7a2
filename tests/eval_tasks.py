"""Builders shared by the evaluation tests: a tiny random checkpoint with a BPE tokenizer and local lm-eval tasks.

The tasks cover lm-eval's four output types over jsonl files written next to
their YAML (``dataset_path: json`` with absolute ``data_files``), so nothing
needs a dataset hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = (
    "the quick brown fox jumps over the lazy dog while five dozen liquor jugs pack my box and "
    "daft zebras jump quickly over seven wizards who box at dawn near the old stone bridge"
).split()

TOKENIZER_TEXT = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3

#: a Pythia-style block: partial rotary, parallel residual, untied head (GPT-NeoX on export)
MODEL: dict[str, Any] = dict(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    seq_length=64,
    pos_emb="rotary",
    rotary_pct=0.25,
    gpt_j_residual=True,
    no_weight_tying=True,
)


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def write_checkpoint(save: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random one-rank checkpoint (``latest`` -> ``global_step1``) with a 300-token byte-level BPE."""
    import torch

    from neoxcli.checkpoint import write_checkpoint as write
    from neoxcli.config import padded_vocab_size
    from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig
    from neoxcli.data.tokenizer import train_bpe_tokenizer
    from neoxcli.model import GPTModel

    tok_path = save.parent / f"{save.name}-tokenizer.json"
    tok = train_bpe_tokenizer(TOKENIZER_TEXT, vocab_size=300, out_path=tok_path, min_frequency=1)
    model_cfg = ModelConfig(**{**MODEL, **overrides})
    cfg = NeoXConfig(
        model=model_cfg, tokenizer=TokenizerConfig(tokenizer_type="HFTokenizer", vocab_file=str(tok_path))
    )
    torch.manual_seed(seed)
    model = GPTModel(model_cfg, padded_vocab_size(tok.vocab_size, model_cfg.make_vocab_size_divisible_by, 1))
    with torch.no_grad():  # non-trivial norms and biases, and logits spread enough to matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    write(save, cfg, model.state_dict(), iteration=1, tokenizer=tok.backend)
    return save


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path.resolve())


def _yaml(path: Path, body: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def write_tasks(root: Path, docs: int = 8) -> dict[str, Path]:
    """Four task YAML files (one per output type) and their data; name -> YAML path."""
    root.mkdir(parents=True, exist_ok=True)
    mc = _jsonl(
        root / "mc.jsonl",
        [
            {
                "question": f"Question {i}: {sentence(i, 5)}?",
                "choices": [sentence(i + c, 1 + (i + c) % 4) for c in range(4)],
                "label": i % 4,
            }
            for i in range(docs)
        ],
    )
    ll = _jsonl(
        root / "ll.jsonl",
        [{"context": sentence(i, 3 + i % 6) + " ", "target": sentence(i + 1, 1 + i % 3)} for i in range(docs)]
        + [{"context": "", "target": sentence(99, 4)}],  # empty context: the prefix token
    )
    rolling = _jsonl(
        root / "rolling.jsonl",
        [{"text": sentence(i, 4 + 23 * i)} for i in range(docs)],  # up to ~3 windows of 64 tokens
    )
    gen = _jsonl(
        root / "gen.jsonl",
        [{"prompt": sentence(i, 2 + i % 5), "answer": sentence(i + 2, 2)} for i in range(docs)],
    )

    def data(path: str) -> dict[str, Any]:
        return {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": path}},
            "test_split": "test",
        }

    tasks = {
        "tiny_mc": {
            **data(mc),
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        },
        "tiny_ll": {
            **data(ll),
            "output_type": "loglikelihood",
            "doc_to_text": "{{context}}",
            "doc_to_target": "{{target}}",
            "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
        },
        "tiny_rolling": {
            **data(rolling),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {"metric": "word_perplexity"},
                {"metric": "byte_perplexity"},
                {"metric": "bits_per_byte"},
            ],
        },
        "tiny_gen": {
            **data(gen),
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": [".", "\n\n"], "max_gen_toks": 12, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}],
        },
    }
    return {name: _yaml(root / f"{name}.yaml", {"task": name, **body}) for name, body in tasks.items()}


#: a few hundred tokens of plain text, documents separated by blank lines
DOCS_TEXT = "\n\n".join(sentence(i, 12 + 9 * i) for i in range(6)) + "\n"
