"""Read checkpoints written by EleutherAI's GPT-NeoX trainer into our state dict.

GPT-NeoX numbers its pipeline ``sequential.{i}``: 0 embedding, 1 a parameter-free
hook, 2..L+1 blocks, L+2 another hook, L+3 final norm, L+4 output layer. Without
pipeline parallelism one ``mp_rank_XX_model_states.pt`` per tensor-parallel rank
holds all of them under ``module``; with it, one ``layer_II-model_XX-model_states.pt``
file per layer and rank. Tensor-parallel shards are concatenated back: column-
parallel weights (QKV, MLP in, vocabulary) along rows, row-parallel ones
(attention ``dense``, MLP out) along columns; norms are replicated.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import ConversionError, StateDict
from neoxcli.errors import DataError

_ROW_PARALLEL = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_REPLICATED = ("layernorm", "norm.", "attention.dense.bias", "mlp.dense_4h_to_h.bias", "position_embeddings")
# Names used by other GPT-NeoX versions for the same tensors.
_RENAMES = (
    (".mlp.linear1.", ".mlp.dense_h_to_4h."),
    (".mlp.linear2.", ".mlp.dense_4h_to_h."),
    (".scale", ".weight"),  # GPT-NeoX's RMSNorm
    (".offset", ".bias"),
)
_IGNORED = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


def _load(path: Path) -> dict[str, Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    return blob.get("module", blob) if isinstance(blob, dict) else blob


def _read_ranks(step_dir: Path) -> list[dict[str, Tensor]]:
    """One ``sequential.{i}.name -> tensor`` dict per tensor-parallel rank."""
    flat = sorted(step_dir.glob("mp_rank_*_model_states.pt"))
    layered = sorted(step_dir.glob("layer_*-model_*-model_states.pt"))
    if layered:
        ranks: dict[int, dict[str, Tensor]] = {}
        for f in layered:
            m = re.match(r"layer_(\d+)-model_(\d+)-model_states\.pt", f.name)
            if not m:
                continue
            layer, rank = int(m.group(1)), int(m.group(2))
            for k, v in _load(f).items():
                ranks.setdefault(rank, {})[f"sequential.{layer}.{k}"] = v
        return [ranks[r] for r in sorted(ranks)]
    if flat:
        return [_load(f) for f in flat]
    raise DataError(
        f"no GPT-NeoX model states in {step_dir}", hint="expected mp_rank_*_model_states.pt or layer_*.pt"
    )


def _merge(key: str, shards: list[Tensor]) -> Tensor:
    if len(shards) == 1 or any(s in key for s in _REPLICATED):
        return shards[0]
    dim = 1 if key.endswith(_ROW_PARALLEL) else 0
    return torch.cat(shards, dim=dim)


def load_gpt_neox_checkpoint(path: str | Path, cfg: ModelConfig, tag: str | None = None) -> StateDict:
    """Our state dict from a GPT-NeoX ``save`` directory (or one ``global_stepN`` in it).

    ``cfg`` is the model section of the run's YAML, which GPT-NeoX saves beside the weights.
    """
    path = Path(path)
    if (path / "latest").is_file() and tag is None:
        tag = (path / "latest").read_text().strip()
    step_dir = path / tag if tag else path
    if not step_dir.is_dir():
        raise DataError(f"checkpoint directory not found: {step_dir}")
    ranks = _read_ranks(step_dir)
    if cfg.kv_heads != cfg.num_attention_heads:
        raise ConversionError("reading GPT-NeoX checkpoints with grouped-query attention is not supported")
    if cfg.mlp_activation in ("swiglu", "geglu"):
        if not any(".mlp.w1." in k for k in ranks[0]) or len(ranks) > 1:
            raise ConversionError(
                "GPT-NeoX GLU checkpoints are read only in the Llama MLP layout (w1/w2/w3) without tensor parallelism"
            )

    n = cfg.num_layers
    index = {0: 0, **{i + 2: i + 1 for i in range(n)}, n + 3: n + 1, n + 4: n + 2}
    out: StateDict = {}
    for key in ranks[0]:
        m = re.match(r"sequential\.(\d+)\.(.+)", key)
        if not m or any(s in key for s in _IGNORED):
            continue
        if int(m.group(1)) not in index:
            raise ConversionError(f"unexpected GPT-NeoX layer {m.group(1)} for a {n}-layer model ({key})")
        name = "." + m.group(2)
        for old, new in _RENAMES:
            name = name.replace(old, new)
        ours = f"layers.{index[int(m.group(1))]}{name}"
        out[ours] = _merge(ours, [r[key] for r in ranks])
    for i in range(1, n + 1):  # Llama-style w1 (gate) / w3 (up) / w2 (down)
        pre = f"layers.{i}.mlp."
        if pre + "w1.weight" in out:
            out[pre + "dense_h_to_4h.weight"] = torch.cat(
                [out.pop(pre + "w1.weight"), out.pop(pre + "w3.weight")]
            )
            out[pre + "dense_4h_to_h.weight"] = out.pop(pre + "w2.weight")
    return out
