"""The ``neox`` command line.

Command modules under ``neoxcli.commands`` import only typer and the standard
library at module level; torch, deepspeed and friends are imported inside the
command bodies so that ``neox --help`` stays fast.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from neoxcli import __version__
from neoxcli.commands import config as config_cmd
from neoxcli.commands import convert as convert_cmd
from neoxcli.commands import evaluate as eval_cmd
from neoxcli.commands import generate as generate_cmd
from neoxcli.commands import hostfile as hostfile_cmd
from neoxcli.commands import mup as mup_cmd
from neoxcli.commands import plot as plot_cmd
from neoxcli.commands import prepare as prepare_cmd
from neoxcli.commands import train as train_cmd

app = typer.Typer(
    name="neox",
    help=(
        "Pretrain, sample, evaluate and export GPT-NeoX-style language models.\n\n"
        "Example:\n\n"
        "    neox train templates/quickstart.yml\n\n"
        "Add --debug anywhere (or set NEOX_DEBUG=1) to see tracebacks of user errors."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"neox {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Pretrain, sample, evaluate and export GPT-NeoX-style language models."""


prepare_cmd.register(app)
train_cmd.register(app)
generate_cmd.register(app)
eval_cmd.register(app)
convert_cmd.register(app)
hostfile_cmd.register(app)
plot_cmd.register(app)
app.add_typer(config_cmd.app, name="config")
app.add_typer(mup_cmd.app, name="mup")


def debug_enabled() -> bool:
    return os.environ.get("NEOX_DEBUG", "").lower() not in ("", "0", "false", "no")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(Exit, Abort, ClickException) classes of every click copy in use.

    Recent typer releases vendor their own click (``typer._click``); older ones
    use the ``click`` package. Catch both so usage errors never show a traceback.
    """
    import importlib

    exits: list[type] = []
    aborts: list[type] = []
    errors: list[type] = []
    for name in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        exits += [c for c in (getattr(mod, "Exit", None),) if c]
        aborts += [c for c in (getattr(mod, "Abort", None),) if c]
        errors += [c for c in (getattr(mod, "ClickException", None),) if c]
    return tuple(exits), tuple(aborts), tuple(errors)


_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG})


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one ``error:`` line and exit code 2."""
    from neoxcli.errors import NeoxError

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        os.environ["NEOX_DEBUG"] = "1"
    exits, aborts, click_errors = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="neox", standalone_mode=False)
    except NeoxError as exc:
        if debug_enabled():
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except aborts as exc:
        # Click turns any EOFError into Abort; only an interrupt is the user's doing.
        if isinstance(exc.__cause__, EOFError):
            raise exc.__cause__ from None
        print("aborted", file=sys.stderr)
        return 130
    except click_errors as exc:
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # The environment's doing (a full or read-only disk, a forbidden path) wherever it
        # surfaces: one line naming the path. Any other OSError keeps its traceback.
        if debug_enabled() or exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
