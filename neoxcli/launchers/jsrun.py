"""``jsrun``: IBM Job Step Manager (LSF clusters such as Summit), one resource set per host.

Each host is one resource set (``-n`` hosts, ``-r 1``) running that host's
ranks (``-a``) with all its CPUs and GPUs, unbound, so the ranks' own thread
counts apply. Variables go through ``-E NAME=value``, except credentials
(``HF_TOKEN``...), which stay off the command line: jsrun propagates its own
environment to every resource set, so they are set there. Ranks read their number
from ``JSM_NAMESPACE_*`` / ``OMPI_COMM_WORLD_*``. Hosts come from the LSF job
(``LSB_DJOB_HOSTFILE`` or ``LSB_MCPU_HOSTS``, the batch node left out) unless
a hostfile is given; jsrun itself decides where the resource sets go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import NeoxError
from neoxcli.launchers.base import (
    LaunchCommand,
    Launcher,
    LaunchPlan,
    Node,
    public_env,
    requested_slots,
    secret_env,
    uniform_slots,
)
from neoxcli.launchers.hostfile import Host, hosts_from_lsf


class JsrunLauncher(Launcher):
    name = "jsrun"
    description = "IBM jsrun on LSF clusters: one resource set per host"

    def default_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Host]:
        return hosts_from_lsf(env, requested_slots(config))

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        if any(not node.default_devices for node in hosts):
            raise NeoxError(
                "the jsrun launcher cannot pick particular slots of a host (include/exclude with :SLOTS)",
                hint="name whole hosts in include/exclude",
            )
        slots = uniform_slots(hosts, self.name)
        full_env = self.rank_env(config, hosts, env)
        rank_env = public_env(full_env)
        argv = ["jsrun", "-n", str(len(hosts)), "-r", "1", "-a", str(slots)]
        argv += ["-c", "ALL_CPUS", "-g", "ALL_GPUS", "-b", "none"]
        for key, value in rank_env.items():
            argv += ["-E", f"{key}={value}"]
        argv += [*config.launcher.launcher_args, *self.wrapped_worker_argv(run_config_path)]
        return LaunchPlan(
            self.name,
            [LaunchCommand(argv, secret_env(full_env), label=f"jsrun on {len(hosts)} host(s)")],
            notes=[f"hosts: {', '.join(f'{n.name} ({n.slots})' for n in hosts)}"],
            world_size=slots * len(hosts),
        )
