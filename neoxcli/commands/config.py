"""`neox config`: show and validate configs.

A Typer sub-app, so later subcommands (``neox config mup``) add themselves
with ``@app.command``. Only typer and the standard library are imported at
module level; the config package is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = """Show or validate configs: YAML or JSON, flat GPT-NeoX style or sectioned.

GPT-NeoX's own config files load as they are. Files merge left to right (later keys win); --set overrides come last.

\b
Examples:
    neox config show configs/pythia-160m.yml
    neox config validate model.yml cluster.yml --set train_iters=2000
"""

SHOW_HELP = """Print the resolved config as YAML, with derived values and ignored GPT-NeoX keys.

The `derived:` block holds what neox computes: batch sizes for the job's data-parallel size (from num_gpus * num_nodes, or --world-size), the learning-rate schedule lengths, the training precision and, when the vocab size is known (--vocab-size, or a tokenizer.vocab_file JSON), the padded embedding size.

\b
Examples:
    neox config show configs/pythia-160m.yml
    neox config show model.yml cluster.yml --set model.hidden_size=256 --world-size 8
    neox config show model.yml --flat --vocab-size 50277
"""

VALIDATE_HELP = """Check configs and print `ok: <files>`, or the first problem (exit code 2).

Checks everything `neox train` checks before starting: keys, types, value ranges, cross-field rules and the batch sizes for the job size.

\b
Examples:
    neox config validate configs/pythia-160m.yml
    neox config validate model.yml cluster.yml --set train_micro_batch_size_per_gpu=4 --world-size 16
"""

app = typer.Typer(
    name="config",
    help=HELP,
    invoke_without_command=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _config(ctx: typer.Context) -> None:
    # Help for a bare `neox config`, printed here rather than raised as a usage error.
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# Optional so that "no files" is neox's own one-line error rather than a usage error.
_FILES = typer.Argument(None, metavar="CONFIG", help="YAML or JSON config files, merged left to right.")
_SET = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="Override one setting (repeatable): flat (hidden_size=256), dotted (model.hidden_size=256, "
    "zero_optimization.stage=2); the value is read as YAML (true, 3, 1e-4, [1,2]).",
)
_WORLD_SIZE = typer.Option(
    None,
    "--world-size",
    min=1,
    metavar="N",
    help="GPUs in the job (default: num_gpus * num_nodes from the config, else 1).",
)


def _paths(files: list[Path] | None, command: str) -> list[str]:
    """The file arguments, or neox's own one-line error when there are none."""
    if not files:
        from neoxcli.errors import ConfigError

        raise ConfigError("no config files given", hint=f"e.g. neox config {command} model.yml")
    return [str(f) for f in files]


def _warn(messages: list[str]) -> None:
    """Print load warnings once the config is known to be good, so a failure shows only its error."""
    import sys

    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


def _derive(cfg: Any, world_size: int | None, vocab_size: int | None) -> tuple[Any, list[str]]:
    """Resolve derived values and say, as YAML comments, what they assumed."""
    from neoxcli.config import default_world_size, resolve, vocab_size_from_file

    notes: list[str] = []
    if world_size is None:
        world_size = default_world_size(cfg)
        origin = "num_gpus * num_nodes" if cfg.launcher.num_gpus else "no num_gpus in the config"
        notes.append(f"world_size {world_size} ({origin}); pass --world-size for another job size")
    if vocab_size is None:
        vocab_size = vocab_size_from_file(cfg.tokenizer.vocab_file)
        if vocab_size is None:
            notes.append(
                "padded_vocab_size needs the vocab size: --vocab-size N or a tokenizer.vocab_file JSON"
            )
    derived = resolve(cfg, world_size=world_size, vocab_size=vocab_size, bf16_supported=False)
    if cfg.train.precision == "auto":
        notes.append("precision auto: bf16 on GPUs that support it, else fp32 (shown: fp32)")
    return derived, notes


@app.command("show", help=SHOW_HELP)
def show(
    files: list[Path] | None = _FILES,
    set_: list[str] = _SET,
    flat: bool = typer.Option(False, "--flat", help="One flat GPT-NeoX-style mapping instead of sections."),
    world_size: int | None = _WORLD_SIZE,
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", min=1, metavar="N", help="Tokenizer vocab size, for padded_vocab_size."
    ),
) -> None:
    """Show what a run would use, including what neox derives and what it ignores."""
    # `--params` is reserved on this command for a parameter-count option.
    from neoxcli.config import load_config
    from neoxcli.config.loader import dump_config, dump_yaml

    warnings: list[str] = []
    cfg = load_config(_paths(files, "show"), set_, warn=warnings.append)
    derived, notes = _derive(cfg, world_size, vocab_size)
    _warn(warnings)
    parts = [f"# resolved from: {', '.join(cfg.sources)}\n", dump_config(cfg, flat=flat), "\n"]
    parts += [f"# {note}\n" for note in notes]
    parts.append(dump_yaml({"derived": derived.as_dict()}))
    if cfg.ignored_keys:
        parts.append("\n# GPT-NeoX keys neox accepts but does not act on yet\n")
        parts.append(dump_yaml({"ignored_gpt_neox_keys": cfg.ignored_keys}))
    typer.echo("".join(parts), nl=False)


@app.command("validate", help=VALIDATE_HELP)
def validate(
    files: list[Path] | None = _FILES,
    set_: list[str] = _SET,
    world_size: int | None = _WORLD_SIZE,
) -> None:
    """Fail fast (exit 2) on a config that `neox train` would reject."""
    from neoxcli.config import load_config, resolve

    warnings: list[str] = []
    cfg = load_config(_paths(files, "validate"), set_, warn=warnings.append)
    resolve(cfg, world_size=world_size)
    _warn(warnings)
    typer.echo(f"ok: {' '.join(str(f) for f in files or ())}")
