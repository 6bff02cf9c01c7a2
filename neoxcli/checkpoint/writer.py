"""Writing checkpoints: a whole one-rank checkpoint, and rank 0's files after a training save.

Either way the tag directory gets ``layout.json``, ``config.yml`` and the
tokenizer; then everything is flushed to disk, the completion marker is
written, and ``latest`` comes last, so a save directory's ``latest`` never
names a half-written checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoxcli.checkpoint.portable import write_layout
from neoxcli.checkpoint.tags import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    mark_complete,
    prune_checkpoints,
    tag_for,
    write_latest,
)
from neoxcli.fileio import atomic_write_text
from neoxcli.parallel.grid import Layout

if TYPE_CHECKING:
    from neoxcli.config.schema import NeoXConfig

#: DeepSpeed's module file of tensor-parallel rank 0 without a pipeline: all weights of a one-rank run.
MODULE_STATES_NAME = "mp_rank_00_model_states.pt"


def _describe(
    tag_dir: Path, cfg: NeoXConfig, layout: Layout, header: str = "", weights_only: bool = False
) -> None:
    """``layout.json`` and ``config.yml`` (``header`` + the resolved config) of a tag directory."""
    from neoxcli.config import dump_config

    write_layout(tag_dir, layout, weights_only)
    if cfg.checkpoint.overwrite:
        # A run resumed from this config must not delete the checkpoints it resumes from.
        cfg = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"overwrite": False})})
    atomic_write_text(tag_dir / CONFIG_NAME, header + dump_config(cfg))


def write_checkpoint(
    save_dir: Path,
    cfg: NeoXConfig,
    module: Mapping[str, Any],
    *,
    iteration: int = 0,
    tokenizer: Any = None,
    header: str = "",
) -> Path:
    """Write the full model's state dict ``module`` as a one-rank checkpoint in ``save_dir``; returns its tag dir.

    ``save_dir/global_step{iteration}/`` gets ``mp_rank_00_model_states.pt``
    (``{"module": ..., "iteration": ...}``, what DeepSpeed writes for one rank,
    so DeepSpeed's loader reads it as well as ours), ``layout.json`` (one rank),
    ``config.yml`` (``header`` first, then ``cfg``) and, when given,
    ``tokenizer.json`` from ``tokenizer`` (a ``tokenizers.Tokenizer``);
    ``latest`` comes last.
    """
    import torch

    tag = tag_for(iteration)
    tag_dir = save_dir / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"module": dict(module), "iteration": iteration}, tag_dir / MODULE_STATES_NAME)
    if tokenizer is not None:
        tokenizer.save(str(tag_dir / TOKENIZER_NAME))
    _describe(tag_dir, cfg, Layout(), header)
    mark_complete(tag_dir)
    write_latest(save_dir, tag)
    return tag_dir


def finalize_tag(
    save_dir: Path,
    tag: str,
    cfg: NeoXConfig,
    layout: Layout,
    keep_last: int | None = None,
    weights_only: bool = False,
) -> Path:
    """Rank 0's files after every rank saved its state files of ``tag``; returns the tag dir.

    ``layout.json`` (the layout it was saved under, and ``weights_only``), ``config.yml`` and a copy
    of an ``HFTokenizer``'s vocabulary file go into the tag directory; then
    every file is flushed, the completion marker written, ``latest`` names it,
    and all but the newest ``keep_last`` complete checkpoints are deleted.
    """
    tag_dir = save_dir / tag
    _describe(tag_dir, cfg, layout, weights_only=weights_only)
    vocab = cfg.tokenizer.vocab_file
    if vocab and Path(vocab).is_file() and cfg.tokenizer.tokenizer_type == "HFTokenizer":
        shutil.copyfile(vocab, tag_dir / TOKENIZER_NAME)
    mark_complete(tag_dir)
    write_latest(save_dir, tag)
    prune_checkpoints(save_dir, keep_last)
    return tag_dir
