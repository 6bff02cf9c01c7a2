"""Starting a run from another run's weights, and telling a resume what changed since its checkpoint.

GPT-NeoX's ``finetune`` loads only the weights of ``load`` and starts a new run
(iteration 0, a fresh optimizer, LR schedule and data position);
``no_load_optim`` keeps iteration, schedule and data position but not the
optimizer state. Either way the weights come as the full model's state dict
(``neoxcli.checkpoint.load_module_state`` merges any saved layout), are put
into the full model before ``parallelize`` cuts it for this rank's layout, and
so load under any layout and ZeRO stage. ``load`` may also name a Hugging Face
model directory: it is converted in memory with ``neox convert --from hf``'s
map, and its config.json is the model section.

A plain resume keeps its checkpoint's meaning; when the data, model or
schedule settings differ from the ones saved with it, ``config_changes``
lists them for one warning before the first step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from neoxcli.config.schema import ModelConfig, NeoXConfig
from neoxcli.errors import ConfigError, NeoxError

#: Model keys that change how a run trains, not which weights fit: a run that takes its model section
#: from the weights it starts from keeps the config's own values of these.
RUN_MODEL_KEYS = frozenset(
    {
        "seq_length",
        "attention_dropout",
        "hidden_dropout",
        "init_method",
        "output_layer_init_method",
        "init_method_std",
    }
)

#: Settings whose change a resume reports, as (section, field). ``train_iters`` is not one:
#: raising it is how a finished run is continued.
_WATCHED: tuple[tuple[str, str], ...] = (
    *(
        ("data", f)
        for f in (
            "data_path",
            "train_data_paths",
            "valid_data_paths",
            "test_data_paths",
            "train_data_weights",
            "valid_data_weights",
            "test_data_weights",
            "label_data_paths",
            "split",
            "data_preset",
        )
    ),
    ("tokenizer", "tokenizer_type"),
    ("tokenizer", "vocab_file"),
    ("tokenizer", "merge_file"),
    *(
        ("train", f)
        for f in (
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "lr_decay_style",
            "lr_decay_iters",
            "lr_decay_fraction",
            "warmup",
            "min_lr",
        )
    ),
)


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face model directory (config.json, no neox ``latest`` or tags) rather than a save directory."""
    from neoxcli.checkpoint import list_checkpoints

    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and not (path / "latest").exists()
        and not list_checkpoints(path)
    )


def adopt_model(cfg: NeoXConfig, model: ModelConfig, where: str) -> NeoXConfig:
    """``cfg`` with the model section ``model`` of the weights it starts from (``where`` names them).

    A model key the config sets itself must agree with ``model`` (one error
    naming the first that does not), except the ``RUN_MODEL_KEYS``, where the
    config's value is used (e.g. a shorter ``seq_length`` to finetune with).
    """
    theirs, ours = model.model_dump(), cfg.model.model_dump()
    kept: dict[str, Any] = {}
    for key in sorted(cfg.model.model_fields_set):
        if key in RUN_MODEL_KEYS:
            kept[key] = ours[key]
        elif ours[key] != theirs[key]:
            raise ConfigError(
                f"model.{key}: {ours[key]!r} in the config, but {where} has {theirs[key]!r}",
                hint=f"drop {key} from the config: a finetune takes the model of the weights it starts from",
            )
    try:
        adopted = ModelConfig.model_validate({**theirs, **kept})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "model"
        raise ConfigError(f"model.{field}: {err['msg']} (with the model of {where})") from None
    return cfg.model_copy(update={"model": adopted})


def config_from_hf(cfg: NeoXConfig, hf_dir: Path) -> tuple[NeoXConfig, dict[str, Any]]:
    """``cfg`` with the model of the Hugging Face directory ``hf_dir`` (``adopt_model``), and its weights (ours)."""
    from neoxcli.convert.cli_ops import read_hf

    hf_model, state, _backend, _info = read_hf(hf_dir)
    return adopt_model(cfg, hf_model, f"the Hugging Face model in {hf_dir}"), state


