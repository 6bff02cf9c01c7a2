"""GPT-NeoX's generation settings (``configs/text_generation.yml``) read as ``neox generate``'s options.

GPT-NeoX runs ``generate.py cfg.yml text_generation.yml``: the model config's
``load`` names the checkpoint, the generation file picks the mode and the
sampling. Their meanings are kept: ``temperature: 0.0`` is greedy,
``top_p: 0.0`` and ``top_k: 0`` are off, ``maximum_tokens`` is the number of
new tokens, ``prompt_end`` separates prompts in ``sample_input_file``,
``recompute: true`` samples without the KV cache (same tokens, slower).
``dtype`` (neox's own: ``auto``, ``fp32``, ``bf16``, ``fp16``) is ``--dtype``. Every
other key must be one a neox or GPT-NeoX config has, so a typo is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.errors import ConfigError

MODES = ("unconditional", "input-file", "interactive")
GENERATION_KEYS = (
    "text_gen_type",
    "maximum_tokens",
    "prompt_end",
    "temperature",
    "top_p",
    "top_k",
    "num_samples",
    "sample_input_file",
    "sample_output_file",
    "recompute",
    "return_logits",
    "dtype",
)


@dataclass
class GenerationConfig:
    """What the files say, in neox's terms; None where they say nothing."""

    checkpoint: str | None = None
    mode: str | None = None
    max_new_tokens: int | None = None
    prompt_end: str = "\n"
    temperature: float | None = None
    greedy: bool = False
    top_p: float | None = None
    top_k: int | None = None
    num_samples: int | None = None
    input_file: str | None = None
    output_file: str | None = None
    recompute: bool = False
    return_logits: bool = False
    dtype: str | None = None
    sources: list[str] = field(default_factory=list)


def _number(value: Any, key: str, label: str, kind: type) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise ConfigError(
            f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r} (in {label})"
        )
    return kind(value)


def read_generation_config(paths: list[str]) -> GenerationConfig:
    """Merge the files left to right into a ``GenerationConfig``."""
    import difflib

    from neoxcli.config.loader import read_config_file
    from neoxcli.config.neox_keys import GPT_NEOX_KEYS
    from neoxcli.config.schema import SECTIONS, field_index

    known = set(GPT_NEOX_KEYS) | set(field_index()) | set(SECTIONS) | {"hf_id"}
    out = GenerationConfig()
    for path in paths:
        label, data = read_config_file(path)
        out.sources.append(label)
        for raw, value in data.items():
            key = str(raw).replace("-", "_")
            if key not in GENERATION_KEYS:
                if key not in known:
                    near = difflib.get_close_matches(key, [*GENERATION_KEYS, *known], n=1)
                    raise ConfigError(
                        f"unknown key {raw!r} in {label}",
                        hint=f"did you mean {near[0]!r}?"
                        if near
                        else "see GPT-NeoX's configs/text_generation.yml",
                    )
                if key == "load" and value:
                    out.checkpoint = str(value)
                continue
            _apply(out, key, value, label)
    return out


def _apply(out: GenerationConfig, key: str, value: Any, label: str) -> None:
    if key == "text_gen_type":
        if value not in MODES:
            raise ConfigError(f"text_gen_type: {value!r} is not one of {', '.join(MODES)} (in {label})")
        out.mode = value
    elif key == "maximum_tokens":
        out.max_new_tokens = _number(value, key, label, int)
    elif key == "prompt_end":
        out.prompt_end = str(value)
    elif key == "temperature":
        t = _number(value, key, label, float)
        out.temperature, out.greedy = t, t == 0.0
    elif key == "top_p":
        p = _number(value, key, label, float)
        out.top_p = 1.0 if p == 0.0 else p  # GPT-NeoX: 0.0 means off
    elif key == "top_k":
        out.top_k = _number(value, key, label, int)
    elif key == "num_samples":
        out.num_samples = _number(value, key, label, int)
    elif key in ("sample_input_file", "sample_output_file"):
        setattr(
            out, "input_file" if key == "sample_input_file" else "output_file", str(value) if value else None
        )
    elif key == "dtype":
        from neoxcli.generation.placement import DTYPES

        if not isinstance(value, str) or value.strip().lower() not in DTYPES:
            raise ConfigError(f"dtype: {value!r} is not one of {', '.join(DTYPES)} (in {label})")
        out.dtype = value.strip().lower()
    elif key in ("recompute", "return_logits"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r} (in {label})")
        setattr(out, key, value)


def read_prompt_file(path: Path, prompt_end: str | None = None) -> list[str]:
    """Prompts of an input file: ``.jsonl`` with a ``prompt`` or ``text`` key, else one per line.

    With ``prompt_end`` (GPT-NeoX's key) the text is split on it instead, so a
    prompt can span lines; empty pieces are dropped.
    """
    import json

    from neoxcli.errors import NeoxError

    if not path.is_file():
        raise NeoxError(f"input file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise NeoxError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NeoxError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            value = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(value, str):
                raise NeoxError(
                    f"{path}:{n}: no 'prompt' or 'text' string", hint='write {"prompt": "..."} per line'
                )
            prompts.append(value)
    elif prompt_end is None:
        prompts = text.splitlines()
    else:
        prompts = [p for p in text.split(prompt_end) if p.strip()]
    if not prompts:
        raise NeoxError(f"{path} holds no prompts", hint="write one prompt per line")
    return prompts
