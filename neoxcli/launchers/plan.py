"""What a launcher produces: the hosts of a job and the commands (with their variables) that start it.

Plain data, no behaviour beyond rendering: ``Launcher.build`` (``base``)
returns a ``LaunchPlan``, ``--dry-run`` prints it, and ``supervisor`` runs its
commands. Both import it from here, so neither needs the other.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Node:
    """One host of the job and the local device indices (slots) its ranks use, in order."""

    name: str
    devices: tuple[int, ...]

    @property
    def slots(self) -> int:
        return len(self.devices)

    @property
    def default_devices(self) -> bool:
        """True when the slots are simply 0..n-1, so no device mask is needed."""
        return self.devices == tuple(range(len(self.devices)))


@dataclass
class LaunchCommand:
    """One process the launcher starts: an argv list and the variables it sets on top of its own environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""
    # For launchers that pass no signal on (pdsh, ssh): a command, run with the same variables, that
    # asks this command's ranks to save and stop, as SIGUSR1 does through srun and mpirun.
    stop_argv: list[str] | None = None

    def shell(self) -> str:
        """The command as one shell line (``env K=V ... argv``), every word quoted, credentials masked.

        Credentials (``HF_TOKEN=***``) are what ``--dry-run`` must not print:
        the output ends up in terminals, CI logs and bug reports.
        """
        prefix = ["env", *(mask_word(f"{k}={v}") for k, v in self.env.items())] if self.env else []
        return shlex.join([*prefix, *(mask_word(word) for word in self.argv)])


@dataclass
class LaunchPlan:
    """What a launcher would do: files to write first, then commands run side by side."""

    launcher: str
    commands: list[LaunchCommand]
    files: dict[Path, str] = field(default_factory=dict)
    # Files holding credentials (pdsh's env file): rendered masked, removed when the job ends.
    private_files: dict[Path, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    world_size: int = 0

    def render(self) -> str:
        """Human-readable and copy-pasteable: notes and files as comments, then one shell line per command."""
        lines = [f"# launcher: {_comment(self.launcher)}, {self.world_size} rank(s)"]
        lines += [f"# {_comment(note)}" for note in self.notes]
        for path, text in self.files.items():
            lines.append(f"# writes {_comment(shlex.quote(str(path)))}:")
            lines += [f"#   {line}" for line in text.splitlines()]
        for path, text in self.private_files.items():
            lines.append(f"# writes {_comment(shlex.quote(str(path)))} (mode 0600, removed after the job):")
            lines += [f"#   {_comment(_mask_assignment(line))}" for line in text.splitlines()]
        for command in self.commands:
            if command.label:
                lines.append(f"# {_comment(command.label)}")
            lines.append(command.shell())
            if command.stop_argv is not None:
                stop = shlex.join(mask_word(word) for word in command.stop_argv)
                lines.append(f"# the first SIGTERM, SIGUSR1 or Ctrl-C is passed on by: {_comment(stop)}")
        return "\n".join(lines) + "\n"

    def write_files(self) -> None:
        """Write every file readable by this user only (0600): the sbatch script names hosts, paths and variables."""
        for path, text in {**self.files, **self.private_files}.items():
            write_private(path, text)

    def remove_private_files(self) -> None:
        for path in self.private_files:
            path.unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, also when the file existed with a wider mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


MASK = "***"
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=")
# Variables whose value must never appear on a command line (``ps`` on every host shows it) or in a
# file anyone else may read: launchers pass them by name from the launching environment instead.
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether a variable's name says its value is a credential (``HF_TOKEN``, ``WANDB_API_KEY``...)."""
    return bool(_SECRET_NAME.search(name))


def mask_word(word: str) -> str:
    """``NAME=value`` as ``NAME=***`` when the name looks like a credential's; any other word unchanged."""
    match = _ASSIGNMENT.match(word)
    if match and is_secret(match["name"]):
        return f"{match['name']}={MASK}"
    return word


def _mask_assignment(line: str) -> str:
    """A private file's ``export NAME=value`` line with the value masked, whatever the name."""
    head, sep, _value = line.partition("=")
    return f"{head}={MASK}" if sep else line


def _comment(text: str) -> str:
    """Text safe inside a ``#`` comment line: a newline would end the comment and start a command."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
