"""Layout-free training state: the checkpoint format training writes, resumable under any parallel layout.

Each checkpoint holds ``portable_pp{stage}_tp{rank}.pt`` (one per pipeline
stage and tensor-parallel rank, written by data-parallel rank 0): for every
parameter of that shard, the full fp32 value and each optimizer state tensor
(Adam's ``exp_avg``/``exp_avg_sq``, an 8-bit optimizer's own), plus the step
count, the LR scheduler, the engine's counters (skipped steps, loss scaler)
and the run's client state (iteration, samples, RNG states).

These files are the checkpoint's single source of truth: DeepSpeed's own
files (``mp_rank_*_model_states.pt``, ZeRO's ``*optim_states.pt``) are not
written beside them, so each tensor is on disk once (about 1.0x the fp32
weights plus optimizer state, where the two formats together were 2x).
Every resume restores a freshly built engine from them, the same layout
included: the values set are exactly those the engine held when it saved
(fp32 masters, states in their own dtypes, ``step``, scheduler, RNG), and with
the same layout the gradient all-reduce sums in the same order, so the
resumed run is bit-identical to an uninterrupted one. With the same tensor- and pipeline-parallel
sizes each shard reads its own file (ZeRO stage or data-parallel size may
differ); when they change, ``neoxcli.checkpoint.reshard`` merges all files
into the full model and cuts out the new shard, weights and states alike.

``portable_checkpoint: false`` writes DeepSpeed's files instead (for its
tools, such as ``zero_to_fp32.py``); they resume only under the layout they
were saved with, through DeepSpeed's loader, as do checkpoints written before
this format stood alone. ``save_optimizer: false`` writes the weights only
and records ``"weights_only": true`` in ``layout.json``: such a checkpoint
loads for generation, evaluation and finetuning and refuses an exact resume.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from neoxcli.checkpoint.io import check_state_fits, torch_load
from neoxcli.errors import NeoxError
from neoxcli.parallel.grid import Layout

LAYOUT_NAME = "layout.json"
_PORTABLE_RE = re.compile(r"^portable_pp(\d+)_tp(\d+)\.pt$")


def portable_name(stage: int, tp_rank: int) -> str:
    return f"portable_pp{stage:02d}_tp{tp_rank:02d}.pt"


def write_layout(tag_dir: Path, layout: Layout, weights_only: bool = False) -> None:
    """Record the layout a checkpoint was saved under (read before any engine exists), and whether
    it holds weights only."""
    from neoxcli.fileio import atomic_write_text

    data: dict[str, Any] = layout.as_dict()
    if weights_only:
        data["weights_only"] = True
    atomic_write_text(tag_dir / LAYOUT_NAME, json.dumps(data) + "\n")


def is_weights_only(tag_dir: Path) -> bool:
    """Whether ``tag_dir`` was saved without optimizer state (``save_optimizer: false``)."""
    path = tag_dir / LAYOUT_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("weights_only") is True


def require_optimizer_state(tag_dir: Path) -> None:
    """Refuse an exact resume of a weights-only checkpoint, before any model is built."""
    if is_weights_only(tag_dir):
        raise weights_only_error(tag_dir)


def weights_only_error(where: Path | str) -> NeoxError:
    """The one line a resume of a weights-only checkpoint gets."""
    return NeoxError(
        f"{where} holds weights only (saved with save_optimizer: false), so a run cannot resume from it exactly",
        hint="finetune from it (finetune: true), or use it for neox generate / neox eval",
    )


def has_engine_files(tag_dir: Path) -> bool:
    """Whether ``tag_dir`` holds DeepSpeed's own files (``portable_checkpoint: false``, or an older save)."""
    return any(tag_dir.glob("*model_states.pt"))


def read_layout(tag_dir: Path) -> Layout | None:
    path = tag_dir / LAYOUT_NAME
    if not path.is_file():
        return None
    return Layout.from_dict(json.loads(path.read_text(encoding="utf-8")))


