"""The on-disk checkpoint formats: the one place that knows how checkpoints are laid out, written and read.

A save directory looks like GPT-NeoX's: ``{save}/latest`` names the tag,
``{save}/global_step{N}/`` holds the layout-free ``portable_pp*_tp*.pt`` files
(the training state, each tensor once; with ``portable_checkpoint: false``
DeepSpeed's own files instead: ``mp_rank_XX_model_states.pt`` per
tensor-parallel rank, per-layer files under pipeline parallelism, optimizer
shards) plus ``config.yml`` (the resolved config), the tokenizer,
``layout.json`` and, written last, the ``complete`` marker.

- ``tags``: tag names, ``latest``, the completion marker, listing, pruning, resolving a path to a tag directory;
- ``savedir``: a save directory across crashes: the save journal, start-up cleanup, what a start refuses;
- ``io``: ``safe_load``/``torch_load`` (weights-only, an explicit allow-list), ``reading_checkpoint``,
  the config saved beside the weights;
- ``portable``: the layout-free files' names, ``layout.json``, reading them, how a resume uses them;
- ``engine``: gathering and setting layout-free state in a DeepSpeed engine;
- ``reshard``: merging shards into the full model and cutting them for another layout;
- ``load``: the full model's weights, whether a checkpoint can resume training, and a model ready for sampling;
- ``writer``: a whole one-rank checkpoint (the importers), and rank 0's files after a training save;
- ``s3``: uploading tags to S3-compatible storage in the background, downloading one for a resume.

It builds on ``neoxcli.parallel`` for how tensors are sharded; nothing there
imports it. Importing the package does not import torch: ``engine`` and
``reshard``, which need it at import time, load on first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neoxcli.checkpoint.io import (
    ALLOWED_TYPES,
    UnsafeCheckpointError,
    check_state_fits,
    reading_checkpoint,
    safe_engine_loads,
    safe_load,
    saved_model_config,
    saved_partition,
    torch_load,
)
from neoxcli.checkpoint.load import (
    holds_training_state,
    load_client_state,
    load_for_inference,
    load_module_state,
)
from neoxcli.checkpoint.portable import (
    LAYOUT_NAME,
    check_resume_layout,
    load_module_weights,
    load_portable,
    portable_files,
    portable_name,
    read_layout,
    require_portable,
    write_layout,
)
from neoxcli.checkpoint.tags import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    list_checkpoints,
    prune_checkpoints,
    read_latest,
    resolve_checkpoint,
    tag_for,
    write_latest,
)
from neoxcli.checkpoint.writer import finalize_tag, write_checkpoint

if TYPE_CHECKING:
    from neoxcli.checkpoint.engine import gather_state, load_optimizer_state, save_portable
    from neoxcli.checkpoint.reshard import (
        full_name,
        merge_module_files,
        merge_portable,
        merge_shards,
        meta_model,
        model_specs,
        reshard_portable,
        shard_names,
        split_shard,
    )

_LAZY = {
    **dict.fromkeys(("gather_state", "load_optimizer_state", "save_portable"), "engine"),
    **dict.fromkeys(
        (
            "finalize_tag",
            "full_name",
            "merge_module_files",
            "merge_portable",
            "merge_shards",
            "meta_model",
            "model_specs",
            "reshard_portable",
            "shard_names",
            "split_shard",
        ),
        "reshard",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ALLOWED_TYPES",
    "UnsafeCheckpointError",
    "safe_engine_loads",
    "safe_load",
    "CONFIG_NAME",
    "LAYOUT_NAME",
    "TOKENIZER_NAME",
    "check_resume_layout",
    "check_state_fits",
    "finalize_tag",
    "full_name",
    "gather_state",
    "holds_training_state",
    "list_checkpoints",
    "load_client_state",
    "load_for_inference",
    "load_module_state",
    "load_module_weights",
    "load_optimizer_state",
    "load_portable",
    "merge_module_files",
    "merge_portable",
    "merge_shards",
    "meta_model",
    "model_specs",
    "portable_files",
    "portable_name",
    "prune_checkpoints",
    "read_latest",
    "read_layout",
    "reading_checkpoint",
    "require_portable",
    "reshard_portable",
    "resolve_checkpoint",
    "save_portable",
    "saved_model_config",
    "saved_partition",
    "shard_names",
    "split_shard",
    "tag_for",
    "torch_load",
    "write_checkpoint",
    "write_latest",
    "write_layout",
]
