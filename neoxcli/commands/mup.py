"""`neox mup`: muP tools (the config conversion itself is `neox config mup`).

``coord-check`` parses its options and prints what
``neoxcli.model.coord_check.run_coord_check`` measures (see there for what the
check shows). Only typer and the standard library are imported at module level.
"""

from __future__ import annotations

from pathlib import Path

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
    from neoxcli.errors import NeoxError

    try:
        width_list = [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise NeoxError(f"--widths must be integers separated by commas, got {widths!r}") from None
    from neoxcli.model.coord_check import run_coord_check, save_plot  # torch: after the cheap checks

    result = run_coord_check(
        [str(c) for c in config],
        width_list,
        overrides=set_,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_length=seq_length,
        vocab_size=vocab_size,
        data=data,
        seed=seed,
        plot=output is not None,
    )
    typer.echo(result.table(), nl=False)
    if output is not None:
        save_plot(result.records, output, f"coord check: {result.kind}")
        typer.echo(f"saved {output}")
