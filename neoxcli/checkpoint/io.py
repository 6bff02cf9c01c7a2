"""Reading checkpoint files safely: ``torch_load``, the model config saved beside the weights.

Every read of a ``.pt`` file goes through ``torch_load``, so a damaged or
foreign file is one error naming it instead of whatever low-level error
torch's reader hits first. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def saved_model_config(tag_dir: Path) -> ModelConfig:
    """The model section of the ``config.yml`` saved in ``tag_dir``."""
    from neoxcli.config import load_config

    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}, which merging its shards needs")
    return load_config([cfg_path], warn=lambda _msg: None).model
