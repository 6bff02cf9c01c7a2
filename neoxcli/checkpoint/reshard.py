"""Merge a checkpoint's tensor/pipeline shards into the full model, and cut it again for another layout.

A shard is one (pipeline stage, tensor-parallel rank). Its parameter names are
the full model's ones (``layers.{i}.*``, see ``neoxcli.model.gpt``) when there
is no pipeline, and otherwise the names DeepSpeed's ``PipelineModule`` gives
layer ``i`` of ``model.layers`` (``neoxcli.parallel.pipeline``)::

    {i}.embedding.X                  -> layers.{i}.X   (EmbeddingPipe, untied)
    tied_modules.embed.embedding.X   -> layers.0.X     (tied: first and last stage)
    {i}.block.X                      -> layers.{i}.X   (TransformerBlockPipe)
    {i}.X                            -> layers.{i}.X   (FinalNorm, Head)

Values are sliced as ``shard_specs`` says; replicated parameters (norms,
row-parallel biases, learned positions) are identical on every
tensor-parallel rank and are taken from rank 0. A tied embedding is taken
from the first stage (the last stage's copy is equal; its position table is
never used there).

An entry is a dict of same-shaped tensors per parameter, e.g. the portable
files' ``{"fp32", "exp_avg", "exp_avg_sq"}``: weights and both Adam moments
are cut and merged alike, so a run resumes under another tensor- or
pipeline-parallel size with the exact state a single process would hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neoxcli.checkpoint.io import torch_load
from neoxcli.checkpoint.portable import missing_portable, portable_files, read_layout
from neoxcli.config.schema import ModelConfig
from neoxcli.errors import NeoxError
from neoxcli.parallel.tensor import merge_tensors, shard_specs, split_tensor

Entry = Mapping[str, Tensor]
Specs = Mapping[str, tuple[int, str] | None]

_LAYER_RE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_MP_RE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_WRAPPERS = ("embedding", "block")  # EmbeddingPipe.embedding, TransformerBlockPipe.block


def full_name(name: str, num_layers: int) -> str:
    """The ``GPTModel`` name of a shard's parameter ``name`` (tensor-parallel names already are)."""
    if name.startswith("layers."):
        return name
    parts = name.split(".")
    if parts[0] == "tied_modules" and len(parts) > 3:
        # EmbeddingPipe(embedding, head): the embedding is layer 0, the (tied) head the last layer.
        index = 0 if parts[2] == "embedding" else num_layers + 2
        return ".".join(["layers", str(index), *parts[3:]])
    if parts[0].isdigit() and len(parts) > 1:
        rest = parts[2:] if parts[1] in _WRAPPERS and len(parts) > 2 else parts[1:]
        return ".".join(["layers", parts[0], *rest])
    raise NeoxError(f"unexpected parameter name {name!r} in the checkpoint")


def meta_model(cfg: ModelConfig, vocab_size: int, tp: int = 1) -> Any:
    """The model's structure (tensor-sharded for ``tp`` > 1) on the meta device: names and shapes, no memory."""
    from neoxcli.model import GPTModel
    from neoxcli.parallel.tensor import apply_tensor_parallel

    with torch.device("meta"):
        model = GPTModel(cfg, vocab_size)
        if tp > 1:
            apply_tensor_parallel(model, None, 0, tp)
    return model


def model_specs(cfg: ModelConfig, vocab_size: int = 128) -> dict[str, tuple[int, str] | None]:
    """``shard_specs`` of the full model; they depend on names only, so any vocabulary size will do."""
    return shard_specs(meta_model(cfg, vocab_size))


