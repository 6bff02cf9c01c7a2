"""``python -m neoxcli`` is the ``neox`` command."""

from neoxcli.cli import run

run()
