"""`neox config`: show and validate configs (placeholder, replaced by the config work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Show or validate configs.\n\nExample:\n\n    neox config show templates/quickstart.yml", no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print the resolved config."""
