"""Reading checkpoint files safely: ``torch_load``, ``reading_checkpoint``, the config saved beside the weights.

Every read of a ``.pt`` file goes through ``torch_load``, and DeepSpeed's own
loading runs inside ``reading_checkpoint``, so a damaged, foreign or
mismatched file is one error naming it instead of whatever low-level error
torch's reader hits first. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoxcli.checkpoint.tags import CONFIG_NAME
from neoxcli.errors import NeoxError

if TYPE_CHECKING:
    from neoxcli.config.schema import ModelConfig


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


_FOREIGN = "the weights do not belong to the model its config describes"


def check_state_fits(
    expected: Mapping[str, Any] | ModelConfig, state: Mapping[str, Any], source: str, *, hint: str = _FOREIGN
) -> None:
    """Fail with one error line when the weights ``state`` do not fit the model ``expected``.

    ``expected`` is the model's ``state_dict()`` (or any name -> tensor mapping,
    such as its ``named_parameters()``), or its ``ModelConfig``: then the model
    is built on the meta device (no memory) with as many vocabulary rows as
    ``state``'s embedding has. torch's strict ``load_state_dict`` would say the
    same as a multi-line RuntimeError, and a converter without the check would
    write weights that fail only when loaded; this names the first missing,
    unexpected or mis-shaped tensor and where the weights came from (``source``).
    """
    from neoxcli.config.schema import ModelConfig

    if isinstance(expected, ModelConfig):
        expected = _meta_state(expected, state)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        more = len(missing) + len(unexpected) - 1
        raise NeoxError(f"{source}: {what}" + (f" ({more} more mismatches)" if more else ""), hint=hint)
    for name, ref in expected.items():
        got = tuple(state[name].shape)
        if got != tuple(ref.shape):
            raise NeoxError(
                f"{source}: tensor {name!r} has shape {list(got)}, the model needs {list(ref.shape)}",
                hint=hint,
            )


def _meta_state(model_cfg: ModelConfig, state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``state_dict()`` of ``model_cfg``'s model on the meta device, sized to ``state``'s vocabulary."""
    import torch

    from neoxcli.model import GPTModel

    emb = state.get("layers.0.word_embeddings.weight")
    rows = int(emb.shape[0]) if emb is not None and emb.dim() == 2 else model_cfg.make_vocab_size_divisible_by
    with torch.device("meta"):
        return GPTModel(model_cfg, rows).state_dict()


def saved_model_config(tag_dir: Path) -> ModelConfig:
    """The model section of the ``config.yml`` saved in ``tag_dir``."""
    from neoxcli.config import load_config

    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}, which merging its shards needs")
    return load_config([cfg_path], warn=lambda _msg: None).model


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
        saved = saved_model_config(tag_dir).model_dump()
    except Exception:  # noqa: BLE001 - only a better hint is lost
        return None
    now = model_cfg.model_dump()
    diffs = [f"{k}: {saved[k]!r} there, {now[k]!r} here" for k in saved if k in now and saved[k] != now[k]]
    if not diffs:
        return None
    return "the checkpoint was trained with other model settings: " + "; ".join(diffs[:5])


def saved_partition(tag_dir: Path) -> str | None:
    """``pipe_partition_method`` of the run that wrote ``tag_dir`` (from its config.yml)."""
    import yaml

    path = tag_dir / CONFIG_NAME
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    section = data.get("parallel") if isinstance(data, dict) else None
    value = section.get("pipe_partition_method") if isinstance(section, dict) else None
    return value if isinstance(value, str) else None
