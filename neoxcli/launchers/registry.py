"""Find launcher plugins by name through the ``neoxcli.launchers`` entry-point group.

The built-in launchers are registered in that group by neox's own package
metadata, like any third-party one; a cluster team adds theirs in its own
package::

    [project.entry-points."neoxcli.launchers"]
    mycluster = "mycluster_neox:MyClusterLauncher"

The built-ins are also known here directly, so a source checkout that was
never installed still finds them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from neoxcli.errors import NeoxError
from neoxcli.launchers.base import Launcher

GROUP = "neoxcli.launchers"
BUILTINS = {
    "local": "neoxcli.launchers.local:LocalLauncher",
    "pdsh": "neoxcli.launchers.pdsh:PdshLauncher",
    "slurm": "neoxcli.launchers.slurm:SlurmLauncher",
    "mpi": "neoxcli.launchers.mpi:MpiLauncher",
    "jsrun": "neoxcli.launchers.jsrun:JsrunLauncher",
}


@dataclass(frozen=True)
class PluginRef:
    """Where a launcher name points: ``module:attribute``, and which distribution said so."""

    name: str
    value: str
    dist: str


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown distribution"


def discover() -> dict[str, list[PluginRef]]:
    """Every launcher name with all the plugins registered under it (built-ins included)."""
    found: dict[str, list[PluginRef]] = {
        name: [PluginRef(name, value, "neoxcli")] for name, value in BUILTINS.items()
    }
    for ep in entry_points(group=GROUP):
        refs = found.setdefault(ep.name, [])
        if all(ref.value != ep.value for ref in refs):
            refs.append(PluginRef(ep.name, ep.value, _dist_name(ep)))
    return found


def available() -> list[str]:
    """Launcher names, sorted."""
    return sorted(discover())


def _load(ref: PluginRef) -> object:
    ep = EntryPoint(name=ref.name, value=ref.value, group=GROUP)
    try:
        return ep.load()
    except Exception as exc:
        raise NeoxError(
            f"launcher plugin {ref.name!r} ({ref.value}, from {ref.dist}) failed to load: {exc}",
            hint="fix or uninstall the package that provides it",
        ) from None


def get_launcher(name: str) -> Launcher:
    """An instance of the launcher called ``name``; unknown names list the available ones."""
    found = discover()
    refs = found.get(name)
    if not refs:
        # Names are matched exactly; suggest the one meant by a typo or another case (SLURM, slrum).
        by_lower = {known.lower(): known for known in found}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
        guess = f"did you mean {by_lower[close[0]]!r}? " if close else ""
        raise NeoxError(
            f"unknown launcher {name!r}",
            hint=f"{guess}available launchers: {', '.join(sorted(found))}; "
            f"others are added by packages registering a {GROUP!r} entry point",
        )
    if len(refs) > 1:
        detail = "; ".join(f"{ref.value} from {ref.dist}" for ref in refs)
        raise NeoxError(
            f"launcher {name!r} is registered more than once: {detail}",
            hint="uninstall one of the packages, or register the plugin under another name",
        )
    obj = _load(refs[0])
    launcher = obj() if isinstance(obj, type) else obj
    if not isinstance(launcher, Launcher):
        raise NeoxError(
            f"launcher plugin {name!r} ({refs[0].value}) is not a neoxcli.launchers.base.Launcher",
            hint="subclass Launcher and implement build()",
        )
    if not launcher.name:
        launcher.name = name  # type: ignore[misc]
    return launcher
