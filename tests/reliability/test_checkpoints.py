"""Checkpoints as an attacker, a crash and a careless restart would meet them.

- No code runs from a checkpoint: a pickled object whose ``__reduce__`` calls
  ``os.system`` is planted in each kind of file each command reads; every
  command refuses it with one line naming the file and the type, and the
  marker file the payload would create never appears.
- A missing or empty ``latest``, a ``load`` that does not exist, a tag the
  run would write that already exists, an incomplete tag, a ``latest`` of
  ``../``: one line each, nothing overwritten.
- Debris of a crash is cleaned on the next start; a failed save removes its tag.
- SIGKILL at random points of a save loop and mid-prune: ``latest`` always names
  a complete tag, and the resumed run reproduces an uninterrupted one bit for bit.

Each table below is one line per case.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.reliability.harness import expect_clean_error, files_under, run_neox

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow  # every case but the metrics one starts training or loading processes

REPO = Path(__file__).resolve().parents[2]
TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs. "


class Payload:
    """What a hostile checkpoint holds: unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _corpus(prefix: Path) -> None:
    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.data.tokenizer import build_tokenizer

    tok = build_tokenizer("CharLevelTokenizer")
    rng = np.random.RandomState(0)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(80):
            start = rng.randint(0, len(TEXT) - 20)
            w.add_document(tok.encode((TEXT * 3)[start : start + 40 + rng.randint(0, 40)]) + [tok.eod_id])


