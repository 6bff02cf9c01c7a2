"""The launcher plugin API: a resolved config and its hosts in, the commands that start the ranks out.

A plugin is a ``Launcher`` subclass with a ``name`` and a ``build`` method. It
never starts anything itself: ``build`` returns a ``LaunchPlan`` (argv lists
plus the variables to set), which ``--dry-run`` prints and ``run`` executes.
Keeping the two apart is what lets every plugin be tested without a cluster
and lets users see exactly what would run before it does.

Plugins are found through the ``neoxcli.launchers`` entry-point group (see
``neoxcli.launchers.registry``), so a cluster team ships its own launcher in
its own package without patching neox.
"""

from __future__ import annotations

import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from neoxcli.errors import NeoxError
from neoxcli.launchers.hostfile import Host, filter_hosts, read_hostfile
from neoxcli.launchers.plan import LaunchCommand, LaunchPlan, Node, is_secret
from neoxcli.launchers.rankio import WORKER_MODULE

if TYPE_CHECKING:
    from neoxcli.config.schema import NeoXConfig

# The plan types are part of the plugin API and stay importable from here.
__all__ = [
    "AGENT_MODULE",
    "WORKER_MODULE",
    "LaunchCommand",
    "LaunchPlan",
    "Launcher",
    "Node",
    "check_env_names",
    "check_host_names",
    "forwarded_env",
    "is_secret",
    "public_env",
    "requested_slots",
    "secret_env",
    "select_nodes",
    "uniform_slots",
]

AGENT_MODULE = "neoxcli.launchers.node_agent"

# Variables the launching shell may hold that ranks on other hosts need too. Remote shells
# (ssh, mpirun's daemons, srun with a clean environment) start from a bare login
# environment, so anything not forwarded explicitly is silently missing on other hosts.
FORWARD_PREFIXES = (
    "NCCL_",
    "GLOO_",
    "PYTHON",
    "OMP_",
    "MKL_",
    "TORCH_",
    "DS_",
    "NEOX_",
    "UCX_",
    "FI_",
    "HF_",
    "CUDA_",
    "LD_LIBRARY_PATH",
)
# Per-process or per-node values that must never be copied from the launching host.
NEVER_FORWARD = frozenset({"CUDA_VISIBLE_DEVICES", "PYTHONSTARTUP", "PYTHONINSPECT"})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names that go on ssh, pdsh and mpirun command lines. A leading '-' would turn a host into an
# option (ssh -oProxyCommand=...); ',', '[', '%' and '@' mean something to pdsh, hostlists or
# include/exclude. Real host names and addresses (IPv4, IPv6) fit comfortably.
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


class Launcher(ABC):
    """Base class of launcher plugins.

    Subclasses set ``name`` and implement ``build``; most also override
    ``default_hosts`` (where hosts come from when no hostfile is given) and
    some ``run`` (how the plan is executed; the default supervises every
    command and stops them all when one fails).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, python: str | None = None) -> None:
        # The interpreter ranks run under; the same path must exist on every host, as with
        # any launcher that does not ship an environment.
        self.python = python or sys.executable

    # --- what plugins implement -------------------------------------------------------------

    @abstractmethod
    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        """Turn the resolved config and hosts into the commands that start every rank."""

    def default_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Host]:
        """Hosts when neither ``hostfile`` nor ``DLTS_HOSTFILE`` names a file."""
        raise NeoxError(
            f"the {self.name} launcher needs a hostfile",
            hint="set hostfile: PATH (lines of `HOST slots=N`), or write one with `neox hostfile`",
        )

    def run(self, plan: LaunchPlan) -> int:
        """Execute ``plan`` and return the job's exit code."""
        from neoxcli.launchers.supervisor import supervise

        self.check_available(plan)
        plan.write_files()
        try:
            return supervise(plan.commands)
        finally:
            plan.remove_private_files()

    # --- shared helpers ---------------------------------------------------------------------

    def check_available(self, plan: LaunchPlan) -> None:
        """Fail before writing anything when a program the plan starts is not installed."""
        import shutil

        for program in dict.fromkeys(c.argv[0] for c in plan.commands if c.argv):
            if shutil.which(program) is None:
                raise NeoxError(
                    f"`{program}` is not on PATH, so the {self.name} launcher cannot start",
                    hint="install it or load its module; `--dry-run` shows the command without running it",
                )

    def resolve_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Node]:
        """Hosts of the run: hostfile (or the plugin's default), then include/exclude, num_nodes, num_gpus."""
        lc = config.launcher
        path = lc.hostfile or env.get("DLTS_HOSTFILE") or None
        if path is None and self.name != "local" and os.path.isfile("/job/hostfile"):
            path = "/job/hostfile"  # GPT-NeoX's and DeepSpeed's default location
        hosts = read_hostfile(path) if path else self.default_hosts(config, env)
        return select_nodes(hosts, lc.include, lc.exclude, lc.num_nodes, lc.num_gpus)

    def master(self, config: NeoXConfig, hosts: Sequence[Node]) -> tuple[str | None, int]:
        """The rendezvous address and port: configured, else the first host and ``master_port``.

        Never guessed from this machine's interfaces: the first host's name is
        what every other host is told to reach. None means the hosts are not
        known yet (a job still to be scheduled); the node agent then takes the
        first host of the allocation.
        """
        lc = config.launcher
        return lc.master_addr or hosts[0].name, lc.master_port

    def rank_env(self, config: NeoXConfig, hosts: Sequence[Node], env: Mapping[str, str]) -> dict[str, str]:
        """Variables every rank must see, whatever host it runs on.

        Rendezvous (``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``), a thread count
        (``OMP_NUM_THREADS``: without it, N ranks on one host fight over every core),
        the forwarded variables of the launching environment, and ``launcher_env`` last.
        """
        addr, port = self.master(config, hosts)
        world = sum(node.slots for node in hosts)
        per_host = max(node.slots for node in hosts)
        out = forwarded_env(env)
        out.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // per_host, 1)))
        if addr is not None:
            out["MASTER_ADDR"] = addr
        out.update(MASTER_PORT=str(port), WORLD_SIZE=str(world))
        extra = dict(config.launcher.launcher_env)
        check_env_names(extra)
        out.update(extra)
        return out

    def worker_argv(self, run_config_path: Path) -> list[str]:
        return [self.python, "-m", WORKER_MODULE, "--config", str(run_config_path)]

    def wrapped_worker_argv(self, run_config_path: Path) -> list[str]:
        """The worker under the one-rank agent, which names the rank and host when it fails."""
        return [self.python, "-m", AGENT_MODULE, "--", *self.worker_argv(run_config_path)]


