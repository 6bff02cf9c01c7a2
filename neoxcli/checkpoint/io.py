"""Reading checkpoint files safely: ``torch_load``, ``reading_checkpoint``, the config saved beside the weights.

Every read of a ``.pt`` file goes through ``safe_load`` (``torch_load`` for
our files and GPT-NeoX's, ``safe_engine_loads`` for DeepSpeed's own reads on
resume): torch's weights-only unpickler with an explicit allow-list of the few
non-tensor types these files hold, so no file can run code when loaded.
DeepSpeed's loading runs inside ``reading_checkpoint``, so a damaged, foreign
or mismatched file is one error naming it instead of whatever low-level error
torch's reader hits first. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoxcli.checkpoint.tags import CONFIG_NAME
from neoxcli.errors import NeoxError

if TYPE_CHECKING:
    from neoxcli.config.schema import ModelConfig


#: Non-tensor types our checkpoints hold besides torch's defaults: numpy arrays (the saved
#: RNG states: a dtype of uint32 keys) and scalars, and argparse.Namespace (Megatron-era
#: GPT-NeoX files). numpy names its reconstructors numpy.core (1.x) or numpy._core (2.x);
#: both names are allowed, so a file written under either loads under either.
_NUMPY_DTYPES = ("uint32", "int64", "int32", "float64", "float32", "bool")
#: DeepSpeed's optimizer files (ZeRO shards, bf16) also hold its loss scaler, the ZeRO stage
#: enum and fragment addresses; DeepSpeed is imported only when a file asks for one of them.
_DEEPSPEED_TYPES = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": (
        "deepspeed.runtime.fp16.loss_scaler",
        "DynamicLossScaler",
    ),
    "deepspeed.runtime.zero.config.ZeroStageEnum": ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    "deepspeed.utils.tensor_fragment.fragment_address": (
        "deepspeed.utils.tensor_fragment",
        "fragment_address",
    ),
}
#: Every type name a checkpoint may need besides torch's defaults (``safe_load``'s allow-list).
ALLOWED_TYPES = frozenset(
    {"numpy.ndarray", "numpy.dtype", "argparse.Namespace", *_DEEPSPEED_TYPES}
    | {f"numpy.{core}.multiarray.{f}" for core in ("core", "_core") for f in ("_reconstruct", "scalar")}
)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>")


class UnsafeCheckpointError(NeoxError):
    """A checkpoint file needs a type outside the allow-list: loading it could run code."""


def _plain_globals() -> list[Any]:
    """numpy's and argparse's allowed objects, each under every name a file may use for it."""
    import argparse

    import numpy as np

    out: list[Any] = [np.ndarray, np.dtype, argparse.Namespace]
    out += [type(np.dtype(name)) for name in _NUMPY_DTYPES]
    for obj in (np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0]):
        out += [
            (obj, f"numpy.core.multiarray.{obj.__name__}"),
            (obj, f"numpy._core.multiarray.{obj.__name__}"),
        ]
    return out


def _deepspeed_globals() -> list[Any]:
    import importlib

    return [(getattr(importlib.import_module(m), a), n) for n, (m, a) in _DEEPSPEED_TYPES.items()]


def _asked_for(exc: BaseException) -> str | None:
    m = _GLOBAL_RE.search(str(exc))
    return (m.group(1) or m.group(2)) if m else None


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` allowing only ``ALLOWED_TYPES`` besides tensors and plain values.

    Unpickling anything else could run code the file chose (a ``__reduce__``
    calling ``os.system``), so such a file is refused with ``UnsafeCheckpointError``
    naming it and the type, before any of it runs. Reader errors of a damaged
    file propagate as torch raised them.
    """
    import torch

    allowed = _plain_globals()
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            name = _asked_for(exc)
            if name is None:
                raise
            if name not in _DEEPSPEED_TYPES or len(allowed) > len(_plain_globals()):
                raise UnsafeCheckpointError(
                    f"cannot load {path}: it needs {name}, which is not an allowed checkpoint type",
                    hint="checkpoints are read with torch's weights_only loader, so a file cannot run code; "
                    "this one holds other objects: only load it if you trust its source",
                ) from None
            allowed = allowed + _deepspeed_globals()  # all of them at once: one retry per file at most


def torch_load(path: Path) -> Any:
    """``safe_load`` onto the CPU; a damaged or foreign file is one error naming it, not a traceback.

    torch reports a truncated or overwritten file as whichever low-level error
    its reader hits first (zip, pickle, struct, EOF), none of which names the file.
    """
    try:
        return safe_load(path)
    except NeoxError:
        raise
    except Exception as exc:  # every reader error of a damaged file means the same to the user
        raise NeoxError(
            f"cannot read {path}: damaged or not a PyTorch checkpoint ({type(exc).__name__})",
            hint="the file is truncated or overwritten; copy it again from where it was written",
        ) from None


@contextlib.contextmanager
def safe_engine_loads(engine: Any) -> Iterator[None]:
    """Route DeepSpeed's own checkpoint reads (``engine.load_checkpoint``) through ``safe_load``.

    DeepSpeed 0.19 reads every file with ``checkpoint_engine.load``, which calls
    ``torch.load(weights_only=False)``; the engine's instance and the torch
    engine class both get the safe loader for the duration.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    def load(self: Any, path: str, map_location: Any = None) -> Any:
        try:
            return safe_load(path, map_location=map_location)
        except RuntimeError as exc:
            # DeepSpeed's map_location is a callable that keeps each storage where it was loaded
            # (on the CPU), which torch cannot apply to tensor subclasses (torchao's 8-bit
            # optimizer states): "cpu" is the same placement.
            if not callable(map_location) or "Callable map_location" not in str(exc):
                raise
            return safe_load(path, map_location="cpu")

    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    original = TorchCheckpointEngine.load
    TorchCheckpointEngine.load = load  # type: ignore[method-assign]
    if ckpt_engine is not None:
        ckpt_engine.load = load.__get__(ckpt_engine)
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original  # type: ignore[method-assign]
        if ckpt_engine is not None:
            del ckpt_engine.load


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
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        first = first if len(first) <= 200 else first[:200] + "…"
        raise NeoxError(
            f"checkpoint {tag_dir} is unreadable ({type(exc).__name__}: {first}): a file in it is truncated or corrupt",
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
