"""`neox hostfile`: hostfiles for multi-node runs, from the scheduler's job environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

HELP = """Write a DeepSpeed-style hostfile (`host slots=N` per line) from a scheduler's job
environment or a host list, to stdout or atomically to -o FILE.

Slots per host come from --slots, else (Slurm) the GPUs per node in the job's
GPU environment, else the tasks per node the scheduler gives.

Examples:

    neox hostfile --slurm -o hostfile

    neox hostfile --slurm --slots 8 -o hostfile

    neox hostfile --pbs -o hostfile

    neox hostfile --lsf --slots 6 -o hostfile

    neox hostfile --from-list 'node[01-04]:8,login2:4'
"""


def register(app: typer.Typer) -> None:
    @app.command("hostfile", help=HELP)
    def hostfile(
        slurm: bool = typer.Option(
            False, "--slurm", help="Read the Slurm job (SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE)."
        ),
        pbs: bool = typer.Option(False, "--pbs", help="Read the PBS job (PBS_NODEFILE)."),
        lsf: bool = typer.Option(
            False,
            "--lsf",
            help="Read the LSF job (LSB_DJOB_HOSTFILE or LSB_MCPU_HOSTS); the jsrun batch node is left out.",
        ),
        from_list: str | None = typer.Option(
            None,
            "--from-list",
            metavar="LIST",
            help="Hosts as HOST[:SLOTS] entries, comma-separated (e.g. 'h1,h2:4,node[01-04]:8'), or a file of them.",
        ),
        slots: int | None = typer.Option(None, "--slots", metavar="N", help="Slots (ranks) on every host."),
        keep_launch_host: bool = typer.Option(
            False,
            "--keep-launch-host",
            help="With --lsf: keep the first host even if it looks like a batch node.",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", metavar="FILE", help="Write here (atomically) instead of stdout."
        ),
    ) -> None:
        from neoxcli.errors import NeoxError
        from neoxcli.launchers import hostfile as hf

        chosen = [
            name
            for name, on in (
                ("--slurm", slurm),
                ("--pbs", pbs),
                ("--lsf", lsf),
                ("--from-list", from_list is not None),
            )
            if on
        ]
        if len(chosen) != 1:
            raise NeoxError(
                "choose one host source"
                if not chosen
                else f"choose one host source, not {' and '.join(chosen)}",
                hint="pass one of --slurm, --pbs, --lsf or --from-list LIST, e.g. `neox hostfile --slurm -o hostfile`",
            )
        if keep_launch_host and not lsf:
            raise NeoxError("--keep-launch-host only applies with --lsf")
        env = os.environ
        if slurm:
            hosts = hf.hosts_from_slurm(env, slots)
        elif pbs:
            hosts = hf.hosts_from_pbs(env, slots)
        elif lsf:
            hosts = hf.hosts_from_lsf(env, slots, keep_launch_host=keep_launch_host)
        else:
            hosts = hf.hosts_from_list(from_list or "", slots)
        _check_names(hosts, chosen[0])
        if output is None:
            sys.stdout.write(hf.format_hostfile(hosts))
            return
        hf.write_hostfile(hosts, output)
        total = sum(host.slots for host in hosts)
        print(f"wrote {output}: {len(hosts)} host(s), {total} slot(s)", file=sys.stderr)


def _check_names(hosts: list, source: str) -> None:
    """Refuse a host name a launcher would refuse (or a shell would run), before writing it."""
    from neoxcli.errors import NeoxError
    from neoxcli.launchers.base import check_host_names

    for host in hosts:
        try:
            check_host_names([host], "pdsh")  # the launchers' own rule, one host at a time
        except NeoxError as exc:
            raise NeoxError(
                f"{source} gives the host name {host.name!r}, which no launcher can use", hint=exc.hint
            ) from None