# --- helpers shared by plugins -----------------------------------------------------------------


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that ranks on other hosts need as well (sorted, for stable output)."""
    return {
        k: v
        for k, v in sorted(env.items())
        if k.startswith(FORWARD_PREFIXES) and k not in NEVER_FORWARD and _ENV_NAME.fullmatch(k)
    }


def secret_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that are passed by name only, never by value."""
    return {k: v for k, v in env.items() if is_secret(k)}


def public_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that may be written out by value."""
    return {k: v for k, v in env.items() if not is_secret(k)}


def check_env_names(env: Mapping[str, str]) -> None:
    """Reject variable names a shell or launcher would misread (``launcher_env: {"A;B": ...}``)."""
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise NeoxError(
                f"launcher_env has an invalid variable name {name!r}",
                hint="names are letters, digits and _, not starting with a digit",
            )


def check_host_names(hosts: Sequence[Node], launcher: str) -> None:
    """Reject host names that ssh, pdsh or mpirun would read as options or patterns."""
    for node in hosts:
        if not _HOST_NAME.fullmatch(node.name):
            raise NeoxError(
                f"host name {node.name!r} cannot be used with the {launcher} launcher",
                hint="host names are letters, digits, '.', '-', '_' and ':' and may not start with '-'",
            )


def requested_slots(config: NeoXConfig) -> int | None:
    """``num_gpus`` as slots per host, or None when it asks for every slot (unset, 0 or -1, as DeepSpeed reads it)."""
    gpus = config.launcher.num_gpus
    return gpus if gpus is not None and gpus > 0 else None


def select_nodes(
    hosts: Sequence[Host],
    include: str | None = None,
    exclude: str | None = None,
    num_nodes: int = -1,
    num_gpus: int | None = None,
) -> list[Node]:
    """Apply include/exclude, then keep the first ``num_nodes`` hosts and ``num_gpus`` slots of each."""
    chosen = filter_hosts(hosts, include, exclude)
    nodes = [Node(name, tuple(devices)) for name, devices in chosen.items()]
    if num_nodes is not None and num_nodes > 0:
        if num_nodes > len(nodes):
            raise NeoxError(
                f"num_nodes is {num_nodes} but only {len(nodes)} host(s) are available",
                hint="lower num_nodes, or use -1 for every host in the hostfile",
            )
        nodes = nodes[:num_nodes]
    if num_gpus is not None and num_gpus > 0:
        short = [node.name for node in nodes if node.slots < num_gpus]
        if short:
            raise NeoxError(
                f"num_gpus is {num_gpus} but host(s) {', '.join(short)} have fewer slots",
                hint="lower num_gpus or fix the slots in the hostfile",
            )
        nodes = [Node(node.name, node.devices[:num_gpus]) for node in nodes]
    return nodes


def uniform_slots(hosts: Sequence[Node], launcher: str) -> int:
    """The slots per host, for launchers that can only start the same number of ranks on each."""
    counts = {node.slots for node in hosts}
    if len(counts) != 1:
        detail = ", ".join(f"{node.name}={node.slots}" for node in hosts)
        raise NeoxError(
            f"the {launcher} launcher starts the same number of ranks on every host, but slots differ: {detail}",
            hint="give every host the same slots (or set num_gpus), or use the pdsh launcher",
        )
    return counts.pop()