def _config(root: Path, name: str, **over: object) -> Path:
    """A model small enough that a save dominates each iteration."""
    if not (root / "data").exists():
        _corpus(root / "data" / "tiny_text_document")
    cfg: dict[str, object] = {
        "num-layers": 1,
        "hidden-size": 32,
        "num-attention-heads": 2,
        "seq-length": 16,
        "max-position-embeddings": 16,
        "pos-emb": "rotary",
        "tokenizer-type": "CharLevelTokenizer",
        "data-path": str(root / "data" / "tiny_text_document"),
        "data-cache-dir": str(root / "cache"),
        "split": "90,10,0",
        "optimizer": {"type": "Adam", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
        "train_micro_batch_size_per_gpu": 4,
        "train-iters": 4,
        "eval-interval": 1000,
        "eval-iters": 1,
        "checkpoint-factor": 2,
        "seed": 1234,
        "sample_at_end": False,
        "save": str(root / name),
        "load": str(root / name),
    }
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs (global_step2 and 4) started through the CLI, as a user would.

    z0: ZeRO 0, the layout-free files only (the default); z1: ZeRO 1, DeepSpeed's own files
    (``portable_checkpoint: false``), so every kind of file training writes is here.
    """
    root = tmp_path_factory.mktemp("ckpt")
    for name, stage in (("z0", 0), ("z1", 1)):
        extra = {"portable_checkpoint": False} if stage else {}
        out = run_neox(
            "train", str(_config(root, name, zero_optimization={"stage": stage}, **extra)), cwd=root
        )
        assert out.code == 0, out.err
        assert f"no checkpoint in {root / name} yet: starting from scratch" in out.out + out.err
    return root


def _copy(base: Path, src: str, dst: str) -> Path:
    """A copy of run ``src`` and a config that trains it to iteration 6."""
    shutil.copytree(base / src, base / dst)
    cfg = yaml.safe_load((base / f"{src}.yml").read_text())
    cfg.update({"save": str(base / dst), "load": str(base / dst), "train-iters": 6})
    (base / f"{dst}.yml").write_text(yaml.safe_dump(cfg))
    return base / dst


def _poison(path: Path, marker: Path) -> None:
    """Add the payload to a checkpoint file (or write one holding only it)."""
    blob = torch.load(path, weights_only=False) if path.exists() else {}
    blob = blob if isinstance(blob, dict) else {"module": blob}
    blob["extra"] = Payload(marker)
    torch.save(blob, path)


# --------------------------------------------------------------------------- no code runs from a checkpoint


def _as_layered(tag: Path) -> Path:
    """The tag as a pipeline checkpoint would look to a reader: layer files only."""
    (tag / "mp_rank_00_model_states.pt").rename(tag / "layer_00-model_00-model_states.pt")
    return tag / "layer_00-model_00-model_states.pt"


def _as_two_stages(tag: Path) -> Path:
    """layout.json says two pipeline stages, so a one-process resume re-splits from both portable files."""
    layout = json.loads((tag / "layout.json").read_text())
    (tag / "layout.json").write_text(json.dumps({**layout, "pp": 2}))
    shutil.copy(tag / "portable_pp00_tp00.pt", tag / "portable_pp01_tp00.pt")
    return tag / "portable_pp01_tp00.pt"


def _gpt_neox(tag: Path, layered: bool) -> Path:
    """A GPT-NeoX save (what its trainer writes) in place of ours."""
    for p in tag.iterdir():
        if p.is_file():
            p.unlink()
    name = "layer_00-model_00-model_states.pt" if layered else "mp_rank_00_model_states.pt"
    torch.save({"word_embeddings.weight": torch.zeros(4, 32)}, tag / name)
    return tag / name


Prepare = Callable[[Path], Path]
# name -> (source run, the file to poison given the tag dir, the command)
PAYLOADS: dict[str, tuple[str, Prepare, list[str]]] = {
    "generate-mp_rank": ("z1", lambda t: t / "mp_rank_00_model_states.pt", ["generate", "-c"]),
    "generate-portable": ("z0", lambda t: t / "portable_pp00_tp00.pt", ["generate", "-c"]),
    "generate-layer": ("z1", _as_layered, ["generate", "-c"]),
    "to-hf-mp_rank": ("z1", lambda t: t / "mp_rank_00_model_states.pt", ["convert", "--to"]),
    "to-hf-portable": ("z0", lambda t: t / "portable_pp00_tp00.pt", ["convert", "--to"]),
    "to-hf-layer": ("z1", _as_layered, ["convert", "--to"]),
    "from-neox-mp_rank": ("z0", lambda t: _gpt_neox(t, False), ["convert", "--from"]),
    "from-neox-layer": ("z0", lambda t: _gpt_neox(t, True), ["convert", "--from"]),
    "resume-mp_rank": ("z1", lambda t: t / "mp_rank_00_model_states.pt", ["train"]),
    "resume-zero-optim": ("z1", lambda t: next(t.glob("*optim_states.pt")), ["train"]),
    "resume-portable": ("z0", lambda t: t / "portable_pp00_tp00.pt", ["train", "ZERO1"]),
    "resume-reshard": ("z0", _as_two_stages, ["train"]),
}


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_no_code_runs_from_a_checkpoint(base: Path, case: str) -> None:
    source, prepare, command = PAYLOADS[case]
    run = _copy(base, source, f"payload-{case}")
    marker = base / f"marker-{case}"
    poisoned = prepare(run / "global_step4")
    _poison(poisoned, marker)
    out = base / f"out-{case}"
    if command[0] == "train":
        args = ["train", str(base / f"payload-{case}.yml")]
        args += ["--set", "zero_optimization.stage=1"] if "ZERO1" in command else []
    elif command[0] == "generate":
        args = ["generate", "-c", str(run), "--prompt", "the", "--max-new-tokens", "2"]
    elif "--from" in command:
        args = ["convert", str(run), "--from", "neox", str(out), "--config", str(base / f"{source}.yml")]
    else:
        args = ["convert", str(run), "--to", "hf", str(out)]
    before = files_under(run)
    outcome = run_neox(*args, cwd=base)
    expect_clean_error(
        outcome, f"cannot load {poisoned}: it needs posix.system, which is not an allowed checkpoint type"
    )
    assert not marker.exists(), "the payload ran"
    assert not out.exists()
    assert files_under(run) == before, "a refused resume wrote into the run"


def test_every_kind_of_checkpoint_file_loads(base: Path) -> None:
    """The allow-list is enough for what training writes (both formats here; the parallel tier covers the rest)."""
    from neoxcli.checkpoint import safe_load

    files = sorted(base.glob("z*/global_step*/*.pt"))
    assert {p.name for p in files} >= {"mp_rank_00_model_states.pt", "portable_pp00_tp00.pt"}
    assert any(p.name.endswith("optim_states.pt") for p in files)
    for path in files:
        assert isinstance(safe_load(path), dict), path


# --------------------------------------------------------------------------- no overwriting, one line each


def _no_latest(run: Path) -> None:
    (run / "latest").unlink()


def _empty_latest(run: Path) -> None:
    (run / "latest").write_text("\n")


def _rewound(run: Path) -> None:
    (run / "latest").write_text("global_step2")


def _escaping_latest(run: Path) -> None:
    (run / "latest").write_text("../z1/global_step4")


MISTAKES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "train-no-latest": (
        _no_latest,
        [],
        "holds checkpoints but no usable 'latest'; the newest complete one is global_step4",
    ),
    "train-empty-latest": (
        _empty_latest,
        [],
        "holds checkpoints but no usable 'latest'; the newest complete one is global_step4",
    ),
    "train-load-missing": (
        lambda r: None,
        ["--set", "load=MISSING"],
        "checkpoint.load: MISSING does not exist",
    ),
    "train-no-load": (
        lambda r: None,
        ["--set", "load=null"],
        "already holds checkpoints (latest: global_step4) and load is not set",
    ),
    "train-tag-exists": (
        _rewound,
        [],
        "global_step4 already exists (complete); this run would save into it at iteration 4",
    ),
    "train-load-tag-incomplete": (
        lambda r: (r / "global_step2" / "complete").unlink(),
        ["--set", "load_tag=global_step2"],
        "global_step2 is incomplete: its save did not finish",
    ),
    "train-latest-escapes": (
        _escaping_latest,
        [],
        "names '../z1/global_step4', which is not a checkpoint tag",
    ),
    "generate-latest-escapes": (
        _escaping_latest,
        ["GENERATE"],
        "names '../z1/global_step4', which is not a checkpoint tag",
    ),
    "to-hf-latest-escapes": (
        _escaping_latest,
        ["TO_HF"],
        "names '../z1/global_step4', which is not a checkpoint tag",
    ),
    "from-neox-latest-escapes": (
        _escaping_latest,
        ["FROM_NEOX"],
        "names '../z1/global_step4', which is not a checkpoint tag",
    ),
    "generate-incomplete-tag": (
        lambda r: (r / "global_step2" / "complete").unlink(),
        ["GENERATE", "global_step2"],
        "global_step2 is incomplete: its save did not finish",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistakes_are_one_line_and_overwrite_nothing(base: Path, case: str) -> None:
    edit, extra, fragment = MISTAKES[case]
    run = _copy(base, "z0", f"mistake-{case}")
    edit(run)
    missing = str(base / "nowhere")
    fragment = fragment.replace("MISSING", missing)
    if extra[:1] == ["GENERATE"]:
        target = run / extra[1] if len(extra) > 1 else run
        args = ["generate", "-c", str(target), "--prompt", "the"]
    elif extra[:1] == ["TO_HF"]:
        args = ["convert", str(run), "--to", "hf", str(base / f"out-{case}")]
    elif extra[:1] == ["FROM_NEOX"]:
        args = [
            "convert",
            str(run),
            "--from",
            "neox",
            str(base / f"out-{case}"),
            "--config",
            str(base / "z0.yml"),
        ]
    else:
        args = ["train", str(base / f"mistake-{case}.yml"), *(a.replace("MISSING", missing) for a in extra)]
    before = files_under(run)
    expect_clean_error(run_neox(*args, cwd=base), fragment)
    assert files_under(run) == before
    assert not (base / f"out-{case}").exists()


def test_no_latest_resumes_with_load_tag_and_old_checkpoints_still_load(base: Path) -> None:
    """The hint's way out works; a checkpoint from before the marker loads when ``latest`` names it."""
    run = _copy(base, "z0", "load-tag")
    (run / "latest").unlink()
    out = run_neox("train", str(base / "load-tag.yml"), "--set", "load_tag=global_step4", cwd=base)
    assert out.code == 0, out.err
    assert f"resumed from {run / 'global_step4'} at iteration 4" in out.out + out.err
    assert (run / "latest").read_text() == "global_step6" and (run / "global_step6" / "complete").is_file()

    old = _copy(base, "z0", "before-markers")
    for marker in old.glob("global_step*/complete"):
        marker.unlink()
    out = run_neox("generate", "-c", str(old), "--prompt", "the", "--max-new-tokens", "2", cwd=base)
    assert out.code == 0, out.err
    out = run_neox("train", str(base / "before-markers.yml"), cwd=base)
    assert out.code == 0, out.err


def test_overwrite_starts_over(base: Path) -> None:
    run = _copy(base, "z0", "overwrite")
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 99, "loss": 1.0}) + "\n")
    out = run_neox("train", str(base / "overwrite.yml"), "--overwrite", cwd=base)
    assert out.code == 0, out.err
    assert sorted(p.name for p in run.glob("global_step*")) == [
        "global_step2",
        "global_step4",
        "global_step6",
    ]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    saved = yaml.safe_load((run / "global_step6" / "config.yml").read_text())
    assert saved["checkpoint"]["overwrite"] is False


