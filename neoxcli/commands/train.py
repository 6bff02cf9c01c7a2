"""`neox train`: train a model from one or more config files."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Train a model from one or more YAML/JSON configs (merged left to right).

GPT-NeoX config files load as they are. Examples:

    neox train templates/quickstart.yml

    neox train model.yml data.yml --set train_iters=2000 --set zero_optimization.stage=1

Ctrl-C, SIGTERM or SIGUSR1 finish the current step, save a checkpoint and exit
with code 75; the same command resumes. A second Ctrl-C stops at once.
"""


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    def train(
        configs: list[Path] = typer.Argument(..., help="Config files (YAML or JSON), merged left to right."),
        set_: list[str] = typer.Option(
            [], "--set", "-s", help="Override a key: --set hidden_size=256 or --set model.num_layers=4."
        ),
        launcher: str | None = typer.Option(
            None, "--launcher", help="local (default), pdsh, slurm, mpi, jsrun, or an installed plugin."
        ),
        num_gpus: int | None = typer.Option(None, "--num-gpus", help="Processes (GPUs) per node."),
        hostfile: Path | None = typer.Option(
            None, "--hostfile", help="Hosts for multi-node launchers (`host slots=N` lines)."
        ),
        sbatch: bool = typer.Option(
            False, "--sbatch", help="slurm launcher: submit a batch job instead of srun."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact launch command(s) and exit."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Start from scratch, deleting the checkpoints already in `save`."
        ),
    ) -> None:
        import json

        from neoxcli.config import load_config
        from neoxcli.training.launch import run_training
        from neoxcli.training.report import ConsoleReporter

        # the options become keys of the launcher section; errors name the option that set them
        options: list[tuple[str, str]] = []
        if launcher:
            options.append(("--launcher", f"launcher.launcher={json.dumps(launcher)}"))
        if num_gpus is not None:
            options.append(("--num-gpus", f"num_gpus={num_gpus}"))
        if hostfile is not None:
            options.append(("--hostfile", f"hostfile={json.dumps(str(hostfile.absolute()))}"))
        if sbatch:
            options.append(("--sbatch", "sbatch=true"))
        if overwrite:
            options.append(("--overwrite", "checkpoint.overwrite=true"))
        cfg = load_config([str(c) for c in configs], list(set_), warn=_warn, options=options)
        files = [s for s in cfg.sources if not s.startswith("--")]  # preset names resolved to their files
        code = run_training(cfg, files, dry_run=dry_run, reporter_factory=ConsoleReporter)
        if code:
            raise typer.Exit(code)


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)
