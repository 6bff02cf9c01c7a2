"""`neox config`: show, validate and convert configs; list the presets.

A Typer sub-app whose subcommands add themselves with ``@app.command``; each
parses its options and prints what one library call returns
(``neoxcli.config.report``, ``.presets``, ``.mup``). Only typer and the
standard library are imported at module level.

A config argument may name a preset (``pythia-160m``) instead of a file; the
config loader resolves it, and an existing file of that name wins.
"""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Show or validate configs: YAML or JSON, flat GPT-NeoX style or sectioned.

GPT-NeoX's own config files load as they are. Files merge left to right (later keys win); --set overrides come last. A preset name (see `neox config presets`) stands for its file.

\b
Examples:
    neox config show configs/pythia-160m.yml
    neox config show pythia-1b --params
    neox config validate model.yml cluster.yml --set train_iters=2000
    neox config mup gpt3-1.3b -o gpt3-1.3b-mup.yml
"""

SHOW_HELP = """Print the resolved config as YAML, with derived values and ignored GPT-NeoX keys.

The `derived:` block holds what neox computes: batch sizes for the job's data-parallel size (from num_gpus * num_nodes, or --world-size), the learning-rate schedule lengths, the training precision and, when the vocab size is known (--vocab-size, or a tokenizer.vocab_file JSON), the padded embedding size.

--params prints only the parameter counts: total and non-embedding (without the input embeddings and an untied output matrix), computed on PyTorch's meta device, so a 20B model needs no memory. The vocabulary is padded as GPT-NeoX pads it, to a multiple of make_vocab_size_divisible_by x model_parallel_size; its size comes from --vocab-size, the tokenizer file, or the known size of a well-known tokenizer.

\b
Examples:
    neox config show configs/pythia-160m.yml
    neox config show pythia-6.9b --params
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
    """Print load warnings (the library returns them once the config is known to be good)."""
    import sys

    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


@app.command("show", help=SHOW_HELP)
def show(
    files: list[Path] | None = _FILES,
    set_: list[str] = _SET,
    flat: bool = typer.Option(False, "--flat", help="One flat GPT-NeoX-style mapping instead of sections."),
    world_size: int | None = _WORLD_SIZE,
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", min=1, metavar="N", help="Tokenizer vocab size, for padded_vocab_size."
    ),
    params: bool = typer.Option(
        False, "--params", help="Print only the total and non-embedding parameter counts."
    ),
) -> None:
    """Show what a run would use, including what neox derives and what it ignores."""
    from neoxcli.config.report import show_config

    report = show_config(
        _paths(files, "show"), set_, flat=flat, world_size=world_size, vocab_size=vocab_size, params=params
    )
    _warn(report.warnings)
    typer.echo(report.text, nl=False)


@app.command("validate", help=VALIDATE_HELP)
def validate(
    files: list[Path] | None = _FILES,
    set_: list[str] = _SET,
    world_size: int | None = _WORLD_SIZE,
) -> None:
    """Fail fast (exit 2) on a config that `neox train` would reject."""
    from neoxcli.config.report import validate_config

    _warn(validate_config(_paths(files, "validate"), set_, world_size=world_size))
    typer.echo(f"ok: {' '.join(str(f) for f in files or ())}")


PRESETS_HELP = """List the shipped model presets with their Hugging Face ids.

Any command that takes a config accepts a preset name in place of a file.

\b
Examples:
    neox config presets
    neox config show pythia-410m --params
"""


@app.command("presets", help=PRESETS_HELP)
def presets() -> None:
    """Name, Hugging Face id and title of each preset."""
    from neoxcli.config.presets import list_presets

    for preset in list_presets():
        typer.echo(f"{preset.name:<22} {preset.hf_id or '-':<29} {preset.title}")


MUP_HELP = """Turn a standard config into a muP (maximal-update parametrisation) one.

Follows the Cerebras-GPT muP recipe: hyperparameters tuned on a small base model of width --base-width carry over to any width. The output sets use_mup, mup_width_scale = hidden_size / base width, mup_embedding_mult = --m-embed, init_method_std = --base-init-std (normal init; residual-output layers scaled_normal) and lr = --base-lr (min_lr keeps its ratio to lr). The model then scales hidden-matrix init by 1/sqrt(width multiplier), their learning rate by 1/width multiplier, the logits by 1/width multiplier and attention scores by 1/d_head.

Without -o the new config is printed. Check that muP holds with `neox mup coord-check`.

\b
Examples:
    neox config mup gpt3-1.3b -o gpt3-1.3b-mup.yml
    neox config mup model.yml -o model-mup.yml --base-width 256 --base-lr 6e-3 --base-init-std 0.08 --m-embed 10
"""


@app.command("mup", help=MUP_HELP)
def mup(
    config: Path = typer.Argument(..., metavar="IN", help="Config file (or preset name) to convert."),
    output: Path | None = typer.Option(
        None, "-o", "--output", metavar="OUT", help="Where to write the muP config."
    ),
    base_width: int = typer.Option(256, "--base-width", min=1, help="Width of the tuned base model."),
    base_lr: float = typer.Option(6e-3, "--base-lr", min=0.0, help="Learning rate tuned at the base width."),
    base_init_std: float = typer.Option(
        0.08, "--base-init-std", min=0.0, help="Init std tuned at the base width."
    ),
    m_embed: float = typer.Option(10.0, "--m-embed", min=0.0, help="Multiplier on the embedding output."),
) -> None:
    """Write (or print) the muP version of one config file."""
    import sys

    from neoxcli.config.mup import convert_config_file

    text, summary = convert_config_file(config, output, base_width, base_lr, base_init_std, m_embed)
    if output is None:
        typer.echo(text, nl=False)
    print(summary, file=sys.stderr)
