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
from typing import Any

import torch
from torch import Tensor

from neoxcli.checkpoint import read_latest, torch_load
from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import ConversionError, StateDict, cast_state
from neoxcli.errors import DataError

_ROW_PARALLEL = ("attention.dense.weight", "mlp.dense_4h_to_h.weight", "mlp.w2.weight")
# GPT-NeoX's fused gated MLP input: each tensor-parallel rank's rows are [value; gate].
_GATED_IN = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
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
    blob = torch_load(path)
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


def _gqa_rows(shard: Tensor, heads: int, kv_heads: int, head_dim: int) -> Tensor:
    """One rank's GQA ``query_key_value`` rows, GPT-NeoX's [all Q; all K; all V], in our grouping.

    Ours groups rows per key/value head: that head's queries, then its key, then its value.
    """
    rest = shard.shape[1:]
    q, k, v = shard.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    parts = [
        q.reshape(kv_heads, heads // kv_heads * head_dim, *rest),
        k.reshape(kv_heads, head_dim, *rest),
        v.reshape(kv_heads, head_dim, *rest),
    ]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _merge(key: str, shards: list[Tensor], gated: bool = False, cfg: ModelConfig | None = None) -> Tensor:
    if cfg is not None and cfg.kv_heads != cfg.num_attention_heads and ".attention.query_key_value." in key:
        tp = len(shards)
        regrouped = [
            _gqa_rows(s, cfg.num_attention_heads // tp, cfg.kv_heads // tp, cfg.head_dim) for s in shards
        ]
        return torch.cat(regrouped)
    if gated and key.endswith(_GATED_IN):
        # GPT-NeoX splits each rank's shard into (value, gate) and activates the gate;
        # ours is [gate; value] over the full width.
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([*(gate for _, gate in halves), *(value for value, _ in halves)])
    if len(shards) == 1 or any(s in key for s in _REPLICATED):
        return shards[0]
    dim = 1 if key.endswith(_ROW_PARALLEL) else 0
    return torch.cat(shards, dim=dim)


def load_gpt_neox_checkpoint(path: str | Path, cfg: ModelConfig, tag: str | None = None) -> StateDict:
    """Our state dict from a GPT-NeoX ``save`` directory (or one ``global_stepN`` in it).

    ``cfg`` is the model section of the run's YAML, which GPT-NeoX saves beside the weights.
    """
    path = Path(path)
    if tag is None:
        tag = read_latest(path)
    step_dir = path / tag if tag else path
    if not step_dir.is_dir():
        raise DataError(f"checkpoint directory not found: {step_dir}")
    ranks = _read_ranks(step_dir)
    # A gated config over a checkpoint without gated weights fails the exact-load check later.
    gated = cfg.mlp_activation in ("swiglu", "geglu")

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
        out[ours] = _merge(ours, [r[key] for r in ranks], gated, cfg)
    for i in range(1, n + 1):  # Llama-style w1 (gate) / w3 (up) / w2 (down)
        pre = f"layers.{i}.mlp."
        if pre + "w1.weight" in out:
            out[pre + "dense_h_to_4h.weight"] = torch.cat(
                [out.pop(pre + "w1.weight"), out.pop(pre + "w3.weight")]
            )
            out[pre + "dense_4h_to_h.weight"] = out.pop(pre + "w2.weight")
    return out


def find_gpt_neox_configs(step_dir: Path) -> list[Path]:
    """The YAML/JSON files GPT-NeoX copies into ``global_stepN/configs/`` when it saves."""
    where = step_dir / "configs"
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir() if p.suffix in (".yml", ".yaml", ".json") and p.is_file())


def read_gpt_neox(
    src: str | Path,
    *,
    config_files: list[Path] | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    tag: str | None = None,
) -> tuple[Any, StateDict, Any, Path, list[Path]]:
    """A GPT-NeoX checkpoint as (our one-process config, the merged weights, the tokenizer, its step dir, its configs).

    The model shape comes from the run's YAML: the copies GPT-NeoX keeps in the
    checkpoint (``configs/``) or ``config_files``. Tensor- and pipeline-parallel
    shards are merged. Nothing is written (``import_gpt_neox`` does that).
    """
    from neoxcli.checkpoint import check_state_fits
    from neoxcli.config import load_config
    from neoxcli.convert.cli_ops import vocab_divisor
    from neoxcli.data.tokenizer import build_tokenizer

    src = Path(src)
    if not src.is_dir():
        raise DataError(f"checkpoint directory not found: {src}")
    if tag is None:
        tag = read_latest(src)
    step_dir = src / tag if tag else src
    if not step_dir.is_dir():
        raise DataError(f"checkpoint directory not found: {step_dir}")
    configs = list(config_files or find_gpt_neox_configs(step_dir))
    if not configs:
        raise DataError(
            f"{step_dir} has no configs/ directory with the run's YAML",
            hint="pass the GPT-NeoX config files the model was trained with: --config model.yml",
        )
    sets = []
    if vocab_file:
        sets.append(f"vocab_file={vocab_file}")
    if merge_file:
        sets.append(f"merge_file={merge_file}")
    cfg = load_config(configs, sets, warn=lambda _msg: None)
    tok_cfg = cfg.tokenizer
    file_based = tok_cfg.tokenizer_type.lower() in ("hftokenizer", "gpt2bpetokenizer")
    if file_based and tok_cfg.vocab_file and not Path(tok_cfg.vocab_file).exists():
        raise DataError(
            f"the run's tokenizer file {tok_cfg.vocab_file} is not on this machine",
            hint="point to a copy with --vocab-file (and --merge-file for GPT2BPETokenizer)",
        )
    tokenizer = build_tokenizer(tok_cfg.tokenizer_type, tok_cfg.vocab_file, tok_cfg.merge_file)

    state = load_gpt_neox_checkpoint(src, cfg.model, tag)
    rows = state["layers.0.word_embeddings.weight"].shape[0]
    divisor = vocab_divisor(tokenizer.vocab_size, rows)
    model_cfg = cfg.model.model_copy(update={"make_vocab_size_divisible_by": divisor})
    # The vocabulary is the embedding's rows, which the divisor pads the tokenizer's to exactly.
    check_state_fits(
        model_cfg,
        state,
        f"the GPT-NeoX weights in {step_dir} do not fit the config's model",
        hint="pass the config files the model was trained with (--config)",
    )
    parallel = cfg.parallel.model_copy(update={"model_parallel_size": 1, "pipe_parallel_size": 0})
    one_process = cfg.model_copy(update={"model": model_cfg, "parallel": parallel})
    return one_process, state, tokenizer, step_dir, configs


def load_gpt_neox_for_inference(
    src: str | Path, tag: str | None = None, device: str = "cpu"
) -> tuple[Any, Any, Any]:
    """(model, tokenizer, config) from a GPT-NeoX checkpoint, merged in memory (no converted copy)."""
    import torch

    from neoxcli.config import padded_vocab_size
    from neoxcli.model import GPTModel

    cfg, state, tokenizer, _step, _configs = read_gpt_neox(src, tag=tag)
    vocab = padded_vocab_size(tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
    model = GPTModel(cfg.model, vocab)
    model.load_state_dict(cast_state(state, torch.float32))
    return model.to(device=device).eval(), tokenizer, cfg


def import_gpt_neox(
    src: str | Path,
    out_dir: str | Path,
    *,
    config_files: list[Path] | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    tag: str | None = None,
    dtype: str | None = "fp32",
    overwrite: bool = False,
) -> dict[str, object]:
    """Write a checkpoint saved by GPT-NeoX as ours (``OUT/latest`` -> ``global_stepN``).

    Nothing is written unless the merged weights load into the configured model exactly.
    """
    from neoxcli.checkpoint import TOKENIZER_NAME, tag_for, write_checkpoint
    from neoxcli.convert.cli_ops import atomic_dir, parse_dtype
    from neoxcli.data.tokenizer import CharLevelTokenizer

    cfg, state, tokenizer, step_dir, configs = read_gpt_neox(
        src, config_files=config_files, vocab_file=vocab_file, merge_file=merge_file, tag=tag
    )
    module = cast_state(state, parse_dtype(dtype))
    rows = state["layers.0.word_embeddings.weight"].shape[0]
    iteration = int(m.group(1)) if (m := re.search(r"(\d+)$", step_dir.name)) else 0
    out_tag = tag_for(iteration)
    final_tag_dir = Path(out_dir).resolve() / out_tag
    tok_cfg = cfg.tokenizer
    keep_type = isinstance(tokenizer, CharLevelTokenizer) or not hasattr(tokenizer, "backend")
    new_tok = (
        tok_cfg
        if keep_type
        else tok_cfg.model_copy(
            update={
                "tokenizer_type": "HFTokenizer",
                "vocab_file": str(final_tag_dir / TOKENIZER_NAME),
                "merge_file": None,
            }
        )
    )
    new_cfg = cfg.model_copy(update={"tokenizer": new_tok})
    backend = None if keep_type else tokenizer.backend  # type: ignore[attr-defined]
    header = f"# imported from a GPT-NeoX checkpoint: {step_dir}\n"
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        write_checkpoint(tmp, new_cfg, module, iteration=iteration, tokenizer=backend, header=header)
    return {
        "out_dir": str(out_dir),
        "tag": out_tag,
        "parameters": sum(t.numel() for t in module.values()),
        "vocab_rows": rows,
        "configs": [str(p) for p in configs],
    }
