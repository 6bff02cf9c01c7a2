"""``mpi``: one ``mpirun`` for the whole job, in the dialect of the installed MPI.

Open MPI and the Hydra-based MPIs (MPICH, MVAPICH2, Intel MPI) spell the same
things differently: ``-x K=V`` vs ``-genv K V``, ``--hostfile`` with
``host slots=N`` vs ``-f`` with ``host:N``, ``-np`` vs ``-n``/``-ppn``.
``mpi_flavor: auto`` asks ``mpirun --version`` which one is installed.
Ranks learn their number from the MPI's own variables (``OMPI_COMM_WORLD_*``,
``PMI_*``); neox only adds the rendezvous and the forwarded environment.
Credentials (``HF_TOKEN``...) go by name only (``-x NAME``, ``-genvlist
NAME,...``): mpirun takes their values from its own environment, so they never
appear on a command line that ``ps`` shows on every host.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import NeoxError
from neoxcli.launchers.base import (
    LaunchCommand,
    Launcher,
    LaunchPlan,
    Node,
    check_host_names,
    public_env,
    secret_env,
)

FLAVORS = ("openmpi", "mpich", "mvapich", "intel")


def detect_flavor(mpirun: str = "mpirun") -> str | None:
    """The MPI behind ``mpirun`` from its ``--version`` text, or None when it cannot be run."""
    try:
        result = subprocess.run(
            [mpirun, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout + result.stderr).lower()
    if "open mpi" in text or "open-mpi" in text:
        return "openmpi"
    if "intel(r) mpi" in text or "intel mpi" in text:
        return "intel"
    if "mvapich" in text:
        return "mvapich"
    if "hydra" in text or "mpich" in text:
        return "mpich"
    return None


class MpiLauncher(Launcher):
    name = "mpi"
    description = "mpirun across the hostfile (Open MPI, MPICH, MVAPICH2 or Intel MPI; mpi_flavor)"

    def flavor(self, config: NeoXConfig) -> tuple[str, str | None]:
        """The flavour to speak, and a note when it was assumed rather than configured or detected."""
        chosen = config.launcher.mpi_flavor
        if chosen != "auto":
            return chosen, None
        found = detect_flavor()
        if found is None:
            return "openmpi", "mpi_flavor: auto could not run `mpirun --version`; assuming Open MPI"
        return found, None

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        check_host_names(hosts, self.name)
        if any(not node.default_devices for node in hosts):
            raise NeoxError(
                "the mpi launcher cannot pick particular slots of a host (include/exclude with :SLOTS)",
                hint="name whole hosts in include/exclude, or use the pdsh launcher",
            )
        flavor, note = self.flavor(config)
        full_env = self.rank_env(config, hosts, env)
        rank_env, secrets = public_env(full_env), secret_env(full_env)
        world = sum(node.slots for node in hosts)
        hostfile = run_config_path.parent / "mpi-hostfile"
        if flavor == "openmpi":
            text = "".join(f"{node.name} slots={node.slots}\n" for node in hosts)
            argv = ["mpirun", "-np", str(world), "--hostfile", str(hostfile), "--map-by", "slot"]
            # Open MPI's default pins each rank to one core, where all its threads would then share it.
            argv += ["--bind-to", "none"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                argv.append("--allow-run-as-root")
            if config.launcher.ssh_port is not None:
                argv += ["--mca", "plm_rsh_args", f"-p {int(config.launcher.ssh_port)}"]
            for key, value in rank_env.items():
                argv += ["-x", f"{key}={value}"]
            for key in secrets:
                argv += ["-x", key]
        else:
            text = "".join(f"{node.name}:{node.slots}\n" for node in hosts)
            argv = ["mpirun", "-n", str(world)]
            counts = {node.slots for node in hosts}
            if len(counts) == 1:
                argv += ["-ppn", str(counts.pop())]
            argv += ["-f", str(hostfile)]
            for key, value in rank_env.items():
                argv += ["-genv", key, value]
            if secrets:
                argv += ["-genvlist", ",".join(secrets)]
        argv += [*config.launcher.launcher_args, *self.wrapped_worker_argv(run_config_path)]
        notes = [f"mpi flavour: {flavor}"] + ([note] if note else [])
        if flavor != "openmpi" and config.launcher.ssh_port is not None:
            notes.append("ssh_port is not passed to Hydra: set the port in ~/.ssh/config (Host ... Port N)")
        return LaunchPlan(
            self.name,
            [LaunchCommand(argv, secrets, label=f"mpirun ({flavor}) on {len(hosts)} host(s)")],
            files={hostfile: text},
            notes=notes,
            world_size=world,
        )
