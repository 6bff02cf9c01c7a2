"""The full model's weights from a checkpoint of any layout, and a model ready for sampling.

Neither needs DeepSpeed: a single shard's module file is read as stored, and
several shards are merged (``neoxcli.checkpoint.reshard``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoxcli.checkpoint.io import check_state_fits, saved_model_config, torch_load
from neoxcli.checkpoint.portable import portable_files
from neoxcli.checkpoint.tags import CONFIG_NAME, TOKENIZER_NAME, resolve_checkpoint
from neoxcli.errors import NeoxError

if TYPE_CHECKING:
    from neoxcli.config.schema import ModelConfig


def load_module_state(tag_dir: Path, model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The full model's weights from a checkpoint of any tensor/pipeline layout, without DeepSpeed.

    A single shard's DeepSpeed module file is returned as stored. Several
    shards (``model_parallel_size`` or ``pipe_parallel_size`` > 1) are merged
    from their layout-free files (fp32) or else from DeepSpeed's per-rank
    module files; merging needs the model config (``model_cfg``, default: the
    checkpoint's config.yml).
    """
    from neoxcli.checkpoint.reshard import merge_module_files, merge_portable

    flat = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    layered = sorted(tag_dir.glob("layer_*-model_*-model_states.pt"))
    portable = portable_files(tag_dir)
    if not (flat or layered or portable):
        if any(tag_dir.glob("zero_pp_rank_*_model_states.pt")):
            raise NeoxError(
                f"{tag_dir} holds DeepSpeed's ZeRO-3 partitions (saved with portable_checkpoint: false), "
                "not the full model's weights",
                hint="resume it under the layout it was saved with, or consolidate it with DeepSpeed's "
                "zero_to_fp32.py; portable_checkpoint: true saves weights any layout can load",
            )
        raise NeoxError(
            f"no model states (mp_rank_*_model_states.pt or layer_*-model_states.pt) in {tag_dir}"
        )
    if len(flat) == 1 and not layered:
        blob = torch_load(flat[0])
        module = blob.get("module") if isinstance(blob, dict) else None
        if module:
            return dict(module)
        if not portable:
            raise NeoxError(
                f"{flat[0]} holds no full model weights (ZeRO-3 partitions them)",
                hint="consolidate with DeepSpeed's zero_to_fp32.py, or save with portable_checkpoint: true",
            )
    if model_cfg is None:
        model_cfg = saved_model_config(tag_dir)
    if portable:
        merged = merge_portable(tag_dir, model_cfg, moments=False)["params"]
        return {name: entry["fp32"] for name, entry in merged.items()}
    return merge_module_files(tag_dir, model_cfg)


#: What DeepSpeed's ``engine.save_checkpoint`` always writes into its module file, and an import never does.
_ENGINE_KEY = "dp_world_size"


def _pickle_strings(path: Path) -> set[str]:
    """The strings in a torch zip file's pickle, read with ``pickletools`` (nothing is unpickled or run)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
        if name is None:
            return set()
        data = archive.read(name)
    return {arg for _op, arg, _pos in pickletools.genops(data) if isinstance(arg, str)}


def holds_training_state(tag_dir: Path) -> bool:
    """Whether ``tag_dir`` can resume a run (optimizer state and counters) rather than only give weights.

    Training saves (DeepSpeed's files, the layout-free files) can; what the
    importers write (``write_checkpoint``: a bare ``{"module", "iteration"}``)
    cannot, and DeepSpeed's loader fails on it with a ``KeyError``. Decided from
    the file names and the keys of the module file's pickle, without loading tensors.
    """
    if portable_files(tag_dir) or any(tag_dir.glob("*optim_states.pt")):
        return True
    flat = tag_dir / "mp_rank_00_model_states.pt"
    if not flat.is_file():
        return False
    try:
        return _ENGINE_KEY in _pickle_strings(flat)
    except Exception:  # noqa: BLE001 - damaged or not a zip: the resume's own read names the damage
        return True


def load_client_state(tag_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(client state, LR scheduler state)`` a training save stored with the weights (empty for an import).

    The client state is what ``neoxcli.training.trainer`` passes to DeepSpeed
    (iteration, consumed samples, RNG states), which DeepSpeed keeps at the top
    level of its module file; the layout-free files carry a copy.
    """
    flat = tag_dir / "mp_rank_00_model_states.pt"
    blob: Any = torch_load(flat) if flat.is_file() else None
    if not (isinstance(blob, dict) and "iteration" in blob):
        files = portable_files(tag_dir)
        if files:
            portable = torch_load(files[min(files)])
            return dict(portable.get("client") or {}), portable.get("lr_scheduler")
    if not isinstance(blob, dict):
        return {}, None
    client = {k: v for k, v in blob.items() if k not in ("module", "optimizer", "lr_scheduler")}
    return client, blob.get("lr_scheduler")


def load_for_inference(path: str | Path, tag: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """Load (model, tokenizer, config) from a checkpoint for sampling or evaluation."""
    import torch

    from neoxcli.config import load_config, padded_vocab_size
    from neoxcli.data.tokenizer import build_tokenizer
    from neoxcli.model import GPTModel

    tag_dir = resolve_checkpoint(path, tag)
    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}; was it written by neox?")
    cfg = load_config([cfg_path])
    tok_path = tag_dir / TOKENIZER_NAME
    tokenizer = build_tokenizer(
        cfg.tokenizer.tokenizer_type,
        str(tok_path) if tok_path.is_file() else cfg.tokenizer.vocab_file,
        cfg.tokenizer.merge_file,
    )
    state = load_module_state(tag_dir, cfg.model)
    vocab = padded_vocab_size(
        tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size
    )
    model = GPTModel(cfg.model, vocab)
    check_state_fits(model.state_dict(), state, f"the checkpoint {tag_dir}")
    model.load_state_dict(state)
    model.to(device=device, dtype=torch.float32).eval()
    return model, tokenizer, cfg
