"""Tags: which ``global_step{N}`` a save directory's ``latest`` names, listing, pruning, resolving.

A save directory holds one tag directory per checkpoint and ``latest``, which
names the newest complete one. ``latest`` is written last, atomically, once
everything else is on disk, so a crash mid-save never leaves a pointer to a
half-written checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from neoxcli.errors import NeoxError
from neoxcli.fileio import atomic_write_text

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
