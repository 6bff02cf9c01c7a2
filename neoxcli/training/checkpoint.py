"""Checkpoint layout and loading.

A checkpoint directory looks like GPT-NeoX's: ``{save}/latest`` names the tag,
``{save}/global_step{N}/`` holds DeepSpeed's files (``mp_rank_XX_model_states.pt``
per tensor-parallel rank, per-layer files under pipeline parallelism, optimizer
shards) plus ``config.yml`` (the resolved config), the tokenizer,
``layout.json`` and the layout-free ``portable_pp*_tp*.pt`` files
(``neoxcli.parallel.portable``). ``latest`` is written last, atomically, once
everything else is on disk, so a crash mid-save never leaves a pointer to a
half-written checkpoint. Loading for inference merges the shards of any
tensor/pipeline layout (``neoxcli.parallel.reshard``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoxcli.errors import NeoxError
from neoxcli.fileio import atomic_write_text

if TYPE_CHECKING:
    from neoxcli.config.schema import ModelConfig

CONFIG_NAME = "config.yml"
TOKENIZER_NAME = "tokenizer.json"
_STEP_RE = re.compile(r"^global_step(\d+)$")


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def write_latest(save_dir: Path, tag: str) -> None:
    atomic_write_text(save_dir / "latest", tag)


def read_latest(save_dir: Path) -> str | None:
    latest = save_dir / "latest"
    if not latest.is_file():
        return None
    return latest.read_text(encoding="utf-8").strip() or None


def list_checkpoints(save_dir: Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoints under ``save_dir``, oldest first."""
    found = []
    if save_dir.is_dir():
        for child in save_dir.iterdir():
            m = _STEP_RE.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
    return sorted(found)


