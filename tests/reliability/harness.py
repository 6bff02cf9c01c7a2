"""How a reliability case is judged: run ``neox`` as a user would, then check what they would see.

A case builds one malformed input in a temporary directory, runs one command
in a subprocess (no stdin, the directory as the working directory), and
``expect_clean_error`` checks the promise every command makes for bad input:
the documented exit code, exactly one ``error:`` line naming the culprit
(optionally followed by ``hint:`` lines), no traceback, and no file left
behind that was not there before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def files_under(root: Path) -> set[str]:
    """Every file and directory below ``root`` (relative paths), to compare before and after a run."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_neox(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
    full_env = {**os.environ, "NEOX_DEBUG": "0", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "neoxcli", *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def expect_clean_error(
    outcome: Outcome,
    fragment: str,
    *,
    before: set[str] | None = None,
    root: Path | None = None,
    code: int = 2,
) -> None:
    """The one-line-error promise; ``fragment`` must appear in the ``error:`` line."""
    text = outcome.out + outcome.err
    assert "Traceback" not in text, text
    assert outcome.code == code, f"exit {outcome.code}, wanted {code}:\n{text}"
    errors = [line for line in outcome.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"wanted exactly one error line:\n{outcome.err}"
    assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    after_error = outcome.err.splitlines()[outcome.err.splitlines().index(errors[0]) + 1 :]
    assert all(line.startswith("hint:") for line in after_error if line.strip()), outcome.err
    if before is not None and root is not None:
        new = files_under(root) - before
        assert not new, f"left behind: {sorted(new)}"
