"""Load a model for sampling or evaluation from whatever directory the user has.

A neox checkpoint (any layout), a Hugging Face model directory (GPT-NeoX,
GPT-J, Llama, GPT-2: mapped in memory, no converted copy is written) or a
GPT-NeoX checkpoint (its shards merged in memory, its own YAML read from
``configs/``). Each returns ``(model, tokenizer, config)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def checkpoint_kind(path: Path, tag: str | None = None) -> str:
    """``"neox"``, ``"hf"`` or ``"gpt-neox"``: which loader reads ``path``."""
    from neoxcli.checkpoint import CONFIG_NAME, read_latest

    if not path.is_dir():
        return "neox"  # let the neox loader say what is missing
    step = path / tag if tag else path
    latest = read_latest(path) if tag is None and (path / "latest").is_file() else None
    if latest:
        step = path / latest
    if (step / CONFIG_NAME).is_file() or (path / CONFIG_NAME).is_file():
        return "neox"
    if (path / "config.json").is_file():
        return "hf"
    if (step / "configs").is_dir() or (path / "configs").is_dir():
        return "gpt-neox"
    return "neox"


def load_any_for_inference(
    path: str | Path, tag: str | None = None, device: str = "cpu"
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, config) from a neox, Hugging Face or GPT-NeoX directory."""
    path = Path(path)
    kind = checkpoint_kind(path, tag)
    if kind == "hf":
        from neoxcli.convert.cli_ops import load_hf_for_inference
        from neoxcli.errors import NeoxError

        if tag is not None:
            raise NeoxError(f"{path} is a Hugging Face model directory: it has no tags (drop --tag)")
        return load_hf_for_inference(path, device)
    if kind == "gpt-neox":
        from neoxcli.convert.neox_checkpoint import load_gpt_neox_for_inference

        return load_gpt_neox_for_inference(path, tag, device)
    from neoxcli.checkpoint import load_for_inference

    return load_for_inference(path, tag, device)
