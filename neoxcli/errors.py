"""User-facing errors.

A ``NeoxError`` is a mistake the user can fix (bad config, missing file, bad
argument). The CLI prints it as one ``error:`` line plus an optional ``hint:``
line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NeoxError(Exception):
    """An error caused by user input, reported without a traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(NeoxError):
    """A configuration file or override is invalid."""


class DataError(NeoxError):
    """An input file or dataset is missing or malformed."""
