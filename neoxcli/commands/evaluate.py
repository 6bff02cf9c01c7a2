"""`neox eval`: lm-evaluation-harness tasks and perplexity on text."""

from __future__ import annotations

from pathlib import Path

import typer

from neoxcli.commands._common import not_available

HELP = """Evaluate a checkpoint on lm-evaluation-harness tasks or perplexity of a text file.

Example:

    neox eval --checkpoint runs/quickstart --tasks lambada_openai
"""


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint directory."),
        tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated lm-eval task names."),
        text: Path | None = typer.Option(None, "--text", help="A text file for perplexity / bits-per-byte."),
    ) -> None:
        raise not_available(
            "eval", "evaluation lands with the evaluation work; use `neox generate` meanwhile."
        )