# --------------------------------------------------------------------------- debris and durability


def test_debris_of_a_crash_is_cleaned_on_the_next_start(base: Path) -> None:
    from neoxcli.checkpoint.savedir import JOURNAL_NAME

    run = _copy(base, "z0", "debris")
    (run / ".latest.abc123.tmp").write_text("global_step")
    (run / "global_step4" / ".portable_pp00_tp00.pt.tmp").write_bytes(b"\0" * 10)
    (run / "global_step4" / ".config.yml.x1.tmp").write_text("half")
    (run / ".deleting-global_step1").mkdir()
    (run / ".deleting-global_step1" / "mp_rank_00_model_states.pt").write_bytes(b"\0")
    half = run / "global_step5"  # a save cut short: journaled, no marker
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 100)
    (run / JOURNAL_NAME).write_text("global_step5\n")
    (run / "metrics.jsonl").write_text(
        (run / "metrics.jsonl").read_text() + json.dumps({"iteration": 5, "loss": 9.0}) + '\n{"iterat'
    )
    out = run_neox("train", str(base / "debris.yml"), cwd=base)
    assert out.code == 0, out.err
    assert f"removed {half}: the run stopped while saving it" in out.out + out.err
    left = {p for p in files_under(run) if Path(p).name.startswith(".") or "global_step5" in p}
    assert not left, left
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_save_finished_before_latest_is_rolled_forward(base: Path) -> None:
    from neoxcli.checkpoint.savedir import JOURNAL_NAME, clean_save_dir

    run = _copy(base, "z0", "roll-forward")
    (run / "latest").write_text("global_step2")
    (run / JOURNAL_NAME).write_text("global_step4\n")
    assert clean_save_dir(run) == [
        f"{run / 'global_step4'} was saved completely before the run stopped: 'latest' now names it"
    ]
    assert (run / "latest").read_text() == "global_step4" and not (run / JOURNAL_NAME).exists()


