"""`neox convert`: Hugging Face interop."""

from __future__ import annotations

from pathlib import Path

import typer

from neoxcli.commands._common import not_available

HELP = """Convert checkpoints to or from Hugging Face Transformers format.

Examples:

    neox convert runs/quickstart --to hf out/hf-model

    neox convert path/to/hf-model --from hf runs/imported
"""


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP)
    def convert(
        source: Path = typer.Argument(..., help="Checkpoint directory (ours or Hugging Face)."),
        output: Path = typer.Argument(..., help="Where to write the converted model."),
        to: str | None = typer.Option(None, "--to", help="Target format: hf."),
        from_: str | None = typer.Option(None, "--from", help="Source format: hf."),
    ) -> None:
        raise not_available("convert", "Hugging Face conversion lands with the model work.")
