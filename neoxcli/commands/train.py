"""`neox train` (placeholder)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def _cmd() -> None:
        """Placeholder."""
