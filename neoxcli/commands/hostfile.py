"""`neox hostfile`: hostfiles for multi-node runs."""

from __future__ import annotations

from pathlib import Path

import typer

from neoxcli.commands._common import not_available

HELP = """Write a DeepSpeed-style hostfile (`host slots=N`) from a scheduler's job environment.

Example:

    neox hostfile --slurm -o hostfile
"""


def register(app: typer.Typer) -> None:
    @app.command("hostfile", help=HELP)
    def hostfile(
        slurm: bool = typer.Option(False, "--slurm", help="Read the Slurm job environment."),
        output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    ) -> None:
        raise not_available("hostfile", "hostfile generation lands with the multi-node launcher work.")
