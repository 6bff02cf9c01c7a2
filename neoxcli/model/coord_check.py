"""The muP coordinate check: train a few steps at several widths and record activation sizes.

The standard muP sanity check (Yang et al. 2022). Under a correct muP the
mean size of every layer's output stays about the same at every width; under
the standard parametrisation the logits (and, with Adam, the hidden layers)
grow with width, which is why a learning rate tuned on a small model fails on
a big one. ``run_coord_check`` is ``neox mup coord-check``; ``format_table``
and ``save_plot`` (matplotlib, the ``mup`` extra) present the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MATPLOTLIB_HINT = "pip install matplotlib (or leave out -o to print the table only)"


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


@dataclass
class CoordCheck:
    """The records of one coord check and what was checked."""

    records: list[dict[str, Any]]
    use_mup: bool
    num_layers: int

    @property
    def kind(self) -> str:
        return "muP" if self.use_mup else "standard parametrisation"

    def table(self) -> str:
        """A title line and the aligned table, as ``neox mup coord-check`` prints them."""
        title = f"# mean |activation| per step and width ({self.kind}, {self.num_layers} layers)\n"
        return title + format_table(self.records)


def run_coord_check(
    paths: Sequence[str | Path],
    widths: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    steps: int = 3,
    lr: float | None = None,
    batch_size: int = 4,
    seq_length: int = 64,
    vocab_size: int = 512,
    data: str | None = None,
    seed: int = 0,
    plot: bool = False,
) -> CoordCheck:
    """Load the configs and run ``coord_check`` on their model at ``widths``.

    ``lr`` defaults to the config's learning rate. With ``data`` (an indexed
    dataset prefix) the batches are windows of its first documents and the
    vocabulary is the dataset's. ``plot=True`` checks that matplotlib is there
    before any training, so a missing package costs no time.
    """
    from neoxcli.config.loader import load_config
    from neoxcli.errors import NeoxError

    width_list = sorted(set(widths))
    if not width_list or min(width_list) < 1:
        raise NeoxError("--widths needs at least one positive width", hint="e.g. --widths 64,128,256")
    if plot:
        _require_matplotlib()  # fail before training, not after
    cfg = load_config(list(paths), overrides)
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
    return CoordCheck(records, cfg.model.use_mup, cfg.model.num_layers)
