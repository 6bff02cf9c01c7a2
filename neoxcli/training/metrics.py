"""Where each step's numbers go on rank 0: ``metrics.jsonl`` in the run, TensorBoard, W&B."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import NeoxError


class MetricsLog:
    """Appends one row per step to every configured sink; ``close`` when the run ends.

    A run that starts at ``resumed_at`` first drops the rows of later
    iterations from ``metrics.jsonl``: work lost in a crash is done again,
    and one iteration stays one row.
    """

    def __init__(self, cfg: NeoXConfig, save_dir: Path | None, enabled: bool, resumed_at: int = 0) -> None:
        self.rows: list[dict[str, Any]] = []
        self._fh: IO[str] | None = None
        self._sinks: list[Callable[[dict[str, Any]], None]] = []
        if not enabled:
            return
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(save_dir / "metrics.jsonl", resumed_at)
            self._fh = open(save_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._sinks = _open_sinks(cfg)

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        for sink in self._sinks:
            sink(row)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def truncate_metrics(path: Path, iteration: int) -> None:
    """Keep only the rows of ``path`` up to ``iteration`` (atomically); a torn last line goes too."""
    from neoxcli.fileio import atomic_write_text

    if not path.is_file():
        return
    kept, dropped = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row.get("iteration", 0)) <= iteration
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped = True
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _open_sinks(cfg: NeoXConfig) -> list[Callable[[dict[str, Any]], None]]:
    """TensorBoard and W&B writers when configured (optional dependencies)."""
    sinks: list[Callable[[dict[str, Any]], None]] = []
    if cfg.logging.tensorboard_dir:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise NeoxError(
                "tensorboard_dir is set but TensorBoard is not installed",
                hint="pip install 'neoxcli[monitor]'",
            ) from exc
        tb = SummaryWriter(cfg.logging.tensorboard_dir)

        def to_tb(row: dict[str, Any]) -> None:
            for k, v in row.items():
                if k != "iteration":
                    tb.add_scalar(f"train/{k}", v, row["iteration"])
            tb.flush()

        sinks.append(to_tb)
    if cfg.logging.use_wandb:
        try:
            import wandb
        except ImportError as exc:
            raise NeoxError(
                "use_wandb is set but wandb is not installed", hint="pip install 'neoxcli[monitor]'"
            ) from exc
        run = wandb.init(
            project=cfg.logging.wandb_project, group=cfg.logging.wandb_group, config=cfg.model_dump()
        )
        sinks.append(lambda row: run.log(row, step=row["iteration"]))
    return sinks
