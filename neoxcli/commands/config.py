"""`neox config`: show, validate and convert configs; list the presets.

A Typer sub-app whose subcommands add themselves with ``@app.command``. Only
typer and the standard library are imported at module level; the config
package (and torch, for ``--params``) is imported inside the commands.

A config argument may name a preset in ``templates/presets`` (``pythia-160m``)
instead of a file; an existing file of that name wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def preset_dir() -> Path:
    """``templates/presets`` of this source tree."""
    return Path(__file__).resolve().parents[2] / "templates" / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without ``.yml``)."""
    return sorted(p.stem for p in preset_dir().glob("*.yml"))


def resolve_config_path(name: str | Path) -> str:
    """A config file path: the file itself when it exists, else the preset of that name."""
    path = Path(name)
    if path.exists() or path.with_name(path.name + ".yml").exists():
        return str(path)
    preset = preset_dir() / f"{path.name.removesuffix('.yml')}.yml"
    if path.parent == Path(".") and preset.is_file():
        return str(preset)
    return str(path)


def _paths(files: list[Path] | None, command: str) -> list[str]:
    """The file arguments (preset names resolved), or neox's own one-line error when there are none."""
    if not files:
        from neoxcli.errors import ConfigError

        raise ConfigError("no config files given", hint=f"e.g. neox config {command} model.yml")
    return [resolve_config_path(f) for f in files]


#: Tokenizer vocab sizes (without padding) of well-known tokenizers, by type, file name or Hub id.
KNOWN_VOCAB_SIZES: dict[str, int] = {
    "20b_tokenizer.json": 50277,
    "neox-20b-tokenizer.json": 50277,
    "eleutherai/gpt-neox-20b": 50277,
    "gpt2bpetokenizer": 50257,
    "gpt2-vocab.json": 50257,
    "gpt2": 50257,
    "hfgpt2tokenizer": 50258,
    "charleveltokenizer": 512,
    "huggyllama/llama-7b": 32000,
    "huggyllama/llama-13b": 32000,
    "meta-llama/llama-2-7b-hf": 32000,
    "meta-llama/llama-2-13b-hf": 32000,
}
DEFAULT_VOCAB_SIZE = 50277  # the GPT-NeoX-20B tokenizer, GPT-NeoX's and Pythia's


def _count_vocab(cfg: Any, vocab_size: int | None) -> tuple[int, str]:
    """(tokenizer vocab size, where it came from) for counting parameters."""
    from neoxcli.config import vocab_size_from_file

    if vocab_size is not None:
        return vocab_size, "--vocab-size"
    tok = cfg.tokenizer
    from_file = vocab_size_from_file(tok.vocab_file)
    if from_file is not None:
        return from_file, f"read from {tok.vocab_file}"
    names = [tok.tokenizer_type] + ([Path(tok.vocab_file).name] if tok.vocab_file else [])
    for name in reversed(names):
        key = name.lower()
        if key in KNOWN_VOCAB_SIZES:
            return KNOWN_VOCAB_SIZES[key], f"known size of {name}"
        if key.startswith("eleutherai/pythia-"):
            return 50277, f"known size of {name}"
    return DEFAULT_VOCAB_SIZE, "assumed: the GPT-NeoX-20B tokenizer's size; pass --vocab-size N"


def count_parameters(model_cfg: Any, padded_vocab: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of the model, built on the meta device (no memory)."""
    import torch

    from neoxcli.model import GPTModel, num_parameters

    with torch.device("meta"):
        model = GPTModel(model_cfg, padded_vocab)
    return num_parameters(model), num_parameters(model, exclude_embeddings=True)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _params_report(cfg: Any, vocab_size: int | None) -> str:
    from neoxcli.config import padded_vocab_size
    from neoxcli.config.loader import dump_yaml

    vocab, origin = _count_vocab(cfg, vocab_size)
    divisible, mp = cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size
    padded = padded_vocab_size(vocab, divisible, mp)
    total, non_embedding = count_parameters(cfg.model, padded)
    lines = [
        f"# resolved from: {', '.join(cfg.sources)}\n",
        f"# vocab {vocab} ({origin}), padded to {padded}: a multiple of "
        f"make_vocab_size_divisible_by {divisible} x model_parallel_size {mp}\n",
        f"# {_human(total)} parameters, {_human(non_embedding)} without embeddings\n",
    ]
    data = {
        "parameters": {
            "total": total,
            "non_embedding": non_embedding,
            "vocab_size": vocab,
            "padded_vocab_size": padded,
        }
    }
    return "".join(lines) + dump_yaml(data)


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
    params: bool = typer.Option(
        False, "--params", help="Print only the total and non-embedding parameter counts."
    ),
) -> None:
    """Show what a run would use, including what neox derives and what it ignores."""
    from neoxcli.config import load_config
    from neoxcli.config.loader import dump_config, dump_yaml

    warnings: list[str] = []
    cfg = load_config(_paths(files, "show"), set_, warn=warnings.append)
    if params:
        report = _params_report(cfg, vocab_size)
        _warn(warnings)
        typer.echo(report, nl=False)
        return
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


PRESETS_HELP = """List the shipped model presets with their Hugging Face ids.

Any command that takes a config accepts a preset name in place of a file.

\b
Examples:
    neox config presets
    neox config show pythia-410m --params
"""


@app.command("presets", help=PRESETS_HELP)
def presets() -> None:
    """Name and first comment line of each preset."""
    for name in preset_names():
        first = (preset_dir() / f"{name}.yml").read_text(encoding="utf-8").splitlines()[0]
        typer.echo(f"{name:<22} {first.lstrip('# ').strip()}")


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

    from neoxcli.commands.mup import convert_config_file

    text, summary = convert_config_file(
        resolve_config_path(config), output, base_width, base_lr, base_init_std, m_embed
    )
    if output is None:
        typer.echo(text, nl=False)
    print(summary, file=sys.stderr)
