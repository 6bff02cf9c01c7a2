"""``pdsh``: one remote command per host over ssh, each starting that host's ranks.

Only a handful of variables survive ssh, so the remote command carries every
one a rank needs (``env K=V ...``), changes to this working directory, and
execs the node agent, which starts the host's ranks with their rank numbers.
The same command serves every host: pdsh puts each host's name where ``%h``
stands, and the agent looks its slots up in the ordered host list. Every word
is shell-quoted and every ``%`` doubled, so values reach the rank unchanged.

Credentials (``HF_TOKEN``...) are not on the command line, where ``ps`` on
every host would show them: they go in an env file beside the run config,
mode 0600, which the remote command sources and which is removed when the job
ends (the run directory is already shared: ranks read their config there).
"""

from __future__ import annotations

import os
import re
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
    public_env,
    secret_env,
)

ENV_FILE_NAME = "rank-secrets.env"


def ere_escape(text: str) -> str:
    """``text`` as a POSIX extended regular expression matching itself literally (for ``pkill -f``)."""
    return re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", text)


def pdsh_escape(text: str) -> str:
    """pdsh replaces ``%h``, ``%u``, ``%n`` in the remote command; ``%%`` stands for a literal ``%``."""
    return text.replace("%", "%%")


def _pdsh_argv(hosts: Sequence[Node], pdsh_args: Sequence[str], remote: str) -> list[str]:
    """One pdsh command over ``hosts`` (all at once, ``-S``: the worst remote exit code is pdsh's)."""
    return ["pdsh", "-S", "-f", "1024", "-w", ",".join(node.name for node in hosts), *pdsh_args, remote]


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
        env_file: Path | None = None,
    ) -> str:
        """The shell line every host runs (before pdsh's ``%h`` substitution); ``env_file`` is sourced first."""
        rank_env = public_env(self.rank_env(config, hosts, env))
        words = ["env", *(f"{k}={v}" for k, v in rank_env.items())]
        words += [self.python, "-m", AGENT_MODULE]
        for node in hosts:
            words += ["--node", f"{node.name}=" + ",".join(str(d) for d in node.devices)]
        source = f". {shlex.quote(str(env_file))} && " if env_file is not None else ""
        before = f"cd {shlex.quote(workdir)} && {source}exec {shlex.join(words)}"
        after = shlex.join(self.worker_argv(run_config_path))
        return f"{pdsh_escape(before)} --host %h -- {pdsh_escape(after)}"

    def stop_argv(self, hosts: Sequence[Node], run_config_path: Path, pdsh_args: Sequence[str]) -> list[str]:
        """A pdsh command sending SIGUSR1 to this job's node agents, which pass it on to their ranks.

        ssh forwards no signal, so the graceful stop has to travel as a command
        of its own. The pattern is anchored at the agent's interpreter: the ssh
        and pdsh processes carrying the launch command mention the same words
        further in and must not be hit (SIGUSR1 would end them). The run
        config's path tells this job's agents from any other job's; ``/proc``
        joins the words with plain spaces, so they are joined so here.
        """
        pattern = (
            f"^{ere_escape(self.python)} -m {ere_escape(AGENT_MODULE)} .* -- "
            f"{ere_escape(' '.join(self.worker_argv(run_config_path)))}$"
        )
        remote = shlex.join(["pkill", "-USR1", "-f", pattern])
        return _pdsh_argv(hosts, pdsh_args, pdsh_escape(remote))

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        check_host_names(hosts, self.name)
        lc = config.launcher
        workdir = os.getcwd()
        secrets = secret_env(self.rank_env(config, hosts, env))
        env_file = run_config_path.parent / ENV_FILE_NAME if secrets else None
        remote = self.remote_command(config, hosts, run_config_path, env, workdir, env_file)
        argv = _pdsh_argv(hosts, lc.launcher_args, remote)
        pdsh_env = {"PDSH_RCMD_TYPE": env.get("PDSH_RCMD_TYPE", "ssh")}
        if lc.ssh_port is not None:
            extra = env.get("PDSH_SSH_ARGS_APPEND", "")
            pdsh_env["PDSH_SSH_ARGS_APPEND"] = f"{extra} -p {int(lc.ssh_port)}".strip()
        world = sum(node.slots for node in hosts)
        private = {}
        if env_file is not None:
            private[env_file] = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in secrets.items())
        return LaunchPlan(
            self.name,
            [
                LaunchCommand(
                    argv,
                    pdsh_env,
                    label=f"pdsh to {len(hosts)} host(s)",
                    stop_argv=self.stop_argv(hosts, run_config_path, lc.launcher_args),
                )
            ],
            private_files=private,
            world_size=world,
            notes=[
                f"hosts: {', '.join(f'{n.name} ({n.slots})' for n in hosts)}; working directory {workdir}"
            ],
        )
