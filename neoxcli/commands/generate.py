"""`neox generate` (placeholder)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def _cmd() -> None:
        """Placeholder."""