def test_a_failed_save_removes_its_tag(base: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The disk fills up mid-save: the half-written tag goes, the error is one line with the cause."""
    import errno

    from neoxcli.cli import main

    run = _copy(base, "z0", "disk-full")
    real_save = torch.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if "global_step6" in str(f) and "optim" not in str(f):
            Path(str(f)).write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", str(base / "disk-full.yml")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: cannot save checkpoint {run / 'global_step6'}: No space left on device"]
    assert not (run / "global_step6").exists() and (run / "latest").read_text() == "global_step4"
    assert not [p for p in files_under(run) if Path(p).name.startswith(".")]


def test_metrics_keep_one_row_per_iteration(tmp_path: Path) -> None:
    from neoxcli.training.metrics import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in (1, 2, 3, 4)) + '{"iter')
    truncate_metrics(path, 2)
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]


# --------------------------------------------------------------------------- kill -9 at random points


class _Runner:
    """``kill_runner.py``: forks a training child per request, so each start skips the imports."""

    def __init__(self, cwd: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        env.update(OMP_NUM_THREADS="1", NEOX_DEBUG="0")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("kill_runner.py"))],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def start(self, args: list[str], slow_prune: bool = False) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"args": args, "slow_prune": slow_prune}) + "\n")
        self.proc.stdin.flush()
        return int(self._line())

    def status(self) -> int:
        return int(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _check_after_kill(run: Path) -> None:
    """``latest`` names a complete tag; the next start's cleanup leaves nothing stale."""
    from neoxcli.checkpoint import read_latest
    from neoxcli.checkpoint.savedir import clean_save_dir

    latest = read_latest(run) if run.exists() else None
    if latest is not None:
        assert (run / latest / "complete").is_file(), f"latest names {latest}, which is incomplete"
    clean_save_dir(run)
    if run.exists():
        stale = [p for p in files_under(run) if any(part.startswith(".") for part in Path(p).parts)]
        assert not stale, stale
        for tag in run.glob("global_step*"):
            assert (tag / "complete").is_file(), f"{tag} is incomplete after cleanup"


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in rows]
    assert len(iterations) == len(set(iterations)), f"repeated rows: {iterations}"
    return {r["iteration"]: r["loss"] for r in rows}


def test_kill_during_saves_and_pruning_resumes_exactly(tmp_path: Path) -> None:
    iters = 24
    over = {"train-iters": iters, "checkpoint-factor": 1, "keep-last-n-checkpoints": 2, "eval-iters": 0}
    ref_cfg, run_cfg = _config(tmp_path, "ref", **over), _config(tmp_path, "run", **over)
    runner = _Runner(tmp_path)
    rng = random.Random(7)
    try:
        t0 = time.perf_counter()
        runner.start(["train", str(ref_cfg)])
        assert runner.status() == 0
        per_run = time.perf_counter() - t0
        kills = prune_kills = 0
        for attempt in range(30):
            if kills >= 10 and prune_kills >= 2:
                break
            slow = prune_kills < 2 and attempt % 3 == 2
            pid = runner.start(["train", str(run_cfg)], slow_prune=slow)
            if slow:
                deadline = time.perf_counter() + per_run + 10
                while time.perf_counter() < deadline and not any((tmp_path / "run").glob(".deleting-*")):
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.08))
            else:
                time.sleep(rng.uniform(0.25, 0.6) * per_run)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = runner.status()
            if os.WIFSIGNALED(status):
                kills += 1
                prune_kills += slow and any((tmp_path / "run").glob(".deleting-*"))
            _check_after_kill(tmp_path / "run")
        assert kills >= 10 and prune_kills >= 2, (kills, prune_kills)
        runner.start(["train", str(run_cfg)])
        assert runner.status() == 0
    finally:
        runner.close()
    _check_after_kill(tmp_path / "run")
    ref, resumed = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(resumed) == list(range(1, iters + 1))
    assert resumed == ref
    assert (tmp_path / "run" / "latest").read_text() == f"global_step{iters}"
