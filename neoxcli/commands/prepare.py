"""`neox prepare` (placeholder)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def _cmd() -> None:
        """Placeholder."""
