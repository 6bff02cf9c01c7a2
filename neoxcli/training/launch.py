"""Start a training run: in this process for one local rank, else through a launcher plugin.

The resolved config is written next to the run (``{save}/run-config.yml``)
and every worker reads it from there; nothing large travels on command lines.
Which plugin starts the workers is the config's ``launcher`` (see
``neoxcli.launchers.registry``); ``--dry-run`` prints its exact commands.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neoxcli.config.schema import NeoXConfig

RUN_CONFIG_NAME = "run-config.yml"


def run_dir(cfg: NeoXConfig, local: bool) -> Path:
    """Where the run config (and launcher files) go: ``save``, else a fresh directory.

    Without ``save``, local runs use the temp directory; multi-host runs use
    ``./.neox-runs/`` under the working directory, which remote ranks ``cd``
    into, so a shared working directory is enough for them to read it.
    """
    if cfg.checkpoint.save:
        return Path(cfg.checkpoint.save).absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    base = Path(tempfile.gettempdir()) if local else Path.cwd() / ".neox-runs"
    return base / f"neox-run-{stamp}"


def write_run_config(cfg: NeoXConfig, path: Path) -> Path:
    """Write the resolved config the ranks read, with credentials of ``launcher_env`` masked.

    Ranks never read ``launcher_env`` (the launcher already put it in their
    environment), and the run directory is often shared and world-readable.
    """
    from neoxcli.config import dump_config
    from neoxcli.fileio import atomic_write_text
    from neoxcli.launchers.plan import MASK, is_secret

    env = cfg.launcher.launcher_env
    if any(is_secret(k) for k in env):
        cfg = cfg.model_copy(deep=True)
        cfg.launcher.launcher_env = {k: MASK if is_secret(k) else v for k, v in env.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_config(cfg))
    return path


def check_checkpoint_dirs(cfg: NeoXConfig) -> None:
    """``save`` and ``load`` name directories: a file there is one error now, not a traceback mid-run."""
    from neoxcli.errors import ConfigError

    for key in ("save", "load"):
        value = getattr(cfg.checkpoint, key)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise ConfigError(
                f"checkpoint.{key}: {value} is a file, not a directory",
                hint=f"{key} names the run's checkpoint directory",
            )


def check_job(cfg: NeoXConfig, hosts: list[Any]) -> None:
    """What every rank would derive, checked once before any starts: a bad setting is one error, not one per rank."""
    from neoxcli.config import resolve, vocab_size_from_file

    ranks = sum(node.slots for node in hosts)
    resolve(cfg, world_size=ranks, vocab_size=vocab_size_from_file(cfg.tokenizer.vocab_file))


def run_training(
    cfg: NeoXConfig,
    sources: list[str],
    *,
    dry_run: bool = False,
    reporter_factory: Callable[..., Any] | None = None,
) -> int:
    """Run training as the config's launcher says; returns the exit code."""
    from neoxcli.launchers.registry import get_launcher

    check_checkpoint_dirs(cfg)

    launcher = get_launcher(cfg.launcher.launcher)
    env = dict(os.environ)
    hosts = launcher.resolve_hosts(cfg, env)
    local = launcher.name == "local"
    if local and sum(node.slots for node in hosts) == 1 and all(node.default_devices for node in hosts):
        if dry_run:
            print(f"in-process: 1 rank, config from {', '.join(sources)}")
            return 0
        from neoxcli.training.trainer import train

        check_job(cfg, hosts)
        from neoxcli.training.interrupt import Stopped

        reporter = reporter_factory(cfg.logging.log_interval) if reporter_factory else None
        try:
            train(cfg, report=reporter, config_sources=sources)
        except Stopped as stop:  # saved on a signal; the message said how to resume
            return stop.exit_code
        return 0
    config_path = run_dir(cfg, local) / RUN_CONFIG_NAME
    plan = launcher.build(cfg, hosts, config_path, env)
    plan.notes.insert(0, f"rank config: {config_path} (the resolved config, written before launch)")
    if dry_run:
        print(plan.render(), end="")
        return 0
    launcher.check_available(plan)
    # The ranks read the config as written, every model key set: it must hold the model a finetune takes.
    from neoxcli.training.run import source_model

    cfg = source_model(cfg)[0]
    check_job(cfg, hosts)
    write_run_config(cfg, config_path)
    return launcher.run(plan)
