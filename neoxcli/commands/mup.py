"""`neox mup`: muP tools (the config conversion itself is `neox config mup`).

``coord-check`` is the standard muP sanity check (Yang et al. 2022): train a
few steps at several widths and watch the size of the activations. Under a
correct muP they stay about the same at every width; under the standard
parametrisation the logits (and, with Adam, the hidden layers) grow with
width, which is why a learning rate tuned on a small model fails on a big one.

Only typer and the standard library are imported at module level.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    name="mup",
    help=(
        "muP tools: check that activations stay width-independent (coord-check).\n\n"
        "\b\nExamples:\n    neox config mup gpt3-1.3b -o gpt3-1.3b-mup.yml\n"
        "    neox mup coord-check gpt3-1.3b-mup.yml --widths 64,128,256,512 -o coord.png"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MATPLOTLIB_HINT = "pip install matplotlib (or leave out -o to print the table only)"


# --------------------------------------------------------------------------- config conversion


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

    from neoxcli.config import load_config
    from neoxcli.config.loader import _read, dump_yaml
    from neoxcli.errors import ConfigError
    from neoxcli.fileio import atomic_write_text

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


# --------------------------------------------------------------------------- coord check


def width_config(model_cfg: Any, width: int, seq_length: int) -> Any:
    """``model_cfg`` at another width, keeping head size, depth and the muP base width.

    Heads are ``width / head_dim`` (so attention's 1/d_head scale does not
    change with width); a set ``intermediate_size`` scales with width.
    """
    from neoxcli.config.schema import ModelConfig
    from neoxcli.errors import ConfigError

    head_dim = model_cfg.head_dim
    if width % head_dim:
        raise ConfigError(
            f"width {width} is not a multiple of the config's head size {head_dim}",
            hint="pick widths that are multiples of hidden_size / num_attention_heads",
        )
    heads = width // head_dim
    group = model_cfg.num_attention_heads // model_cfg.kv_heads
    update: dict[str, Any] = {
        "hidden_size": width,
        "num_attention_heads": heads,
        "num_kv_heads": heads // group if group > 1 and heads % group == 0 else None,
        "seq_length": seq_length,
        "max_position_embeddings": seq_length,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    if model_cfg.intermediate_size is not None:
        update["intermediate_size"] = max(
            1, round(model_cfg.intermediate_size * width / model_cfg.hidden_size)
        )
    if model_cfg.use_mup:
        base_width = model_cfg.hidden_size / model_cfg.mup_width_scale
        update["mup_width_scale"] = width / base_width
    return ModelConfig(**{**model_cfg.model_dump(), **update})


def coord_check(
    model_cfg: Any,
    widths: list[int],
    steps: int = 3,
    lr: float = 6e-3,
    batch_size: int = 4,
    seq_length: int = 32,
    vocab_size: int = 256,
    tokens: Any = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train ``steps`` AdamW steps at each width; one record per (width, step).

    Each record holds the mean absolute value of the embedding output, of every
    block's output and of the logits in that step's forward pass (step 1 is
    the model at initialisation), and the loss. All widths see the same
    batches: random tokens, or windows of ``tokens`` (a 1-D integer array).
    Learning rates come from the muP parameter groups (``lr * lr_scale``).
    """
    import torch
    import torch.nn.functional as F

    from neoxcli.model import GPTModel, param_groups

    gen = torch.Generator().manual_seed(seed)
    if tokens is None:
        batches = [
            torch.randint(0, vocab_size, (batch_size, seq_length + 1), generator=gen) for _ in range(steps)
        ]
    else:
        data = torch.as_tensor(tokens, dtype=torch.long)
        if data.numel() < seq_length + 2:
            raise ValueError(
                f"the dataset has {data.numel()} tokens, fewer than one sample of {seq_length + 1}"
            )
        starts = torch.randint(0, data.numel() - seq_length - 1, (steps, batch_size), generator=gen)
        batches = [torch.stack([data[s : s + seq_length + 1] for s in row.tolist()]) for row in starts]

    records: list[dict[str, Any]] = []
    for width in widths:
        cfg = width_config(model_cfg, width, seq_length)
        torch.manual_seed(seed)
        model = GPTModel(cfg, vocab_size).train()
        groups = param_groups(model, weight_decay=0.0)
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
        seen: dict[str, float] = {}
        names = ["embedding"] + [f"block {i}" for i in range(1, cfg.num_layers + 1)] + ["logits"]
        layers = [model.embedding, *model.blocks, model.head]
        hooks = []
        for name, layer in zip(names, layers, strict=True):

            def hook(_m: Any, _i: Any, out: Any, name: str = name, store: dict[str, float] = seen) -> None:
                store[name] = out.detach().abs().mean().item()

            hooks.append(layer.register_forward_hook(hook))
        try:
            for step, batch in enumerate(batches, start=1):
                seen.clear()
                logits = model(batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                records.append(
                    {"width": width, "step": step, **{n: seen[n] for n in names}, "loss": loss.item()}
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for h in hooks:
                h.remove()
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    """Records as an aligned text table, one row per (step, width)."""
    if not records:
        return ""
    cols = [k for k in records[0] if k not in ("width", "step")]
    header = ["step", "width", *cols]
    rows = [[str(r["step"]), str(r["width"]), *(f"{r[c]:.4g}" for c in cols)] for r in records]
    rows.sort(key=lambda r: (int(r[0]), int(r[1])))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines) + "\n"


def _require_matplotlib() -> Any:
    from neoxcli.errors import NeoxError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NeoxError("saving the coord-check plot needs matplotlib", hint=MATPLOTLIB_HINT) from None
    return plt


def save_plot(records: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """One panel per step: mean |activation| against width (log-log), one line per layer."""
    plt = _require_matplotlib()
    steps = sorted({r["step"] for r in records})
    layers = [k for k in records[0] if k not in ("width", "step", "loss")]
    fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, step in zip(axes[0], steps, strict=True):
        rows = sorted((r for r in records if r["step"] == step), key=lambda r: r["width"])
        for i, layer in enumerate(layers):
            color = "tab:red" if layer == "logits" else cmap(i / max(len(layers) - 1, 1))
            ax.plot(
                [r["width"] for r in rows], [r[layer] for r in rows], marker="o", label=layer, color=color
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"step {step}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_tokens(prefix: str) -> Any:
    import numpy as np

    from neoxcli.data.indexed import IndexedDataset

    ds = IndexedDataset(prefix)
    n = min(len(ds), 4096)
    return np.concatenate([ds.get(i) for i in range(n)]).astype(np.int64)


COORD_HELP = """Train a few steps at several widths and report activation sizes, to check muP.

For each width (head size, depth and the muP base width kept from the config) the model trains --steps AdamW steps with the config's learning rate (or --lr) on the same batches, recording the mean |x| of the embedding output, every block's output and the logits. Under muP these stay roughly constant across widths; under the standard parametrisation they grow. Prints the table; -o also saves a PNG (needs matplotlib).

\b
Examples:
    neox mup coord-check model-mup.yml --widths 64,128,256,512 -o coord.png
    neox mup coord-check model.yml --widths 64,128,256 --steps 5 --data data/enwik8/enwik8_text_document
"""


@app.command("coord-check", help=COORD_HELP)
def coord_check_cmd(
    config: list[Path] = typer.Argument(..., metavar="CONFIG", help="Config files (or a preset name)."),
    widths: str = typer.Option("64,128,256", "--widths", metavar="W1,W2,..", help="Widths to train."),
    steps: int = typer.Option(3, "--steps", min=1, help="Training steps per width."),
    output: Path | None = typer.Option(None, "-o", "--output", metavar="PNG", help="Save a plot here."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: the config's)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Sequences per step."),
    seq_length: int = typer.Option(64, "--seq-length", min=2, help="Tokens per sequence."),
    vocab_size: int = typer.Option(512, "--vocab-size", min=2, help="Vocabulary for random tokens."),
    data: str | None = typer.Option(
        None,
        "--data",
        metavar="PREFIX",
        help="An indexed dataset (PREFIX.bin/.idx) instead of random tokens.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Override one setting (repeatable)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the init and the batches."),
) -> None:
    """Run the coord check and print (and optionally plot) the activation table."""
    from neoxcli.commands.config import resolve_config_path
    from neoxcli.config import load_config
    from neoxcli.errors import NeoxError

    try:
        width_list = sorted({int(w) for w in widths.split(",") if w.strip()})
    except ValueError:
        raise NeoxError(f"--widths must be integers separated by commas, got {widths!r}") from None
    if not width_list or min(width_list) < 1:
        raise NeoxError("--widths needs at least one positive width", hint="e.g. --widths 64,128,256")
    if output is not None:
        _require_matplotlib()  # fail before training, not after
    cfg = load_config([resolve_config_path(c) for c in config], set_)
    tokens = None
    if data is not None:
        tokens = _load_tokens(data)
        vocab_size = int(tokens.max()) + 1
    records = coord_check(
        cfg.model,
        width_list,
        steps=steps,
        lr=cfg.train.optimizer.lr if lr is None else lr,
        batch_size=batch_size,
        seq_length=seq_length,
        vocab_size=vocab_size,
        tokens=tokens,
        seed=seed,
    )
    kind = "muP" if cfg.model.use_mup else "standard parametrisation"
    typer.echo(f"# mean |activation| per step and width ({kind}, {cfg.model.num_layers} layers)")
    typer.echo(format_table(records), nl=False)
    if output is not None:
        save_plot(records, output, f"coord check: {kind}")
        typer.echo(f"saved {output}")
