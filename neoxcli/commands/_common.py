"""Helpers shared by command modules (kept import-light)."""

from __future__ import annotations

from neoxcli.errors import NeoxError


def not_available(command: str, what: str) -> NeoxError:
    """The error a command raises while its implementation has not landed."""
    return NeoxError(
        f"`neox {command}` is not available yet in this version of neox.",
        hint=what,
    )
