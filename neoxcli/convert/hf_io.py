"""Read and write Hugging Face model directories (config.json + safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neoxcli.convert._common import StateDict, cast_state
from neoxcli.errors import DataError


def load_hf_dir(path: str | Path) -> tuple[dict[str, Any], StateDict]:
    """``(config.json dict, state dict)`` from a directory of safetensors or ``pytorch_model*.bin`` files."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DataError(f"{path} has no config.json", hint="point at a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DataError(f"{config_file} is not valid JSON{line}") from None
    if not isinstance(config, dict):
        raise DataError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    state: StateDict = {}
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        for shard in shards:
            try:
                state.update(load_file(str(shard)))
            except Exception as exc:  # safetensors reports damage as its own error type
                raise DataError(f"cannot read {shard}: damaged or not safetensors ({exc})") from None
    else:
        from neoxcli.checkpoint import torch_load

        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise DataError(f"{path} has no *.safetensors or pytorch_model*.bin weights")
        for shard in bins:
            state.update(torch_load(shard))
    return config, state


def save_hf_dir(
    path: str | Path, config: dict[str, Any], state_dict: StateDict, dtype: torch.dtype | None = None
) -> None:
    """Write ``config.json`` and ``model.safetensors`` (one file; tensors made contiguous and unshared)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = cast_state(state_dict, dtype)
    config = dict(config)
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
