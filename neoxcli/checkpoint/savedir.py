"""A run's save directory across crashes: what a start cleans up, what it refuses, and the save journal.

A save announces itself in ``{save}/.saving`` (the tag) before any rank writes,
and removes it once ``latest`` names the finished tag. The next start reads it:
a marked tag whose ``latest`` was not yet written is rolled forward, an
unmarked one (a crash mid-save) is removed. Debris of our own naming goes too:
temporary files of the atomic writers (``.NAME.*.tmp``) and tags cut short
while being pruned (``.deleting-*``). Nothing else is ever deleted on start:
a tag without a marker that no journal names may be an older checkpoint.

Before training, ``plan_resume`` decides where the run resumes from and
refuses what would overwrite checkpoints: tags but no usable ``latest``, a
``load`` that does not exist, a tag the run would save that already exists.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from neoxcli.checkpoint.tags import (
    DELETING_PREFIX,
    check_tag,
    is_complete,
    list_checkpoints,
    read_latest,
    remove_tag,
    step_of,
    write_latest,
)
from neoxcli.errors import NeoxError
from neoxcli.fileio import atomic_write_text, fsync_dir, is_temp_name

JOURNAL_NAME = ".saving"


def begin_save(save_dir: Path, tag: str) -> None:
    """Record that ``tag`` is being saved (before any of its files), so a crash is undone on the next start."""
    atomic_write_text(save_dir / JOURNAL_NAME, tag + "\n")


def end_save(save_dir: Path) -> None:
    """The save recorded by ``begin_save`` is finished (``latest`` names it) or undone."""
    (save_dir / JOURNAL_NAME).unlink(missing_ok=True)
    fsync_dir(save_dir)


def abandon_save(tag_dir: Path) -> None:
    """Remove the half-written ``tag_dir`` of a failed save, then its journal entry."""
    if tag_dir.is_dir() and not (tag_dir / "complete").is_file():
        remove_tag(tag_dir)
    end_save(tag_dir.parent)


def clean_save_dir(save_dir: Path) -> list[str]:
    """Undo what a crash left in ``save_dir``; returns one line per thing done, for the run's log.

    Runs on one process (rank 0) before any rank reads the directory.
    """
    if not save_dir.is_dir():
        return []
    done: list[str] = []
    journal = save_dir / JOURNAL_NAME
    if journal.is_file():
        tag = journal.read_text(encoding="utf-8").strip()
        tag_dir = save_dir / tag if tag and step_of(tag) is not None else None
        if tag_dir is not None and (tag_dir / "complete").is_file():
            if read_latest(save_dir) != tag:
                write_latest(save_dir, tag)
                done.append(f"{tag_dir} was saved completely before the run stopped: 'latest' now names it")
        elif tag_dir is not None and tag_dir.is_dir():
            remove_tag(tag_dir)
            done.append(f"removed {tag_dir}: the run stopped while saving it")
        end_save(save_dir)
    for child in list(save_dir.iterdir()):
        if child.name.startswith(DELETING_PREFIX):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            done.append(f"removed {child}: left over from pruning")
    for folder in [save_dir, *(p for _, p in list_checkpoints(save_dir))]:
        for child in folder.iterdir():
            if is_temp_name(child.name) and child.is_file():
                child.unlink(missing_ok=True)
    return done


@dataclass
class ResumePlan:
    """Where a run resumes from (``tag`` None: from scratch) and what to tell the user about it."""

    load_dir: Path | None
    tag: str | None
    note: str | None = None


def _newest_complete(directory: Path) -> str | None:
    ckpts = list_checkpoints(directory, complete=True)
    return ckpts[-1][1].name if ckpts else None


def _no_latest(directory: Path, key: str) -> NeoxError:
    newest = _newest_complete(directory)
    where = f"checkpoint.{key}: {directory} holds checkpoints but no usable 'latest'"
    if newest is None:
        return NeoxError(
            f"{where}, and none of them is complete",
            hint="start over with `neox train --overwrite` (deletes them) or a new save directory",
        )
    return NeoxError(
        f"{where}; the newest complete one is {newest}",
        hint=f"resume from it with --set load_tag={newest} (or write {newest} into {directory / 'latest'}), "
        "or start over with `neox train --overwrite` (deletes them) or a new save directory",
    )


def plan_resume(load: str | None, save: str | None, load_tag: str | None, overwrite: bool) -> ResumePlan:
    """Which checkpoint a run starts from, or one error when starting would lose or overwrite checkpoints.

    - ``load`` names a directory holding ``global_step*`` tags but no usable
      ``latest`` (missing or empty): refused, naming the newest complete tag;
    - ``load`` does not exist: refused, unless it is the run's own ``save``
      (a first run of an auto-resuming config starts fresh);
    - no ``load`` but ``save`` already holds checkpoints: refused;
    - ``load_tag`` picks a tag of ``load`` instead of its ``latest``;
    - a tag that never finished saving is never resumed from;
    - ``overwrite``: from scratch, whatever is there (``clear_save_dir`` deletes it).
    """
    save_dir = Path(save) if save else None
    if overwrite:
        return ResumePlan(None, None, "starting from scratch (--overwrite)")
    if not load:
        if save_dir is not None and list_checkpoints(save_dir):
            latest = read_latest(save_dir)
            if latest is None:
                raise _no_latest(save_dir, "save")
            raise NeoxError(
                f"checkpoint.save: {save_dir} already holds checkpoints (latest: {latest}) and load is not set",
                hint=f"resume with --set load={save_dir}, or start over with `neox train --overwrite` "
                "(deletes them) or a new save directory",
            )
        return ResumePlan(None, None)
    load_dir = Path(load)
    own = save_dir is not None and load_dir.absolute() == save_dir.absolute()
    if not load_dir.exists():
        if own:
            return ResumePlan(None, None, f"no checkpoint in {load_dir} yet: starting from scratch")
        raise NeoxError(
            f"checkpoint.load: {load_dir} does not exist",
            hint="name the save directory of the run to resume, or unset load to start from scratch",
        )
    if load_tag is not None:
        tag = check_tag(load_tag, Path("load_tag"))
        if not (load_dir / tag).is_dir():
            found = ", ".join(p.name for _, p in list_checkpoints(load_dir)[-3:]) or "none"
            raise NeoxError(f"checkpoint.load_tag: {load_dir} has no tag {tag!r} (newest: {found})")
    else:
        tag = read_latest(load_dir)
        if tag is None:
            if list_checkpoints(load_dir):
                raise _no_latest(load_dir, "load")
            if own:
                return ResumePlan(None, None, f"no checkpoint in {load_dir} yet: starting from scratch")
            raise NeoxError(
                f"checkpoint.load: {load_dir} holds no checkpoint (no 'latest', no global_step* directory)",
                hint="name the save directory of the run to resume, or unset load to start from scratch",
            )
        if not (load_dir / tag).is_dir():
            raise NeoxError(
                f"{load_dir / 'latest'} names {tag!r}, which is not a directory in {load_dir}",
                hint="write the tag of an existing checkpoint into 'latest', or remove it to start from scratch",
            )
    if not is_complete(load_dir / tag):
        raise NeoxError(
            f"checkpoint {load_dir / tag} is incomplete: its save did not finish (no 'complete' marker)",
            hint=f"resume from an earlier one with --set load_tag=… (newest complete: {_newest_complete(load_dir)})",
        )
    return ResumePlan(load_dir, tag)


def planned_tags(
    start: int, train_iters: int, every: int | None, extra: Iterable[int], resumed: bool = False
) -> list[int]:
    """The iterations a run from ``start`` to ``train_iters`` will save (as ``neoxcli.training.trainer.train``)."""
    extra = set(extra)
    steps = {i for i in range(start + 1, train_iters + 1) if (every and i % every == 0) or i in extra}
    if start == 0 and 0 in extra and not resumed:
        steps.add(0)
    if train_iters > start:
        steps.add(train_iters)
    return sorted(steps)


def check_new_tags(save_dir: Path, steps: Iterable[int], tag_for: Callable[[int], str]) -> None:
    """Refuse, before training, a run that would save into a tag directory that already exists."""
    for step in steps:
        tag_dir = save_dir / tag_for(step)
        if tag_dir.exists():
            state = "complete" if is_complete(tag_dir) else "incomplete"
            raise NeoxError(
                f"checkpoint {tag_dir} already exists ({state}); this run would save into it at iteration {step}",
                hint="resume from it with --set load_tag=" + tag_dir.name
                if state == "complete"
                else f"remove {tag_dir}, or start over with `neox train --overwrite` or a new save directory",
            )


def clear_save_dir(save_dir: Path) -> list[Path]:
    """``--overwrite``: delete every tag, ``latest`` and the metrics of ``save_dir``; returns the tags removed."""
    if not save_dir.is_dir():
        return []
    removed = [path for _, path in list_checkpoints(save_dir)]
    for path in removed:
        remove_tag(path)
    for name in ("latest", "metrics.jsonl"):
        (save_dir / name).unlink(missing_ok=True)
    fsync_dir(save_dir)
    return removed
