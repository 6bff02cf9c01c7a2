"""The muP recipe for configs: the model keys of Cerebras-GPT's muP, and rewriting a config file with them.

``convert_config_file`` is ``neox config mup``: it keeps the file's own layout
(flat or sectioned, GPT-NeoX spellings), replaces every spelling of the keys
it sets, and loads the result back before writing it. The model side of muP
(per-tensor init and learning rates) is ``neoxcli.model.mup``; the check that
it holds is ``neoxcli.model.coord_check``. No torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from neoxcli.config.loader import _read, dump_yaml, load_config
from neoxcli.config.presets import resolve_config_path
from neoxcli.errors import ConfigError


def mup_settings(
    hidden_size: int, base_width: int, base_lr: float, base_init_std: float, m_embed: float
) -> dict[str, Any]:
    """The model keys of the Cerebras-GPT muP recipe for a model of ``hidden_size``.

    The model code turns these into the per-tensor rules: hidden matrices get
    init std ``base_init_std / sqrt(m)`` and learning rate ``base_lr / m`` with
    ``m = hidden_size / base_width``; embeddings keep both base values and their
    output is multiplied by ``m_embed``; logits are divided by ``m``; attention
    scores use ``1 / d_head``. Residual-output layers also get GPT-2's
    ``1 / sqrt(2 * num_layers)`` (``scaled_normal``).
    """
    return {
        "use_mup": True,
        "mup_width_scale": hidden_size / base_width,
        "mup_embedding_mult": float(m_embed),
        "init_method": "normal",
        "output_layer_init_method": "scaled_normal",
        "init_method_std": float(base_init_std),
    }


def _norm(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def _drop(mapping: dict[str, Any], names: set[str]) -> None:
    for key in list(mapping):
        if _norm(key) in names:
            del mapping[key]


def _section(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    for key, value in data.items():
        if _norm(key) == name and isinstance(value, dict):
            return value
    return None


def patch_mapping(
    data: dict[str, Any], model_keys: dict[str, Any], lr: float, min_lr: float
) -> dict[str, Any]:
    """A copy of a raw config mapping (flat or sectioned) with the given model keys, lr and min_lr.

    Every existing spelling of those keys is removed first (``num-layers`` and
    ``num_layers``, flat and in a section), so the file does not say two things.
    """
    import copy

    out = copy.deepcopy(dict(data))
    model = _section(out, "model")
    train = _section(out, "train")
    for mapping in (out, model, train):
        if mapping is not None:
            _drop(mapping, set(model_keys) | {"min_lr", "lr"})
    (model if model is not None else out).update(model_keys)
    (train if train is not None else out)["min_lr"] = min_lr
    optimizer = _section(out, "optimizer") or (_section(train, "optimizer") if train is not None else None)
    if optimizer is None:
        out["lr"] = lr  # GPT-NeoX's alias of optimizer.params.lr
        return out
    params = _section(optimizer, "params")
    if params is None:
        _drop(optimizer, {"params"})
        optimizer["params"] = params = {}
    _drop(params, {"lr"})
    params["lr"] = lr
    return out


def convert_config_file(
    in_path: str | Path,
    out_path: str | Path | None,
    base_width: int = 256,
    base_lr: float = 6e-3,
    base_init_std: float = 0.08,
    m_embed: float = 10.0,
) -> tuple[str, str]:
    """Write the muP version of a config file; returns ``(yaml text, one-line summary)``.

    The result is loaded back and checked before it is written, so a file that
    would not mean what was asked for is never left behind.
    """
    import tempfile

    from neoxcli.fileio import atomic_write_text

    in_path = resolve_config_path(in_path)
    cfg = load_config([in_path], warn=lambda _m: None)
    hidden, old_lr, old_min = cfg.model.hidden_size, cfg.train.optimizer.lr, cfg.train.min_lr
    min_lr = float(f"{old_min * base_lr / old_lr:.12g}") if old_lr > 0 else 0.0
    keys = mup_settings(hidden, base_width, base_lr, base_init_std, m_embed)
    _, raw = _read(in_path)
    data = patch_mapping(dict(raw), keys, base_lr, min_lr)
    m = keys["mup_width_scale"]
    header = (
        f"# muP version of {in_path} (neox config mup): base width {base_width}, "
        f"width multiplier {m:g} = {hidden} / {base_width}\n"
        f"# base lr {base_lr:g} (hidden matrices {base_lr / m:.3g}), base init std {base_init_std:g} "
        f"(hidden matrices {base_init_std / math.sqrt(m):.3g}), embedding multiplier {m_embed:g}\n"
    )
    text = header + dump_yaml(data)

    with tempfile.TemporaryDirectory() as tmp:
        check_path = Path(tmp) / "mup.yml"
        check_path.write_text(text, encoding="utf-8")
        new = load_config([check_path], warn=lambda _m: None)
    got = {k: getattr(new.model, k) for k in keys}
    if got != keys or new.train.optimizer.lr != base_lr or not math.isclose(new.train.min_lr, min_lr):
        raise ConfigError(
            f"could not rewrite {in_path} as a muP config (the result reads back as {got})",
            hint="use a flat GPT-NeoX-style file, or set the keys by hand",
        )
    if out_path is not None:
        atomic_write_text(Path(out_path), text)
    where = f"wrote {out_path}: " if out_path is not None else ""
    summary = (
        f"{where}use_mup, width multiplier {m:g} ({hidden} / {base_width}), lr {base_lr:g}, "
        f"init std {base_init_std:g}, embedding multiplier {m_embed:g}"
    )
    return text, summary
