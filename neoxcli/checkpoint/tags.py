"""Tags: which ``global_step{N}`` a save directory's ``latest`` names, completeness, listing, pruning, resolving.

A save directory holds one tag directory per checkpoint and ``latest``, which
names the newest complete one. A save writes its files, flushes them to disk,
writes ``complete`` into the tag directory last, and only then replaces
``latest`` atomically, so a crash mid-save never leaves a pointer to a
half-written checkpoint, and a half-written tag is recognisable (no marker).
Checkpoints written before the marker existed are complete when ``latest``
names them (it was only ever written after a whole save).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from neoxcli.errors import NeoxError
from neoxcli.fileio import atomic_write_text, fsync_dir, fsync_tree

CONFIG_NAME = "config.yml"
TOKENIZER_NAME = "tokenizer.json"
#: Written last into a tag directory, once everything else in it is on disk.
COMPLETE_NAME = "complete"
#: Prefix a pruned tag is renamed to before it is deleted (debris if the deletion is cut short).
DELETING_PREFIX = ".deleting-"
_STEP_RE = re.compile(r"^global_step(\d+)$")
# A tag is one plain name inside the save directory: no separators, no leading dot, no "..".
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def tag_for(iteration: int) -> str:
    return f"global_step{iteration}"


def step_of(tag: str) -> int | None:
    """N of a ``global_stepN`` tag, else None."""
    m = _STEP_RE.match(tag)
    return int(m.group(1)) if m else None


def check_tag(tag: str, where: Path) -> str:
    """``tag`` when it is a plain tag name inside a save directory, else one error naming ``where``.

    A ``latest`` (or ``load_tag``) of ``../other`` or ``/abs`` would read, and
    a resumed run write, outside the directory.
    """
    if not _TAG_RE.match(tag) or ".." in tag:
        raise NeoxError(
            f"{where} names {tag!r}, which is not a checkpoint tag (a plain name such as global_step100)",
            hint="write the name of a global_step* directory beside it",
        )
    return tag


def write_latest(save_dir: Path, tag: str) -> None:
    check_tag(tag, save_dir / "latest")
    atomic_write_text(save_dir / "latest", tag)


def read_latest(save_dir: Path) -> str | None:
    """The tag ``latest`` names (checked to be a plain name), or None when it is missing or empty."""
    latest = save_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8").strip()
    return check_tag(tag, latest) if tag else None


def is_complete(tag_dir: Path) -> bool:
    """Whether the save of ``tag_dir`` finished: it has the marker, or (older checkpoints) ``latest`` names it."""
    if (tag_dir / COMPLETE_NAME).is_file():
        return True
    try:
        return read_latest(tag_dir.parent) == tag_dir.name
    except NeoxError:
        return False


def mark_complete(tag_dir: Path) -> None:
    """Flush every file of ``tag_dir`` to disk, then write its completion marker (before ``latest``)."""
    fsync_tree(tag_dir)
    atomic_write_text(tag_dir / COMPLETE_NAME, tag_dir.name + "\n")


def require_complete(tag_dir: Path) -> Path:
    """``tag_dir``, or one error naming it when its save never finished."""
    if not is_complete(tag_dir):
        raise NeoxError(
            f"checkpoint {tag_dir} is incomplete: its save did not finish (no '{COMPLETE_NAME}' marker)",
            hint="use an earlier checkpoint, e.g. the one its directory's 'latest' names",
        )
    return tag_dir


def list_checkpoints(save_dir: Path, complete: bool = False) -> list[tuple[int, Path]]:
    """``global_step*`` tag directories under ``save_dir`` (only finished ones with ``complete``), oldest first."""
    found = []
    if save_dir.is_dir():
        for child in save_dir.iterdir():
            step = step_of(child.name)
            if step is not None and child.is_dir() and (not complete or is_complete(child)):
                found.append((step, child))
    return sorted(found)


def remove_tag(path: Path) -> None:
    """Delete a tag directory: renamed away first, so no reader sees half of it as a checkpoint."""
    gone = path.with_name(DELETING_PREFIX + path.name)
    if gone.exists():
        shutil.rmtree(gone, ignore_errors=True)
    path.rename(gone)
    fsync_dir(path.parent)
    shutil.rmtree(gone, ignore_errors=True)


def prune_checkpoints(save_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names).

    An incomplete tag is neither counted nor deleted here: a crashed save is
    cleaned up on the next start (``neoxcli.checkpoint.savedir``).
    """
    if not keep_last:
        return []
    latest = read_latest(save_dir)
    ckpts = list_checkpoints(save_dir, complete=True)
    removed = []
    for _, path in ckpts[: max(len(ckpts) - keep_last, 0)]:
        if path.name != latest:
            remove_tag(path)
            removed.append(path)
    return removed


def resolve_checkpoint(path: str | Path, tag: str | None = None) -> Path:
    """Turn a save directory (with ``latest``) or a tag directory into a complete tag directory."""
    p = Path(path)
    if not p.exists():
        raise NeoxError(f"checkpoint not found: {p}")
    if tag is not None:
        tagged = p / check_tag(tag, Path(f"--tag {tag}"))
        if not tagged.is_dir():
            raise NeoxError(f"checkpoint {p} has no tag {tag!r}")
        return require_complete(tagged)
    if (p / CONFIG_NAME).is_file() and (any(p.glob("*model_states.pt")) or any(p.glob("portable_*.pt"))):
        return require_complete(p)
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
