"""``slurm``: ``srun`` one task per rank, inside an allocation or as a submitted batch job.

Inside an allocation (sbatch, salloc) the hosts come from the job's
environment; with a hostfile they are passed as ``--nodelist``; with neither,
srun (or sbatch with ``sbatch: true``) lets Slurm pick ``num_nodes`` nodes.
``--kill-on-bad-exit=1`` makes Slurm end every task when one fails. The rank
variables travel in srun's own environment and are named in ``--export``,
so values with commas or spaces survive (``--export=NAME=value`` cannot hold a
comma). When the nodes are not known yet, each rank's node agent takes the
first host of ``SLURM_JOB_NODELIST`` as the master address. The batch script
(mode 0600) exports every variable but credentials (``HF_TOKEN``...): those
reach the job from sbatch's own environment, which it propagates by default.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
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
    requested_slots,
    secret_env,
    uniform_slots,
)
from neoxcli.launchers.hostfile import Host, hosts_from_slurm
from neoxcli.launchers.hostlist import compress_nodelist

TEMPLATE_NAME = "neox.sbatch"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
_REQUIRED = ("srun",)


def default_template() -> Path:
    """``slurm/neox.sbatch`` of the shipped templates (``templates/`` in the repository, package data in a wheel)."""
    from neoxcli.resources import template_path

    return template_path("slurm", TEMPLATE_NAME)


def render_template(template: str, values: Mapping[str, str], source: str = "the sbatch template") -> str:
    """Fill ``{{ name }}`` placeholders; values must already be shell-quoted. Unknown names are errors."""
    for name in _REQUIRED:
        if not re.search(r"\{\{\s*" + name + r"\s*\}\}", template):
            raise NeoxError(
                f"{source} has no {{{{ {name} }}}} placeholder", hint="see templates/slurm/neox.sbatch"
            )

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise NeoxError(
                f"{source} uses an unknown placeholder {{{{ {name} }}}}",
                hint=f"known placeholders: {', '.join(sorted(values))}",
            )
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def filename_pattern(directory: Path, name: str) -> str:
    """``directory/name`` for sbatch's ``--output``, which expands ``%j``, ``%x``, ``%5u``... in the whole path.

    Every ``%`` of the directory is doubled (``%%`` is a literal ``%``), so a run
    directory such as ``runs/50%xp`` is not rewritten into one that does not exist.
    A backslash anywhere turns sbatch's replacement off, so then the path is taken
    literally and the name's own placeholders are dropped (``slurm-%j.out`` ->
    ``slurm.out``).
    """
    if "\\" in str(directory) or "\\" in name:
        return str(directory) + "/" + re.sub(r"-?%[0-9]*[A-Za-z]", "", name)
    return str(directory).replace("%", "%%") + "/" + name


def in_allocation(env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_NODELIST", "").strip() or env.get("SLURM_NODELIST", "").strip())


class SlurmLauncher(Launcher):
    name = "slurm"
    description = "srun inside a Slurm allocation, or sbatch a batch script (sbatch: true / --sbatch)"

    def default_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Host]:
        return hosts_from_slurm(env, requested_slots(config))

    def resolve_hosts(self, config: NeoXConfig, env: Mapping[str, str]) -> list[Node]:
        lc = config.launcher
        if lc.hostfile or env.get("DLTS_HOSTFILE") or in_allocation(env):
            return super().resolve_hosts(config, env)
        if lc.include or lc.exclude:
            raise NeoxError(
                "include/exclude need the hosts: run inside a Slurm allocation or give a hostfile",
                hint="or pick nodes with launcher_args: ['--nodelist=...'] / sbatch_args",
            )
        # Slurm picks the nodes: unnamed placeholders that only carry the counts.
        slots = lc.num_gpus if lc.num_gpus and lc.num_gpus > 0 else 1
        return [Node("", tuple(range(slots)))] * max(lc.num_nodes, 1)

    def master(self, config: NeoXConfig, hosts: Sequence[Node]) -> tuple[str | None, int]:
        addr = config.launcher.master_addr or (hosts[0].name or None)
        return addr, config.launcher.master_port

    def srun_argv(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, names: Sequence[str]
    ) -> list[str]:
        slots = uniform_slots(hosts, self.name)
        argv = [
            "srun",
            f"--nodes={len(hosts)}",
            f"--ntasks={slots * len(hosts)}",
            f"--ntasks-per-node={slots}",
            "--kill-on-bad-exit=1",
            "--export=" + ",".join(["ALL", *names]),
        ]
        if all(node.name for node in hosts):
            argv.append("--nodelist=" + compress_nodelist(node.name for node in hosts))
        return [*argv, *config.launcher.launcher_args, *self.wrapped_worker_argv(run_config_path)]

    def build(
        self, config: NeoXConfig, hosts: Sequence[Node], run_config_path: Path, env: Mapping[str, str]
    ) -> LaunchPlan:
        known = all(node.name for node in hosts)
        if known:
            check_host_names(hosts, self.name)
        if any(not node.default_devices for node in hosts):
            raise NeoxError(
                "the slurm launcher cannot pick particular slots of a host (include/exclude with :SLOTS)",
                hint="name whole hosts in include/exclude; Slurm assigns devices to tasks itself",
            )
        rank_env = self.rank_env(config, hosts, env)
        srun = self.srun_argv(config, hosts, run_config_path, list(rank_env))
        world = sum(node.slots for node in hosts)
        notes = []
        if "MASTER_ADDR" not in rank_env:
            notes.append("MASTER_ADDR: the first host of the allocation, set on each rank by the node agent")
        if not config.launcher.sbatch:
            return LaunchPlan(
                self.name, [LaunchCommand(srun, rank_env, label="srun")], notes=notes, world_size=world
            )
        return self.batch_plan(config, hosts, run_config_path, rank_env, srun, notes, world)

    def batch_plan(
        self,
        config: NeoXConfig,
        hosts: Sequence[Node],
        run_config_path: Path,
        rank_env: Mapping[str, str],
        srun: Sequence[str],
        notes: list[str],
        world: int,
    ) -> LaunchPlan:
        """A batch script from the template, and the ``sbatch`` line that submits it."""
        lc = config.launcher
        run_dir = run_config_path.parent
        script = run_dir / TEMPLATE_NAME
        template_path = Path(lc.sbatch_template) if lc.sbatch_template else default_template()
        try:
            template = template_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise NeoxError(
                f"cannot read the sbatch template {str(template_path)!r}: {exc.strerror or exc}",
                hint="set sbatch_template: PATH to a batch script template",
            ) from None
        text = render_template(
            template,
            {
                "exports": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in public_env(rank_env).items()),
                "workdir": shlex.quote(os.getcwd()),
                "srun": shlex.join(srun),
            },
            source=f"sbatch template {str(template_path)!r}",
        )
        slots = uniform_slots(hosts, self.name)
        argv = [
            "sbatch",
            "--parsable",
            "--job-name=neox",
            f"--nodes={len(hosts)}",
            f"--ntasks-per-node={slots}",
            "--output=" + filename_pattern(run_dir, "slurm-%j.out"),
        ]
        if all(node.name for node in hosts):
            argv.append("--nodelist=" + compress_nodelist(node.name for node in hosts))
        argv += [*lc.sbatch_args, str(script)]
        secrets = secret_env(rank_env)
        if secrets:
            notes.append(
                f"{', '.join(secrets)}: passed by name from this environment (not written to the script)"
            )
        return LaunchPlan(
            self.name,
            [LaunchCommand(argv, secrets, label="sbatch (submits and returns)")],
            files={script: text},
            notes=[*notes, f"job output: {run_dir / 'slurm-<jobid>.out'}"],
            world_size=world,
        )

    def run(self, plan: LaunchPlan) -> int:
        (command,) = plan.commands
        if command.argv[0] != "sbatch":
            return super().run(plan)
        self.check_available(plan)
        plan.write_files()
        result = subprocess.run(
            command.argv, env={**os.environ, **command.env}, capture_output=True, text=True, check=False
        )
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            print(f"error: sbatch exited with code {result.returncode}", file=sys.stderr)
            return result.returncode
        job_id = result.stdout.strip().split(";", 1)[0]
        script = command.argv[-1]
        output = Path(script).parent / f"slurm-{job_id}.out"
        print(f"submitted batch job {job_id}: script {script}, output {output}")
        return 0
