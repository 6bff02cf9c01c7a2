"""``pdsh``: one remote command per host over ssh, each starting that host's ranks.

Only a handful of variables survive ssh, so the remote command carries every
one a rank needs (``env K=V ...``), changes to this working directory, and
execs the node agent, which starts the host's ranks with their rank numbers.
The same command serves every host: pdsh puts each host's name where ``%h``
stands, and the agent looks its slots up in the ordered host list. Every word
is shell-quoted and every ``%`` doubled, so values reach the rank unchanged.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from neoxcli.config.schema import NeoXConfig
from neoxcli.launchers.base import (
    AGENT_MODULE,
    LaunchCommand,
    Launcher,
    LaunchPlan,
    Node,
    check_host_names,
)


def pdsh_escape(text: str) -> str:
    """pdsh replaces ``%h``, ``%u``, ``%n`` in the remote command; ``%%`` stands for a literal ``%``."""
    return text.replace("%", "%%")


class PdshLauncher(Launcher):
    name = "pdsh"
    description = "ssh to every host of the hostfile with pdsh; each host starts its own ranks"

    def remote_command(
        self,
        config: NeoXConfig,
        hosts: Sequence[Node],
        run_config_path: Path,
        env: Mapping[str, str],
        workdir: str,
    ) -> str:
        """The shell line every host runs (before pdsh's ``%h`` substitution)."""
        rank_env = self.rank_env(config, hosts, env)
        words = ["env", *(f"{k}={v}" for k, v in rank_env.items())]
        words += [self.python, "-m", AGENT_MODULE]
        for node in hosts:
            words += ["--node", f"{node.name}=" + ",".join(str(d) for d in node.devices)]
        before = f"cd {shlex.quote(workdir)} && exec {shlex.join(words)}"
        after = shlex.join(self.worker_argv(run_config_path))
        return f"{pdsh_escape(before)} --host %h -- {pdsh_escape(after)}"

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        check_host_names(hosts, self.name)
        lc = config.launcher
        workdir = os.getcwd()
        remote = self.remote_command(config, hosts, run_config_path, env, workdir)
        argv = [
            "pdsh",
            "-S",
            "-f",
            "1024",
            "-w",
            ",".join(node.name for node in hosts),
            *lc.launcher_args,
            remote,
        ]
        pdsh_env = {"PDSH_RCMD_TYPE": env.get("PDSH_RCMD_TYPE", "ssh")}
        if lc.ssh_port is not None:
            extra = env.get("PDSH_SSH_ARGS_APPEND", "")
            pdsh_env["PDSH_SSH_ARGS_APPEND"] = f"{extra} -p {int(lc.ssh_port)}".strip()
        world = sum(node.slots for node in hosts)
        return LaunchPlan(
            self.name,
            [LaunchCommand(argv, pdsh_env, label=f"pdsh to {len(hosts)} host(s)")],
            world_size=world,
            notes=[
                f"hosts: {', '.join(f'{n.name} ({n.slots})' for n in hosts)}; working directory {workdir}"
            ],
        )