def portable_files(tag_dir: Path) -> dict[tuple[int, int], Path]:
    """``(stage, tp_rank) -> portable_ppSS_tpRR.pt`` found in a checkpoint directory."""
    found = {}
    for path in tag_dir.glob("portable_pp*_tp*.pt"):
        m = _PORTABLE_RE.match(path.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = path
    return found


def missing_portable(tag_dir: Path, saved: Layout) -> list[str]:
    """The portable files of the ``saved`` layout's shards that ``tag_dir`` lacks."""
    have = portable_files(tag_dir)
    return [portable_name(s, r) for s in range(saved.pp) for r in range(saved.tp) if (s, r) not in have]


def require_portable(tag_dir: Path, saved: Layout, layout: Layout) -> None:
    """Raise unless ``tag_dir`` holds the portable file of every shard of its ``saved`` layout."""
    if not missing_portable(tag_dir, saved):
        return
    raise NeoxError(
        f"{tag_dir} was saved with model_parallel_size {saved.tp} and pipe_parallel_size {saved.pp} "
        f"(now {layout.tp} and {layout.pp}) and has no complete layout-free state (portable_pp*_tp*.pt), "
        "so it cannot be re-split for this layout",
        hint=f"resume with model_parallel_size: {saved.tp} and pipe_parallel_size: {saved.pp} "
        "(save with portable_checkpoint: true to be able to change them later)",
    )


def check_resume_layout(
    saved: Layout,
    layout: Layout,
    where: Path,
    saved_partition: str | None = None,
    partition: str | None = None,
) -> str | None:
    """How to resume a checkpoint saved under ``saved`` with ``layout``.

    None: same layout, DeepSpeed's own files. ``"portable"``: each shard
    reads its layout-free file (the ZeRO stage or data-parallel size changed,
    or the checkpoint holds only the layout-free files).
    ``"reshard"``: tensor- or pipeline-parallel size (or the pipeline's
    partition method) changed, so every rank merges all shards' layout-free
    files and cuts out its own; refused here when they were not saved.
    """
    cuts = (saved.tp, saved.pp) != (layout.tp, layout.pp)
    if not cuts and layout.pp > 1 and saved_partition is not None and partition is not None:
        cuts = saved_partition.strip().lower() != partition.strip().lower()
    if cuts:
        require_portable(where, saved, layout)
        return "reshard"
    return "portable" if saved != layout or not has_engine_files(where) else None


def load_portable(tag_dir: Path, stage: int, tp_rank: int) -> dict[str, Any]:
    path = tag_dir / portable_name(stage, tp_rank)
    if not path.is_file():
        raise NeoxError(
            f"{tag_dir} has no layout-free state ({path.name}), so it only resumes under the layout it was saved with",
            hint="resume with its original process count and zero stage (portable_checkpoint was off when it was saved)",
        )
    return torch_load(path)


def load_module_weights(
    module: Any,
    state: dict[str, Any],
    source: str = "the checkpoint's layout-free state",
    *,
    tag_dir: Path | None = None,
    model_cfg: Any = None,
) -> None:
    """Put the saved fp32 weights into the (not yet DeepSpeed-wrapped) module.

    With ``tag_dir`` (and the run's ``model_cfg``) a mismatch names the
    checkpoint and the model settings that differ from its config.yml.
    """
    import torch

    from neoxcli.checkpoint.io import _model_differences

    named = dict(module.named_parameters())
    weights = {name: entry["fp32"] for name, entry in state["params"].items()}
    hint = "resume with the model settings the checkpoint was trained with"
    if tag_dir is not None:
        source = f"checkpoint {tag_dir} does not fit this model"
        hint = _model_differences(tag_dir, model_cfg) or hint
    check_state_fits(named, weights, source, hint=hint)
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(weights[name].to(p.dtype))
