"""Where the files neox ships beside its code (``templates/``: presets, the quickstart, sbatch) are.

In the repository they live in ``templates/`` at the top level; a wheel carries
the same tree as the package data ``neoxcli/templates``. This module finds
whichever the running code belongs to, so editable installs, source checkouts
and installed wheels all see the same files. Standard library only.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from pathlib import Path

# A file every copy of the templates has; a directory without it is not ours.
_MARKER = "quickstart.yml"


def _candidates() -> list[Path]:
    package = Path(str(importlib.resources.files("neoxcli")))
    found = [
        package / "templates",  # an installed wheel: neoxcli/templates
        package.parent / "templates",  # a source checkout or an editable install: the code's own tree
    ]
    try:
        spec = importlib.util.find_spec("neoxcli.templates")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) for p in spec.submodule_search_locations]  # any other package-dir mapping
    return found


@functools.cache
def templates_dir() -> Path:
    """The ``templates`` directory of this installation of neox."""
    candidates = _candidates()
    for path in candidates:
        if (path / _MARKER).is_file():
            return path
    return candidates[1]  # nothing found: paths under it then fail as "not found", naming it


def template_path(*parts: str) -> Path:
    """A path inside the templates directory, e.g. ``template_path("slurm", "neox.sbatch")``."""
    return templates_dir().joinpath(*parts)