def shard_names(
    cfg: ModelConfig, vocab_size: int, tp: int, pp: int, partition_method: str, stage: int
) -> list[str]:
    """The parameter names stage ``stage`` of a (tp, pp) layout holds, as its module names them."""
    model = meta_model(cfg, vocab_size, tp)
    if pp <= 1:
        return [n for n, _ in model.named_parameters()]
    from deepspeed.pipe import TiedLayerSpec

    from neoxcli.parallel.pipeline import pipeline_layers, stage_bounds

    layers = pipeline_layers(model)
    bounds = stage_bounds(layers, pp, partition_method)
    names: list[str] = []
    seen: set[str] = set()
    for i in range(bounds[stage], bounds[stage + 1]):
        spec = layers[i]
        if isinstance(spec, TiedLayerSpec):
            if spec.key in seen:
                continue
            seen.add(spec.key)
            module, prefix = spec.build(), f"tied_modules.{spec.key}."
        else:
            module, prefix = spec, f"{i}."
        names += [prefix + n for n, _ in module.named_parameters()]
    return names


def merge_shards(
    shards: Mapping[tuple[int, int], Mapping[str, Entry]],
    specs: Specs,
    num_layers: int,
    tp: int | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Full-model entries from every ``(stage, tp_rank)`` shard's entries (``tp``: default, the ranks seen).

    ``stage`` only orders the shards (a layer index works too): a parameter
    found in several stages (the tied embedding) is taken from the first.
    A key (e.g. a moment) is kept for a sliced parameter only where every rank has it.
    """
    tp = tp or 1 + max(r for _, r in shards)
    stages = sorted({s for s, _ in shards})
    absent = [(s, r) for s in stages for r in range(tp) if (s, r) not in shards]
    if absent:
        raise NeoxError(
            f"the checkpoint lacks the shard of pipeline stage {absent[0][0]}, tensor rank {absent[0][1]}"
        )
    full: dict[str, dict[str, Tensor]] = {}
    for stage in stages:
        for name, entry in shards[(stage, 0)].items():
            key = full_name(name, num_layers)
            if key in full:
                continue
            if key not in specs:
                raise NeoxError(
                    f"the checkpoint holds {name!r}, which this model does not have",
                    hint="use the model settings the checkpoint was trained with",
                )
            spec = specs[key]
            if spec is None or tp == 1:
                full[key] = dict(entry)
                continue
            parts = [shards[(stage, r)][name] for r in range(tp)]
            full[key] = {
                k: merge_tensors([p[k] for p in parts], *spec) for k in entry if all(k in p for p in parts)
            }
    missing = sorted(set(specs) - set(full))
    if missing:
        raise NeoxError(
            f"the checkpoint lacks {len(missing)} of the model's parameters (e.g. {missing[0]})",
            hint="use the model settings the checkpoint was trained with",
        )
    return full


def split_shard(
    full: Mapping[str, Entry], names: Iterable[str], specs: Specs, tp_rank: int, tp: int, num_layers: int
) -> dict[str, dict[str, Tensor]]:
    """The entries of the shard whose module has parameters ``names``, cut from full-model entries."""
    out: dict[str, dict[str, Tensor]] = {}
    for name in names:
        key = full_name(name, num_layers)
        if key not in full:
            raise NeoxError(
                f"the checkpoint has no {key!r}",
                hint="use the model settings the checkpoint was trained with",
            )
        spec = specs.get(key)
        if spec is None or tp == 1:
            out[name] = dict(full[key])
        else:
            out[name] = {k: split_tensor(v, spec[0], spec[1], tp_rank, tp) for k, v in full[key].items()}
    return out


# --------------------------------------------------------------------------- checkpoint files


def merge_portable(tag_dir: Path, cfg: ModelConfig, moments: bool = True) -> dict[str, Any]:
    """All portable shards of a checkpoint merged: ``{"params": full entries, "step", "lr_scheduler", "client"}``."""
    files = portable_files(tag_dir)
    if not files:
        raise NeoxError(f"{tag_dir} has no layout-free state (portable_pp*_tp*.pt)")
    saved = read_layout(tag_dir)
    missing = missing_portable(tag_dir, saved) if saved is not None else []
    if missing:
        raise NeoxError(f"{tag_dir} lacks {missing[0]} of its layout-free state (an incomplete copy?)")
    shards: dict[tuple[int, int], Mapping[str, Entry]] = {}
    first: dict[str, Any] = {}
    steps = []
    for key in sorted(files):
        state = torch_load(files[key])
        params = state.pop("params")
        if not moments:
            params = {n: {"fp32": e["fp32"]} for n, e in params.items()}
        shards[key] = params
        steps.append(float(state.get("step", 0.0)))
        if not first:
            first = state
    merged = merge_shards(shards, model_specs(cfg), cfg.num_layers, saved.tp if saved else None)
    return {**first, "params": merged, "step": max(steps)}


def reshard_portable(
    tag_dir: Path, module: Any, cfg: ModelConfig, vocab_size: int, tp: int, tp_rank: int
) -> dict[str, Any]:
    """This rank's layout-free state for ``module`` (its stage and tensor rank), cut from all saved shards.

    Shaped like one portable file, so ``load_module_weights`` and
    ``load_optimizer_state`` take it as they take a file saved under this layout.
    """
    state = merge_portable(tag_dir, cfg)
    rows = state["params"]["layers.0.word_embeddings.weight"]["fp32"].shape[0]
    if rows != vocab_size:
        # GPT-NeoX pads the vocabulary to a multiple of make_vocab_size_divisible_by * model_parallel_size.
        fix = f": {rows // tp}" if rows % tp == 0 else ""
        raise NeoxError(
            f"{tag_dir} has {rows} embedding rows but model_parallel_size {tp} pads the vocabulary to {vocab_size}",
            hint=f"set make_vocab_size_divisible_by{fix} so the padded vocabulary stays {rows} rows",
        )
    params = dict(module.named_parameters())
    mine = split_shard(state["params"], params, model_specs(cfg), tp_rank, tp, cfg.num_layers)
    for name, p in params.items():
        got = tuple(mine[name]["fp32"].shape)
        if got != tuple(p.shape):
            raise NeoxError(
                f"{name} is {got} in {tag_dir} re-split for this layout, but {tuple(p.shape)} in this model",
                hint="use the model settings the checkpoint was trained with",
            )
    state["params"] = mine
    return state


def merge_module_files(tag_dir: Path, cfg: ModelConfig) -> dict[str, Tensor]:
    """Full-model weights from DeepSpeed's per-rank module files, as stored (no fp32 master copy needed).

    ``layer_LL-model_RR-model_states.pt`` (one per pipeline layer and tensor
    rank; the tied head's layer is not written) or, without a pipeline,
    ``mp_rank_RR_model_states.pt`` per tensor rank.
    """
    shards: dict[tuple[int, int], dict[str, Entry]] = {}
    for path in tag_dir.glob("layer_*-model_*-model_states.pt"):
        m = _LAYER_RE.match(path.name)
        if m:
            layer, rank = int(m.group(1)), int(m.group(2))
            state = torch_load(path)
            # Layer index as the "stage": layer 0 comes first, so the tied embedding is read from it.
            shards[(layer, rank)] = {f"{layer}.{k}": {"w": v} for k, v in state.items()}
    if not shards:
        for path in tag_dir.glob("mp_rank_*_model_states.pt"):
            m = _MP_RE.match(path.name)
            if not m:
                continue
            module = torch_load(path).get("module")
            if not module:
                raise NeoxError(
                    f"{path} holds no model weights (ZeRO-3 partitions them) and there is no layout-free state",
                    hint="save with portable_checkpoint: true, or consolidate with DeepSpeed's zero_to_fp32.py",
                )
            shards[(0, int(m.group(1)))] = {k: {"w": v} for k, v in module.items()}
    if not shards:
        raise NeoxError(
            f"no model states (mp_rank_*_model_states.pt or layer_*-model_states.pt) in {tag_dir}"
        )
    saved = read_layout(tag_dir)
    merged = merge_shards(shards, model_specs(cfg), cfg.num_layers, saved.tp if saved else None)
    return {k: e["w"] for k, e in merged.items()}