def prune_checkpoints(save_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    if not keep_last:
        return []
    latest = read_latest(save_dir)
    ckpts = list_checkpoints(save_dir)
    removed = []
    for _, path in ckpts[: max(len(ckpts) - keep_last, 0)]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def resolve_checkpoint(path: str | Path, tag: str | None = None) -> Path:
    """Turn a save directory (with ``latest``) or a tag directory into the tag directory."""
    p = Path(path)
    if not p.exists():
        raise NeoxError(f"checkpoint not found: {p}")
    if tag is not None:
        tagged = p / tag
        if not tagged.is_dir():
            raise NeoxError(f"checkpoint {p} has no tag {tag!r}")
        return tagged
    if (p / CONFIG_NAME).is_file() and (any(p.glob("*model_states.pt")) or any(p.glob("portable_*.pt"))):
        return p
    latest = read_latest(p)
    if latest is None:
        raise NeoxError(
            f"{p} is not a neox checkpoint (no 'latest' file and no model states)",
            hint="pass the directory given as `save:` in the training config, or one of its global_step* folders",
        )
    tagged = p / latest
    if not tagged.is_dir():
        raise NeoxError(f"{p}/latest names {latest!r}, which does not exist")
    return tagged


def torch_load(path: Path, *, weights_only: bool = False) -> Any:
    """``torch.load`` onto the CPU; a damaged or foreign file is one error naming it, not a traceback.

    torch reports a truncated or overwritten file as whichever low-level error
    its reader hits first (zip, pickle, struct, EOF), none of which names the file.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # every reader error of a damaged file means the same to the user
        raise NeoxError(
            f"cannot read {path}: damaged or not a PyTorch checkpoint ({type(exc).__name__})",
            hint="the file is truncated or overwritten; copy it again from where it was written",
        ) from None


def check_module_state(expected: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
    """Fail with one error line when ``state`` does not fit a model whose ``state_dict()`` is ``expected``.

    ``torch``'s strict ``load_state_dict`` would say the same as a multi-line
    RuntimeError; this names the first missing, unexpected or mis-shaped tensor
    and where the weights came from.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        more = len(missing) + len(unexpected) - 1
        raise NeoxError(
            f"{source}: {what}" + (f" ({more} more mismatches)" if more else ""),
            hint="the weights do not belong to the model its config describes",
        )
    for name, ref in expected.items():
        got = tuple(state[name].shape)
        if got != tuple(ref.shape):
            raise NeoxError(
                f"{source}: tensor {name!r} has shape {list(got)}, the model needs {list(ref.shape)}",
                hint="the weights do not belong to the model its config describes",
            )


def load_module_state(tag_dir: Path, model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The full model's weights from a checkpoint of any tensor/pipeline layout, without DeepSpeed.

    A single shard's DeepSpeed module file is returned as stored. Several
    shards (``model_parallel_size`` or ``pipe_parallel_size`` > 1) are merged
    from their layout-free files (fp32) or else from DeepSpeed's per-rank
    module files; merging needs the model config (``model_cfg``, default: the
    checkpoint's config.yml).
    """

    from neoxcli.parallel import reshard

    flat = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    layered = sorted(tag_dir.glob("layer_*-model_*-model_states.pt"))
    portable = reshard.portable_files(tag_dir)
    if not (flat or layered or portable):
        raise NeoxError(
            f"no model states (mp_rank_*_model_states.pt or layer_*-model_states.pt) in {tag_dir}"
        )
    if len(flat) == 1 and not layered:
        # DeepSpeed stores a few non-tensor objects next to the weights, so weights_only is off;
        # the file is one this tool (or the user's own GPT-NeoX run) wrote.
        blob = torch_load(flat[0])
        module = blob.get("module") if isinstance(blob, dict) else None
        if module:
            return dict(module)
        if not portable:
            raise NeoxError(
                f"{flat[0]} holds no full model weights (ZeRO-3 partitions them)",
                hint="consolidate with DeepSpeed's zero_to_fp32.py, or save with portable_checkpoint: true",
            )
    if model_cfg is None:
        model_cfg = _saved_model_config(tag_dir)
    if portable:
        merged = reshard.merge_portable(tag_dir, model_cfg, moments=False)["params"]
        return {name: entry["fp32"] for name, entry in merged.items()}
    return reshard.merge_module_files(tag_dir, model_cfg)


def _saved_model_config(tag_dir: Path) -> ModelConfig:
    from neoxcli.config import load_config

    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}, which merging its shards needs")
    return load_config([cfg_path], warn=lambda _msg: None).model


def load_for_inference(path: str | Path, tag: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """Load (model, tokenizer, config) from a checkpoint for sampling or evaluation."""
    import torch

    from neoxcli.config import load_config, padded_vocab_size
    from neoxcli.data.tokenizer import build_tokenizer
    from neoxcli.model import GPTModel

    tag_dir = resolve_checkpoint(path, tag)
    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}; was it written by neox?")
    cfg = load_config([cfg_path])
    tok_path = tag_dir / TOKENIZER_NAME
    tokenizer = build_tokenizer(
        cfg.tokenizer.tokenizer_type,
        str(tok_path) if tok_path.is_file() else cfg.tokenizer.vocab_file,
        cfg.tokenizer.merge_file,
    )
    state = load_module_state(tag_dir, cfg.model)
    vocab = padded_vocab_size(
        tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size
    )
    model = GPTModel(cfg.model, vocab)
    check_module_state(model.state_dict(), state, f"the checkpoint {tag_dir}")
    model.load_state_dict(state)
    model.to(device=device, dtype=torch.float32).eval()
    return model, tokenizer, cfg


def finalize_tag(save_dir: Path, tag: str, cfg: Any) -> None:
    """Rank 0's part of a save after DeepSpeed's files: config, tokenizer, then ``latest``, then pruning."""
    from neoxcli.config import dump_config

    tag_dir = save_dir / tag
    atomic_write_text(tag_dir / CONFIG_NAME, dump_config(cfg))
    vocab = cfg.tokenizer.vocab_file
    if vocab and Path(vocab).is_file() and cfg.tokenizer.tokenizer_type == "HFTokenizer":
        shutil.copyfile(vocab, tag_dir / TOKENIZER_NAME)
    write_latest(save_dir, tag)
    prune_checkpoints(save_dir, cfg.checkpoint.keep_last_n_checkpoints)