def fit_vocab_rows(state: Mapping[str, Any], expected: Mapping[str, Any], vocab: int) -> dict[str, Any]:
    """``state`` with its vocabulary rows cut or padded to the model's, where only padding rows differ.

    The vocabulary is padded to a multiple of ``make_vocab_size_divisible_by``
    times ``model_parallel_size``, so a checkpoint of another tensor-parallel
    size can have more or fewer rows than the tokenizer's ``vocab`` needs;
    rows past ``vocab`` are never a token. Missing rows keep the new model's
    initial values (``expected``); any other shape difference is left for
    ``check_state_fits`` to report.
    """
    import torch

    out = dict(state)
    for name, ref in expected.items():
        got = out.get(name)
        if got is None or got.dim() == 0 or tuple(got.shape) == tuple(ref.shape):
            continue
        if tuple(got.shape[1:]) != tuple(ref.shape[1:]) or min(got.shape[0], ref.shape[0]) < vocab:
            continue
        rows = ref.shape[0]
        out[name] = got[:rows] if got.shape[0] > rows else torch.cat([got, ref[got.shape[0] :].to(got.dtype)])
    return out


def load_full_weights(model: Any, state: Mapping[str, Any], source: str, vocab: int) -> None:
    """Put the full model's weights ``state`` into the (not yet parallelized) ``model``; misfits are one error."""
    from neoxcli.checkpoint import check_state_fits

    expected = model.state_dict()
    fitted = fit_vocab_rows(state, expected, vocab)
    check_state_fits(
        expected,
        fitted,
        source,
        hint="the model settings must be the ones the weights were trained with (see the checkpoint's config.yml)",
    )
    model.load_state_dict(fitted)


def check_saved_model(model: Any, saved: ModelConfig, now: ModelConfig, source: str) -> None:
    """Refuse, before DeepSpeed reads anything, a resume whose model cannot take the checkpoint's weights.

    The saved model is built on the meta device with this model's vocabulary
    rows (vocabulary changes are the tokenizer's, reported with the data), so
    the check costs no memory and names the first tensor that does not fit.
    """
    if saved == now:
        return
    import torch

    from neoxcli.checkpoint import check_state_fits
    from neoxcli.model import GPTModel

    expected = model.state_dict()
    rows = int(expected["layers.0.word_embeddings.weight"].shape[0])
    with torch.device("meta"):
        saved_state = GPTModel(saved, rows).state_dict()
    old, new = saved.model_dump(), now.model_dump()
    diffs = [f"{k}: {old[k]!r} there, {new[k]!r} here" for k in old if old[k] != new.get(k)]
    check_state_fits(
        expected,
        saved_state,
        source,
        hint="the checkpoint was trained with other model settings: " + "; ".join(diffs[:5]),
    )


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


def model_changes(saved: ModelConfig, now: ModelConfig) -> list[str]:
    """``key: saved → now`` for each model setting that differs."""
    old, new = saved.model_dump(), now.model_dump()
    return [f"{k}: {_show(old[k])} → {_show(new[k])}" for k in old if old[k] != new.get(k)]


def config_changes(saved: NeoXConfig, now: NeoXConfig) -> list[str]:
    """``key: saved → now`` for each data, tokenizer, model and schedule setting a resume would change."""
    lines: list[str] = []
    for section, field in _WATCHED:
        old, new = getattr(getattr(saved, section), field), getattr(getattr(now, section), field)
        if old != new:
            lines.append(f"{field}: {_show(old)} → {_show(new)}")
    old_lr, new_lr = saved.train.optimizer.lr, now.train.optimizer.lr
    if old_lr != new_lr:
        lines.append(f"lr: {old_lr} → {new_lr}")
    return lines + model_changes(saved.model, now.model)


def saved_config(tag_dir: Path) -> NeoXConfig | None:
    """The config saved with a checkpoint, or None when it has none that loads."""
    from neoxcli.checkpoint import CONFIG_NAME
    from neoxcli.config import load_config

    path = tag_dir / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return load_config([path], warn=lambda _msg: None)
    except NeoxError:
        return None
