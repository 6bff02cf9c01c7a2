"""Reading a checkpoint back into a run: which resume path a layout change needs, and clear errors."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neoxcli.errors import NeoxError
from neoxcli.parallel.grid import Layout
from neoxcli.training import checkpoint as ckpt


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
        from neoxcli.parallel.reshard import require_portable

        require_portable(where, saved, layout)
        return "reshard"
    return "portable" if saved != layout else None


@contextlib.contextmanager
def reading_checkpoint(tag_dir: Path, model_cfg: Any = None) -> Iterator[None]:
    """Turn a truncated or mismatched checkpoint file into one error naming the checkpoint.

    Without this an empty ``.pt`` surfaces as a bare ``EOFError`` (which the CLI
    framework even reports as a user abort) and a shape mismatch as a torch traceback.
    """
    try:
        yield
    except (EOFError, pickle.UnpicklingError) as exc:
        raise NeoxError(
            f"checkpoint {tag_dir} is unreadable ({type(exc).__name__}: {exc}): a file in it is truncated or corrupt",
            hint="resume from an earlier checkpoint by writing its tag (e.g. global_step100) into 'latest'",
        ) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "PytorchStreamReader" in text or "central directory" in text:
            raise NeoxError(
                f"checkpoint {tag_dir} is unreadable: a file in it is truncated or corrupt ({text.splitlines()[0]})",
                hint="resume from an earlier checkpoint by writing its tag (e.g. global_step100) into 'latest'",
            ) from exc
        if not any(m in text for m in ("size mismatch", "Missing key", "Unexpected key")):
            raise
        detail = next((line.strip() for line in text.splitlines()[1:] if line.strip()), text.strip())
        raise NeoxError(
            f"checkpoint {tag_dir} does not fit this model: {detail if len(detail) <= 200 else detail[:200] + '…'}",
            hint=_model_differences(tag_dir, model_cfg)
            or "the model settings must match the ones the checkpoint was trained with (see its config.yml)",
        ) from exc


def _model_differences(tag_dir: Path, model_cfg: Any) -> str | None:
    """Name the model settings that differ from the checkpoint's config.yml, if it can be read."""
    if model_cfg is None:
        return None
    try:
        saved = ckpt._saved_model_config(tag_dir).model_dump()
    except Exception:  # noqa: BLE001 - only a better hint is lost
        return None
    now = model_cfg.model_dump()
    diffs = [f"{k}: {saved[k]!r} there, {now[k]!r} here" for k in saved if k in now and saved[k] != now[k]]
    if not diffs:
        return None
    return "the checkpoint was trained with other model settings: " + "; ".join(diffs[:5])


def _saved_partition(tag_dir: Path) -> str | None:
    """``pipe_partition_method`` of the run that wrote ``tag_dir`` (from its config.yml)."""
    import yaml

    path = tag_dir / ckpt.CONFIG_NAME
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    section = data.get("parallel") if isinstance(data, dict) else None
    value = section.get("pipe_partition_method") if isinstance(section, dict) else None
    return value if isinstance(value, str) else None
