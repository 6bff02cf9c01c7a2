"""What ``neox config show`` and ``neox config validate`` report about a set of config files.

Each function loads the files, checks them as ``neox train`` would, and
returns the text to print together with the load warnings, so the caller can
print the warnings only once the config is known to be good (a failure then
shows only its error). Import-light: torch only for parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neoxcli.config.derived import Derived, default_world_size, resolve, vocab_size_from_file
from neoxcli.config.loader import dump_config, dump_yaml, load_config
from neoxcli.config.schema import NeoXConfig


@dataclass
class Report:
    """Text for stdout, and the load warnings (without a ``warning:`` prefix) for stderr."""

    text: str
    warnings: list[str] = field(default_factory=list)


def derive(cfg: NeoXConfig, world_size: int | None, vocab_size: int | None) -> tuple[Derived, list[str]]:
    """Resolve derived values and say, as notes for YAML comments, what they assumed."""
    notes: list[str] = []
    if world_size is None:
        world_size = default_world_size(cfg)
        gpus = cfg.launcher.num_gpus
        origin = (
            "num_gpus * num_nodes" if gpus and gpus > 0 else "no num_gpus in the config: one model replica"
        )
        notes.append(f"world_size {world_size} ({origin}); pass --world-size for another job size")
    if vocab_size is None:
        vocab_size = vocab_size_from_file(cfg.tokenizer.vocab_file)
        if vocab_size is None:
            notes.append(
                "padded_vocab_size needs the vocab size: --vocab-size N or a tokenizer.vocab_file JSON"
            )
    derived = resolve(cfg, world_size=world_size, vocab_size=vocab_size, bf16_supported=False)
    if cfg.train.precision == "auto":
        notes.append(
            "precision auto: bf16 on GPUs that support it and on CPUs with AMX, else fp32 (shown: fp32)"
        )
    return derived, notes


def show_text(
    cfg: NeoXConfig, *, flat: bool = False, world_size: int | None = None, vocab_size: int | None = None
) -> str:
    """The resolved config as YAML, then the derived values and the ignored GPT-NeoX keys."""
    derived, notes = derive(cfg, world_size, vocab_size)
    parts = [f"# resolved from: {', '.join(cfg.sources)}\n", dump_config(cfg, flat=flat), "\n"]
    parts += [f"# {note}\n" for note in notes]
    parts.append(dump_yaml({"derived": derived.as_dict()}))
    if cfg.ignored_keys:
        parts.append("\n# GPT-NeoX keys neox accepts but does not act on yet\n")
        parts.append(dump_yaml({"ignored_gpt_neox_keys": cfg.ignored_keys}))
    return "".join(parts)


def show_config(
    paths: Sequence[str | Path],
    overrides: Sequence[str] = (),
    *,
    flat: bool = False,
    world_size: int | None = None,
    vocab_size: int | None = None,
    params: bool = False,
) -> Report:
    """``neox config show``: the resolved config and derived values, or only the parameter counts."""
    warnings: list[str] = []
    cfg = load_config(paths, overrides, warn=warnings.append)
    if params:
        from neoxcli.config.params import params_report

        return Report(params_report(cfg, vocab_size), warnings)
    return Report(show_text(cfg, flat=flat, world_size=world_size, vocab_size=vocab_size), warnings)


def validate_config(
    paths: Sequence[str | Path], overrides: Sequence[str] = (), *, world_size: int | None = None
) -> list[str]:
    """``neox config validate``: everything ``neox train`` checks before it starts; returns the warnings."""
    warnings: list[str] = []
    cfg = load_config(paths, overrides, warn=warnings.append)
    resolve(cfg, world_size=world_size)
    return warnings
