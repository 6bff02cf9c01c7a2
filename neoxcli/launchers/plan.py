"""What a launcher produces: the hosts of a job and the commands (with their variables) that start it.

Plain data, no behaviour beyond rendering: ``Launcher.build`` (``base``)
returns a ``LaunchPlan``, ``--dry-run`` prints it, and ``supervisor`` runs its
commands. Both import it from here, so neither needs the other.
"""

from __future__ import annotations

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

    def shell(self) -> str:
        """The command as one shell line (``env K=V ... argv``), every word quoted."""
        prefix = ["env", *(f"{k}={v}" for k, v in self.env.items())] if self.env else []
        return shlex.join([*prefix, *self.argv])


@dataclass
class LaunchPlan:
    """What a launcher would do: files to write first, then commands run side by side."""

    launcher: str
    commands: list[LaunchCommand]
    files: dict[Path, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    world_size: int = 0

    def render(self) -> str:
        """Human-readable and copy-pasteable: notes and files as comments, then one shell line per command."""
        lines = [f"# launcher: {_comment(self.launcher)}, {self.world_size} rank(s)"]
        lines += [f"# {_comment(note)}" for note in self.notes]
        for path, text in self.files.items():
            lines.append(f"# writes {_comment(shlex.quote(str(path)))}:")
            lines += [f"#   {line}" for line in text.splitlines()]
        for command in self.commands:
            if command.label:
                lines.append(f"# {_comment(command.label)}")
            lines.append(command.shell())
        return "\n".join(lines) + "\n"

    def write_files(self) -> None:
        for path, text in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def _comment(text: str) -> str:
    """Text safe inside a ``#`` comment line: a newline would end the comment and start a command."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
