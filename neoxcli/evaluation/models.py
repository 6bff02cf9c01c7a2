"""What is evaluated: a neox checkpoint, or a Hugging Face directory converted in memory.

Checkpoints load only through ``neoxcli.checkpoint.load_for_inference``; a Hugging
Face directory goes through ``neoxcli.convert`` (the same maps as ``neox convert
--from hf``) without writing anything, so both give a ``GPTModel`` and a neox tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError, NeoxError


@dataclass
class LoadedModel:
    """A model ready for evaluation, and where it came from (recorded in results)."""

    model: Any
    tokenizer: Any
    model_config: Any
    source: dict[str, Any] = field(default_factory=dict)


def _torch_dtype(name: str, device: str = "cpu") -> Any:
    import torch

    if name.lower() == "auto":  # what ``precision: auto`` picks for training on this device
        from neoxcli.model.precision import auto_dtype

        return auto_dtype(device)[0]
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    table |= {"fp16": torch.float16, "float16": torch.float16}
    if name.lower() not in table:
        raise NeoxError(f"unknown --dtype {name!r}", hint="use auto, fp32, bf16 or fp16")
    return table[name.lower()]


def pick_device(device: str | None) -> str:
    """``cuda`` when a GPU is there and none was asked for, else ``cpu``."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise NeoxError(f"--device {device}: no CUDA device is available")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _on_cpu(device: str) -> None:
    if device == "cpu":
        from neoxcli.cpu_memory import keep_freed_memory

        # Each scored batch's [batch, tokens, vocab] logits (hundreds of MB at a 50k vocabulary)
        # would otherwise be mapped and zeroed afresh: ~0.4 s of system time per batch of 8 x 256.
        keep_freed_memory()


def load_checkpoint(path: Path, tag: str | None, device: str, dtype: str) -> LoadedModel:
    """A neox checkpoint directory (``latest`` or ``tag``)."""
    from neoxcli.checkpoint import load_for_inference, resolve_checkpoint

    _on_cpu(device)

    tag_dir = resolve_checkpoint(path, tag)
    try:
        model, tokenizer, cfg = load_for_inference(path, tag)
    except NeoxError:
        raise
    except Exception as exc:  # a damaged file surfaces as torch's or pickle's own error
        raise DataError(f"cannot load the checkpoint {tag_dir}: {type(exc).__name__}: {exc}") from None
    model.to(device=device, dtype=_torch_dtype(dtype, device))
    return LoadedModel(
        model, tokenizer, cfg.model, {"checkpoint": str(Path(path).resolve()), "tag": tag_dir.name}
    )


def load_hf(path: Path, device: str, dtype: str) -> LoadedModel:
    """A Hugging Face model directory, converted to a neox model in memory (as ``neox generate -c`` does)."""
    from neoxcli.convert.cli_ops import load_hf_for_inference

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--hf {path}: no such directory")
    _on_cpu(device)
    model, tokenizer, cfg = load_hf_for_inference(path, device)
    model.to(dtype=_torch_dtype(dtype, device))
    return LoadedModel(model, tokenizer, cfg.model, {"hf_dir": str(path.resolve())})
