"""``neox generate --interactive``: a terminal session with line editing, history and commands.

Each prompt is continued and streamed as it decodes. Lines ending in ``\\``
continue the prompt on the next line (a paste of several lines works the same
way); ``/set temperature 0.7`` (also ``top_k``, ``top_p``, ``max_new_tokens``,
``greedy``, ``seed``, ``repetition_penalty``) changes the sampling, ``/show``
prints it, ``/reset`` goes back to the settings the session started with,
``/help`` lists the commands. Ctrl-C cancels the generation under way and
returns to the prompt; Ctrl-C at the prompt clears the line; Ctrl-D exits.
History is kept in ``$XDG_DATA_HOME/neox/history`` (``~/.local/share``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = """commands:
  /set NAME VALUE   temperature, top_k, top_p, max_new_tokens, greedy, seed, repetition_penalty
  /show             the current settings
  /reset            back to the settings the session started with
  /help             this list
  a line ending in \\ continues on the next line; Ctrl-C stops a generation; Ctrl-D quits"""

_SETTABLE = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "max_new_tokens": int,
    "greedy": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "seed": int,
    "repetition_penalty": float,
}


def history_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "neox" / "history"


def _setup_readline() -> Callable[[], None]:
    """Line editing and persistent history where the readline module exists; returns a saver."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return lambda: None
    path = history_path()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass  # a read-only home costs the history, not the session

    return save


def apply_command(line: str, options: Any, start: Any) -> tuple[Any, str]:
    """Run one ``/command``; returns the new options and what to print."""
    parts = line[1:].split()
    name = parts[0].lower() if parts else "help"
    if name == "help":
        return options, HELP
    if name == "show":
        shown = {k: getattr(options, k) for k in _SETTABLE}
        return options, "  ".join(f"{k}={v}" for k, v in shown.items())
    if name == "reset":
        return start, "settings reset"
    if name == "set":
        if len(parts) != 3 or parts[1] not in _SETTABLE:
            return options, f"usage: /set NAME VALUE with NAME one of {', '.join(_SETTABLE)}"
        key, raw = parts[1], parts[2]
        try:
            value = _SETTABLE[key](raw)
        except ValueError:
            return options, f"{key}: {raw!r} is not a valid value"
        if key == "top_p" and not 0.0 < value <= 1.0:
            return options, "top_p must be in (0, 1]"
        if key in ("temperature", "top_k", "max_new_tokens", "seed") and value < 0:
            return options, f"{key} must be >= 0"
        return dataclasses.replace(options, **{key: value}), f"{key} = {value}"
    return options, f"unknown command /{name} (try /help)"


def read_prompt(read_line: Callable[[str], str]) -> str:
    """One prompt: lines joined while they end in a backslash."""
    lines = []
    prompt = "> "
    while True:
        line = read_line(prompt)
        if line.endswith("\\"):
            lines.append(line[:-1])
            prompt = "… "
            continue
        lines.append(line)
        return "\n".join(lines)


def interact(
    model: Any,
    tokenizer: Any,
    options: Any,
    complete: Callable[..., str],
    read_line: Callable[[str], str] | None = None,
) -> None:
    """Read prompts until end of input, streaming each continuation (see the module docstring).

    ``complete(model, tokenizer, text, options, seed, stream=True)`` draws one
    continuation (``neoxcli.generation.session.complete``).
    """
    save_history = _setup_readline() if read_line is None and sys.stdin.isatty() else (lambda: None)
    read_line = read_line or input
    start = options
    print("Type a prompt and press Enter; /help for commands, Ctrl-D to quit.", file=sys.stderr)
    i = 0
    try:
        while True:
            try:
                text = read_prompt(read_line)
            except EOFError:
                print(file=sys.stderr)
                return
            except KeyboardInterrupt:
                print("^C", file=sys.stderr)
                continue
            if text.startswith("/"):
                options, message = apply_command(text.strip(), options, start)
                print(message, file=sys.stderr)
                continue
            if not text.strip():
                continue
            sys.stdout.write(text)
            sys.stdout.flush()
            try:
                complete(model, tokenizer, text, options, (options.seed + i) % 2**63, stream=True)
            except KeyboardInterrupt:
                print("\n[generation stopped]", file=sys.stderr)
            print()
            i += 1
    finally:
        save_history()
