"""Where each step's numbers go on rank 0: ``metrics.jsonl`` in the run, TensorBoard, W&B.

A row's keys are the metrics.jsonl names (``loss``, ``lr``, ``tokens_per_s``,
``tokens_seen``, ``tflops``, ``mfu``, ``valid_loss``, ...). TensorBoard and W&B
get the same numbers under stable slash names (``scalar_name``): ``train/loss``,
``train/mfu``, ``valid/loss``; a key that already has a slash (``eval/lambada/acc``)
keeps it. The W&B run's id is kept in the run directory (``wandb-run-id``), so a
run that resumes from a checkpoint there goes on logging into the same W&B run.
``Throughput`` turns one step's real token count into tokens/s, TFLOP/s and MFU
with ``neoxcli.model.flops``, the accounting the benchmarks use too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from neoxcli.config.schema import ModelConfig, NeoXConfig
from neoxcli.errors import NeoxError

#: metrics.jsonl keys whose TensorBoard / W&B name is not ``train/<key>``.
_RENAMED = {"valid_loss": "valid/loss", "seconds": "train/step_seconds"}

#: The file in the run directory naming the W&B run that a resume continues.
WANDB_ID_NAME = "wandb-run-id"
_WANDB_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")

#: What W&B needs when no login is found, as one hint line.
WANDB_LOGIN_HINT = (
    "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to keep the logs local"
)


def scalar_name(key: str) -> str:
    """The TensorBoard / W&B name of a metrics.jsonl key: ``loss`` → ``train/loss``, ``valid_loss`` → ``valid/loss``."""
    if "/" in key:
        return key
    return _RENAMED.get(key, f"train/{key}")


Sink = Callable[[int, dict[str, float]], None]


class MetricsLog:
    """Appends one row per step to every configured sink; ``close`` when the run ends.

    A run that starts at ``resumed_at`` first drops the rows of later
    iterations from ``metrics.jsonl``: work lost in a crash is done again,
    and one iteration stays one row.
    """

    def __init__(self, cfg: NeoXConfig, save_dir: Path | None, enabled: bool, resumed_at: int = 0) -> None:
        self.rows: list[dict[str, Any]] = []
        self._fh: IO[str] | None = None
        self._sinks: list[Sink] = []
        self._closers: list[Callable[[], None]] = []
        if not enabled:
            return
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(save_dir / "metrics.jsonl", resumed_at)
            self._fh = open(save_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        try:
            if cfg.logging.tensorboard_dir:
                self._open_tensorboard(Path(cfg.logging.tensorboard_dir))
            if cfg.logging.use_wandb:
                self._open_wandb(cfg, save_dir, resumed=resumed_at > 0)
        except BaseException:
            self.close()
            raise

    def log(self, row: dict[str, Any]) -> None:
        """One training step's row (it must have ``iteration``): kept in ``rows`` and sent to every sink."""
        self.rows.append(row)
        self._write(row)

    def log_scalars(self, iteration: int, scalars: dict[str, float]) -> None:
        """Extra named numbers at ``iteration`` (e.g. ``{"eval/lambada/acc": 0.31}``), not a training step."""
        self._write({"iteration": iteration, **scalars})

    def _write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        if self._sinks:
            scalars = {
                scalar_name(k): float(v)
                for k, v in row.items()
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            for sink in self._sinks:
                sink(int(row["iteration"]), scalars)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        while self._closers:
            self._closers.pop()()
        self._sinks = []

    def _open_tensorboard(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise NeoxError(
                "tensorboard_dir is set but TensorBoard is not installed",
                hint="pip install 'neoxcli[monitor]'",
            ) from exc
        writer = SummaryWriter(str(log_dir))

        def to_tb(step: int, scalars: dict[str, float]) -> None:
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
            writer.flush()

        self._sinks.append(to_tb)
        self._closers.append(writer.close)

    def _open_wandb(self, cfg: NeoXConfig, save_dir: Path | None, resumed: bool) -> None:
        run = open_wandb(cfg, save_dir, resumed=resumed)
        self._sinks.append(lambda step, scalars: run.log(scalars, step=step))
        self._closers.append(run.finish)


def wandb_dir(save_dir: Path | None) -> Path:
    """Where W&B keeps its files: ``WANDB_DIR`` if set, else the run directory, else a fresh temporary one.

    Never the working directory: W&B's own default would put ``./wandb/`` wherever ``neox`` started.
    """
    import tempfile

    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"])
    if save_dir is not None:
        return save_dir
    return Path(tempfile.mkdtemp(prefix="neox-wandb-"))


def resumed_wandb_id(save_dir: Path | None) -> str | None:
    """The id of the W&B run that ``save_dir`` recorded, or None when it recorded none."""
    if save_dir is None:
        return None
    path = save_dir / WANDB_ID_NAME
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise NeoxError(f"cannot read {path}: {exc}", hint="delete it to log into a new W&B run") from None
    if not _WANDB_ID.fullmatch(text):
        raise NeoxError(
            f"{path} holds {text[:40]!r}, which is not a W&B run id",
            hint="delete it to log into a new W&B run",
        )
    return text


def open_wandb(cfg: NeoXConfig, save_dir: Path | None, resumed: bool = False) -> Any:
    """A started W&B run with GPT-NeoX's keys (project, group, team, host); one error line without a login.

    ``resumed`` (the run continues from a checkpoint): the W&B run whose id
    ``save_dir`` recorded goes on (``resume="allow"``), else a new one starts and
    its id is recorded for the next resume.
    """
    try:
        import wandb
    except ImportError as exc:
        raise NeoxError(
            "use_wandb is set but wandb is not installed", hint="pip install 'neoxcli[monitor]'"
        ) from exc
    lg = cfg.logging
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode not in ("offline", "disabled", "dryrun") and not _wandb_logged_in(wandb, lg.wandb_host):
        raise NeoxError(
            f"use_wandb is set but W&B has no login for {lg.wandb_host or 'wandb.ai'}", hint=WANDB_LOGIN_HINT
        )
    # An id the user set (WANDB_RUN_ID) wins: W&B reads it itself.
    run_id = resumed_wandb_id(save_dir) if resumed and not os.environ.get("WANDB_RUN_ID") else None
    where = wandb_dir(save_dir)
    where.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(base_url=lg.wandb_host) if lg.wandb_host else None
    try:
        run = wandb.init(
            project=lg.wandb_project,
            entity=lg.wandb_team,
            group=lg.wandb_group,
            name=save_dir.name if save_dir is not None else None,
            dir=str(where),
            mode=mode or None,  # read per run: W&B caches the first one a process saw
            config=cfg.model_dump(mode="json"),
            settings=settings,
            id=run_id,
            resume="allow" if run_id else None,
        )
    except wandb.errors.UsageError as exc:
        raise NeoxError(f"W&B could not start: {exc}", hint=WANDB_LOGIN_HINT) from exc
    if save_dir is not None and mode != "disabled" and run.id != run_id:
        from neoxcli.fileio import atomic_write_text

        try:
            atomic_write_text(save_dir / WANDB_ID_NAME, f"{run.id}\n")
        except BaseException:
            run.finish()
            raise
    return run


def _wandb_logged_in(wandb: Any, host: str | None) -> bool:
    """Whether W&B finds credentials without asking (environment, settings file or .netrc)."""
    import inspect

    if "prompt" not in inspect.signature(wandb.login).parameters:
        return True  # an older wandb: ``wandb.init`` itself reports the missing login (as a UsageError)
    try:
        return bool(wandb.login(host=host, verify=False, prompt=False))
    except wandb.errors.UsageError:
        return False


class Throughput:
    """Tokens/s, TFLOP/s per device and MFU of each step from the tokens it really trained on.

    ``peak`` is one device's peak FLOP/s (``neoxcli.model.flops.device_peak``),
    or None when it is unknown: MFU is then left out (null). ``remeasure``
    (a CPU's timed matmul rate) is called when a step beats the peak, which
    means the CPU was busy when it was timed; at most ``MAX_REMEASURES`` times.
    """

    MAX_REMEASURES = 3

    def __init__(
        self,
        model: ModelConfig,
        vocab_size: int,
        devices: int,
        peak: float | None,
        remeasure: Callable[[], float] | None = None,
    ) -> None:
        self.model, self.vocab_size, self.devices, self.peak = model, vocab_size, max(devices, 1), peak
        self._per_token: dict[int, int] = {}
        self._remeasure, self._remeasured = remeasure, 0

    def flops_per_token(self, seq_length: int) -> int:
        from neoxcli.model.flops import flops_per_token

        if seq_length not in self._per_token:
            self._per_token[seq_length] = flops_per_token(self.model, self.vocab_size, seq_length)
        return self._per_token[seq_length]

    def step(self, tokens: int, seq_length: int, seconds: float) -> dict[str, float | None]:
        """The row fields of a step of ``tokens`` (the whole job's) in sequences of ``seq_length``."""
        from neoxcli.model.flops import mfu

        if seconds <= 0:
            return {"tokens_per_s": 0.0, "tflops": 0.0, "mfu": None}
        per_device = tokens * self.flops_per_token(seq_length) / seconds / self.devices
        if (
            self.peak
            and per_device > self.peak
            and self._remeasure
            and self._remeasured < self.MAX_REMEASURES
        ):
            self._remeasured += 1
            self.peak = max(self.peak, self._remeasure())
        share = mfu(per_device, self.peak)
        return {
            "tokens_per_s": tokens / seconds,
            "tflops": per_device / 1e12,
            "mfu": round(share, 6) if share is not None else None,
        }


def cpu_remeasure(cfg: NeoXConfig, device: Any, precision: str) -> Callable[[], float] | None:
    """Times the CPU's matmul again for ``Throughput`` (None on accelerators and with ``peak_tflops``)."""
    from neoxcli.model.flops import DTYPE_NAMES, measured_matmul_flops

    if cfg.logging.peak_tflops is not None or str(device).split(":")[0] != "cpu":
        return None
    dtype = DTYPE_NAMES.get(precision, "float32")
    return lambda: measured_matmul_flops(dtype, again=True)


def job_peak(cfg: NeoXConfig, device: Any, precision: str) -> tuple[float | None, str]:
    """One device's peak FLOP/s for MFU and a line saying where it came from (``peak_tflops`` wins)."""
    from neoxcli.model.flops import device_peak

    if cfg.logging.peak_tflops is not None:
        return (
            cfg.logging.peak_tflops * 1e12,
            f"MFU against peak_tflops {cfg.logging.peak_tflops:g} per device",
        )
    peak = device_peak(device, precision)
    if peak is None:
        return None, f"MFU not reported: no known peak for {device} in {precision} (set peak_tflops)"
    rate = peak.flops_per_s
    shown = f"{rate / 1e12:.4g} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.4g} GFLOP/s"
    return rate, f"MFU against {shown} per device ({peak.source})"


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
