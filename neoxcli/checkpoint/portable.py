"""Layout-free training state, so a run can resume under another parallel layout.

DeepSpeed's own files partition fp32 weights and Adam moments by ZeRO stage
and data-parallel rank, and its loader refuses any other data-parallel size.
Next to them each checkpoint holds ``portable_pp{stage}_tp{rank}.pt`` (one per
pipeline stage and tensor-parallel rank, written by data-parallel rank 0):
for every parameter of that shard, the full fp32 value and Adam's
``exp_avg``/``exp_avg_sq``, plus the step count, the LR scheduler and the
run's client state. Loading it sets exactly those values under the new layout,
so training continues as it would have (up to the summation order of the new
gradient all-reduce). With the same tensor- and pipeline-parallel sizes each
shard reads its own file (ZeRO stage or data-parallel size changed); when they
change, ``neoxcli.checkpoint.reshard`` merges all files into the full model and
cuts out the new shard, weights and moments alike.
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


def write_layout(tag_dir: Path, layout: Layout) -> None:
    """Record the layout a checkpoint was saved under (read before any engine exists)."""
    from neoxcli.fileio import atomic_write_text

    atomic_write_text(tag_dir / LAYOUT_NAME, json.dumps(layout.as_dict()) + "\n")


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

    None: same layout, DeepSpeed's own files. ``"portable"``: ZeRO stage or
    data-parallel size changed, each shard reads its layout-free file.
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
    return "portable" if saved != layout else None


def load_portable(tag_dir: Path, stage: int, tp_rank: int) -> dict[str, Any]:
    path = tag_dir / portable_name(stage, tp_rank)
    if not path.is_file():
        raise NeoxError(
            f"{tag_dir} has no layout-free state ({path.name}), so it only resumes under the layout it was saved with",
            hint="resume with its original process count and zero stage (portable_checkpoint was off when it was saved)",
        )
    return torch_load(path)


def load_module_weights(
    module: Any, state: dict[str, Any], source: str = "the checkpoint's layout-free state"
) -> None:
    """Put the saved fp32 weights into the (not yet DeepSpeed-wrapped) module."""
    import torch

    named = dict(module.named_parameters())
    weights = {name: entry["fp32"] for name, entry in state["params"].items()}
    check_state_fits(
        named, weights, source, hint="resume with the model settings the checkpoint was trained with"
    )
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(weights[name].to(p.dtype))
