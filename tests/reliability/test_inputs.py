"""Bad input, one case per row: each must end in one ``error:`` line naming the culprit, exit 2.

A row is (name, setup, argv, fragment): ``setup(tmp)`` writes the malformed
input into the case's directory, ``argv`` is the command (``{tmp}`` stands for
that directory) and ``fragment`` must appear in the error line. Adding a case
is adding a row. Cases needing a mounted file system skip where mounting is
not allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.reliability.harness import expect_clean_error, files_under, run_neox

BASE = {
    "num-layers": 1,
    "hidden-size": 32,
    "num-attention-heads": 2,
    "seq-length": 16,
    "tokenizer-type": "CharLevelTokenizer",
    "data-path": "data/tiny_text_document",
    "split": "90,10,0",
    "train_micro_batch_size_per_gpu": 2,
    "train-iters": 2,
    "eval-interval": 10,
    "eval-iters": 1,
    "save": "run",
    "log-interval": 1,
    "sample_at_end": False,
}
CHAR = ["--tokenizer", "CharLevelTokenizer"]


# --------------------------------------------------------------------------- setup helpers


def _text(name: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text)

    return setup


def _dataset(tmp: Path, name: str = "tiny", docs: list[list[int]] | None = None) -> str:
    from neoxcli.data.indexed import IndexedDatasetWriter

    (tmp / "data").mkdir(exist_ok=True)
    prefix = tmp / "data" / f"{name}_text_document"
    docs = docs if docs is not None else [[5 + (i + j) % 40 for j in range(30)] for i in range(40)]
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for doc in docs:
            w.add_document(doc)
    return str(prefix)


def _config(**over: object) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _dataset(tmp)
        cfg = {**BASE, **over}
        (tmp / "c.yml").write_text(yaml.safe_dump(cfg))

    return setup


def _with(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


def _patch_idx(offset: Callable[[int], int], fmt: str, value: int) -> Callable[[Path], None]:
    """A good dataset ``data/x`` with one index entry overwritten."""

    def setup(tmp: Path) -> None:
        prefix = _dataset(tmp, "x")
        idx = bytearray(Path(prefix + ".idx").read_bytes())
        n = struct.unpack("<Q", idx[18:26])[0]
        struct.pack_into(fmt, idx, offset(n), value)
        Path(prefix + ".idx").write_bytes(bytes(idx))

    return setup


def _grow_bin(tmp: Path) -> None:
    prefix = _dataset(tmp, "x")
    with open(prefix + ".bin", "ab") as f:
        f.write(b"\0\0")


def _alias_bomb(tmp: Path) -> None:
    lines = ['  x0: &l0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"  x{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp / "bomb.yml").write_text(
        "train_micro_batch_size_per_gpu: 2\nzero_optimization:\n" + "\n".join(lines)
    )


def _checkpoint(tmp: Path) -> None:
    """A tiny trained run under ``run/`` (built once per session and copied)."""
    shutil.copytree(_trained_run(), tmp / "run")


_RUN_CACHE: list[Path] = []


def _trained_run() -> Path:
    if not _RUN_CACHE:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="neox-inputs-run-"))
        atexit.register(shutil.rmtree, root, True)
        _config()(root)
        out = run_neox("train", "c.yml", cwd=root, timeout=300)
        assert out.code == 0, out.err
        _RUN_CACHE.append(root / "run")
    return _RUN_CACHE[0]


def _hostfile(text: str) -> Callable[[Path], None]:
    return _text("hosts", text)


def _none(tmp: Path) -> None:
    pass


# --------------------------------------------------------------------------- the table

CASES: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    # config files: already clean
    (
        "unknown key",
        _text("c.yml", "num_layerz: 2\n"),
        ["config", "show", "c.yml"],
        "unknown key 'num_layerz'",
    ),
    ("wrong type", _text("c.yml", "num_layers: many\n"), ["config", "show", "c.yml"], "model.num_layers"),
    ("missing config", _none, ["config", "show", "nope.yml"], "config file not found: nope.yml"),
    ("broken yaml", _text("c.yml", "a: [1, 2\n"), ["config", "show", "c.yml"], "invalid YAML in c.yml"),
    ("top level list", _text("c.yml", "- 1\n"), ["config", "show", "c.yml"], "mapping of keys"),
    ("config is dir", lambda t: (t / "d.yml").mkdir(), ["config", "show", "d.yml"], "is a directory"),
    ("not utf8", lambda t: (t / "c.yml").write_bytes(b"\xff\xfe"), ["config", "show", "c.yml"], "not UTF-8"),
    (
        "same key two spellings",
        _text("c.yml", "num-layers: 2\nnum_layers: 3\n"),
        ["config", "show", "c.yml"],
        "given twice",
    ),
    ("bad set", _config(), ["config", "show", "c.yml", "--set", "novalue"], "--set expects key=value"),
    (
        "bad set key",
        _config(),
        ["config", "show", "c.yml", "--set", "hiden_size=3"],
        "unknown key 'hiden_size'",
    ),
    ("set empty part", _config(), ["config", "show", "c.yml", "--set", "model..x=3"], "empty part"),
    ("negative layers", _config(), ["config", "show", "c.yml", "--set", "num_layers=0"], "model.num_layers"),
    # config files: fixed
    (
        "duplicate key",
        _text("c.yml", "num_layers: 2\nhidden_size: 8\nnum_layers: 3\n"),
        ["config", "show", "c.yml"],
        "duplicate key 'num_layers' in c.yml at lines 1 and 3",
    ),
    (
        "duplicate nested key",
        _text("c.yml", "optimizer:\n  type: Adam\n  type: SGD\n"),
        ["config", "show", "c.yml"],
        "duplicate key 'type'",
    ),
    (
        "duplicate json key",
        _text("c.json", '{"num_layers": 1, "num_layers": 2}'),
        ["config", "show", "c.json"],
        "duplicate key 'num_layers' in c.json",
    ),
    (
        "deep yaml",
        _text("c.yml", "x: " + "[" * 3000 + "]" * 3000 + "\n"),
        ["config", "show", "c.yml"],
        "nests too deeply",
    ),
    (
        "deep but parseable",
        _text("c.yml", "zero_optimization: " + "[" * 100 + "]" * 100 + "\n"),
        ["config", "show", "c.yml"],
        "nests deeper than 64",
    ),
    (
        "deep json",
        _text("c.json", '{"x": ' + "[" * 3000 + "]" * 3000 + "}"),
        ["config", "show", "c.json"],
        "nests too deeply",
    ),
    (
        "alias bomb",
        _alias_bomb,
        ["config", "show", "bomb.yml"],
        "'zero_optimization.x5' expands to more than",
    ),
    (
        "bool for int",
        _text("c.yml", "num_layers: true\n"),
        ["config", "show", "c.yml"],
        "model.num_layers: expected a number, got true",
    ),
    (
        "bool for float",
        _text("c.yml", "rotary_pct: false\n"),
        ["config", "show", "c.yml"],
        "model.rotary_pct",
    ),
    (
        "bool in int list",
        _config(),
        ["config", "show", "c.yml", "--set", "extra_save_iters=[1,true]"],
        "checkpoint.extra_save_iters",
    ),
    (
        "bool for optional int",
        _config(),
        ["config", "show", "c.yml", "--set", "num_kv_heads=true"],
        "model.num_kv_heads",
    ),
    (
        "seed too big",
        _config(),
        ["train", "c.yml", "--dry-run", "--set", f"seed={2**64}"],
        "train.seed: must be <=",
    ),
    (
        "seed negative",
        _config(),
        ["train", "c.yml", "--dry-run", "--set", "seed=-1"],
        "train.seed: must be >= 0",
    ),
    ("num gpus", _config(), ["train", "c.yml", "--dry-run", "--num-gpus", "-2"], "(in --num-gpus)"),
    (
        "bad launcher",
        _config(),
        ["train", "c.yml", "--dry-run", "--launcher", "bogus"],
        "unknown launcher 'bogus'",
    ),
    # data at training time
    (
        "missing data",
        _config(**{"data-path": "data/none_text_document"}),
        ["train", "c.yml"],
        "data not found: data/none_text_document",
    ),
    (
        "no data",
        _text("c.yml", yaml.safe_dump({k: v for k, v in BASE.items() if k != "data-path"})),
        ["train", "c.yml"],
        "no training data",
    ),
    (
        "missing tokenizer file",
        _config(**{"tokenizer-type": "HFTokenizer", "vocab-file": "nope.json"}),
        ["train", "c.yml"],
        "tokenizer file not found: nope.json",
    ),
    (
        "token id past vocab",
        _with(
            _config(**{"data-path": "data/big_text_document"}),
            lambda t: _dataset(t, "big", [[5, 6, 7] * 10] * 5 + [[5, 6, 7, 9000]] + [[5, 6, 7] * 10] * 5),
        ),
        ["train", "c.yml"],
        "document 5 holds token id 9000",
    ),
    (
        "empty training data",
        _with(_config(**{"data-path": "data/empty_text_document"}), lambda t: _dataset(t, "empty", [])),
        ["train", "c.yml"],
        "training dataset data/empty_text_document (data_path) is empty",
    ),
    # the index file
    (
        "negative size",
        _patch_idx(lambda n: 34 + 4 * 2, "<i", -5),
        ["prepare", "inspect", "data/x_text_document"],
        "sizes[2] is -5",
    ),
    (
        "huge size",
        _patch_idx(lambda n: 34 + 4 * 3, "<i", 2**31 - 1),
        ["prepare", "inspect", "data/x_text_document"],
        "sizes[3] is 2147483647",
    ),
    (
        "pointer past bin",
        _patch_idx(lambda n: 34 + 4 * n + 8 * 5, "<q", 10**9),
        ["prepare", "inspect", "data/x_text_document"],
        "pointers[5] is 1000000000",
    ),
    (
        "doc index out of range",
        _patch_idx(lambda n: 34 + 12 * n + 8 * 2, "<q", 999),
        ["prepare", "inspect", "data/x_text_document"],
        "doc_idx[2] is 999",
    ),
    (
        "doc index decreasing",
        _patch_idx(lambda n: 34 + 12 * n + 8 * 3, "<q", 1),
        ["prepare", "inspect", "data/x_text_document"],
        "doc_idx[3] is 1, before doc_idx[2]",
    ),
    (
        "bin longer than index",
        _grow_bin,
        ["prepare", "inspect", "data/x_text_document"],
        "does not match x_text_document.idx",
    ),
    (
        "bad magic",
        lambda t: ((t / "x.idx").write_bytes(b"NOTMAGIC" * 5), (t / "x.bin").write_bytes(b"")),
        ["prepare", "inspect", "x"],
        "bad magic",
    ),
    ("missing dataset", _none, ["prepare", "inspect", "data/none"], "not found"),
    # prepare
    ("prepare missing input", _none, ["prepare", "nope.txt", "-o", "out/x", *CHAR], "nope.txt"),
    (
        "prepare no output",
        _text("in.txt", "hello\n"),
        ["prepare", "in.txt", *CHAR],
        "--output-prefix is required",
    ),
    (
        "prepare bad tokenizer file",
        _text("in.txt", "hello\n"),
        ["prepare", "in.txt", "-o", "out/x", "--vocab-file", "nope.json"],
        "nope.json",
    ),
    (
        "prepare existing output",
        _with(_text("in.txt", "hello\n"), lambda t: _dataset(t, "o")),
        ["prepare", "in.txt", "-o", "data/o", *CHAR],
        "already exists",
    ),
    (
        "prepare overwrite onto dir",
        _with(_text("in.txt", "hello\n"), lambda t: (t / "out" / "x_text_document.bin").mkdir(parents=True)),
        ["prepare", "in.txt", "-o", "out/x", *CHAR, "--overwrite"],
        "out/x_text_document.bin: it is a directory",
    ),
    (
        "prepare bad on-bad",
        _text("in.txt", "hello\n"),
        ["prepare", "in.txt", "-o", "out/x", *CHAR, "--on-bad", "maybe"],
        "--on-bad",
    ),
    (
        "merge output is input",
        lambda t: _dataset(t, "m"),
        ["prepare", "merge", "data/m_text_document", "-o", "data/m_text_document", "--overwrite"],
        "also an input",
    ),
    # generate
    ("generate missing checkpoint", _none, ["generate", "-c", "nope", "--prompt", "x"], "nope"),
    (
        "generate seed too big",
        _checkpoint,
        ["generate", "-c", "run", "--prompt", "x", "--seed", str(2**64)],
        "--seed must be in 0",
    ),
    (
        "generate seed negative",
        _checkpoint,
        ["generate", "-c", "run", "--prompt", "x", "--seed", "-3"],
        "--seed must be in 0",
    ),
    (
        "generate output is dir",
        _with(_checkpoint, lambda t: (t / "o").mkdir()),
        ["generate", "-c", "run", "--prompt", "x", "--output-file", "o"],
        "it is a directory",
    ),
    (
        "generate empty prompts",
        _with(_checkpoint, _text("p.txt", "")),
        ["generate", "-c", "run", "--input-file", "p.txt"],
        "holds no prompts",
    ),
    # hostfile
    ("hostfile shell in name", _none, ["hostfile", "--from-list", "a;rm -rf x"], "host name 'a;rm'"),
    (
        "hostfile dash name",
        _none,
        ["hostfile", "--from-list", "-oProxyCommand=x"],
        "which no launcher can use",
    ),
    ("hostfile two sources", _none, ["hostfile", "--slurm", "--pbs"], "choose one host source"),
    ("hostfile bad slots", _hostfile("h1 slots=x\n"), ["hostfile", "--from-list", "hosts"], "hosts"),
    ("hostfile duplicate", _none, ["hostfile", "--from-list", "h1,h1:2"], "appears twice"),
    (
        "train bad hostfile line",
        _with(_config(), _hostfile("h1 slots=two\n")),
        ["train", "c.yml", "--launcher", "pdsh", "--hostfile", "hosts", "--dry-run"],
        "hosts",
    ),
]


@pytest.mark.parametrize(("name", "setup", "argv", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error(
    tmp_path: Path, name: str, setup: Callable[[Path], None], argv: list[str], fragment: str
) -> None:
    setup(tmp_path)
    before = files_under(tmp_path)
    out = run_neox(*[a.replace("{tmp}", str(tmp_path)) for a in argv], cwd=tmp_path)
    expect_clean_error(out, fragment, before=before, root=tmp_path)


# --------------------------------------------------------------------------- stderr notes, not errors


def test_empty_input_to_prepare_warns(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    out = run_neox("prepare", "empty.txt", "-o", "out/e", *CHAR, cwd=tmp_path)
    assert out.code == 0, out.err
    assert "warning: out/e_text_document holds no documents" in out.err


def test_max_new_tokens_past_the_context_is_said_once(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    out = run_neox(
        "generate", "-c", "run", "--prompt", "x", "--max-new-tokens", "40", "--greedy", cwd=tmp_path
    )
    assert out.code == 0, out.err
    notes = [line for line in out.err.splitlines() if "--max-new-tokens 40" in line]
    assert len(notes) == 1 and "context of 16 positions" in notes[0], out.err


# --------------------------------------------------------------------------- full and read-only disks


@contextlib.contextmanager
def _mounted(path: Path, *, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (read-only if asked); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip() or proc.returncode}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path) -> None:
    """Use up every byte of the file system at ``path``."""
    with contextlib.suppress(OSError), open(path / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


DISK_CASES: list[tuple[str, bool, bool, list[str], str]] = [
    # (name, read_only, pre-filled, argv with {mnt}, fragment)
    (
        "prepare read-only",
        True,
        False,
        ["prepare", "big.txt", "-o", "{mnt}/x", *CHAR],
        "Read-only file system",
    ),
    ("prepare full", False, False, ["prepare", "big.txt", "-o", "{mnt}/x", *CHAR], "No space left on device"),
    (
        "merge full",
        False,
        True,
        ["prepare", "merge", "data/tiny_text_document", "-o", "{mnt}/m"],
        "No space left on device",
    ),
    ("convert read-only", True, False, ["convert", "run", "--to", "hf", "{mnt}/hf"], "Read-only file system"),
    ("convert full", False, False, ["convert", "run", "--to", "hf", "{mnt}/hf"], "No space left on device"),
    (
        "generate read-only",
        True,
        False,
        ["generate", "-c", "run", "--prompt", "x", "--output-file", "{mnt}/s.jsonl"],
        "Read-only file system",
    ),
    (
        "generate full",
        False,
        True,
        ["generate", "-c", "run", "--prompt", "x", "--output-file", "{mnt}/s.jsonl"],
        "No space left on device",
    ),
]


@pytest.mark.parametrize(
    ("name", "read_only", "filled", "argv", "fragment"), DISK_CASES, ids=[c[0] for c in DISK_CASES]
)
def test_unwritable_targets_are_one_clean_error(
    tmp_path: Path, name: str, read_only: bool, filled: bool, argv: list[str], fragment: str
) -> None:
    (tmp_path / "big.txt").write_text("hello world, some text to tokenize\n" * 4000)
    _dataset(tmp_path)
    if argv[0] in ("convert", "generate"):
        _checkpoint(tmp_path)
    with _mounted(tmp_path / "mnt", read_only=read_only) as mnt:
        if filled:
            _fill(mnt)
        before = files_under(tmp_path)
        out = run_neox(*[a.replace("{mnt}", "mnt") for a in argv], cwd=tmp_path)
        expect_clean_error(out, fragment, before=before, root=tmp_path)
        error = next(line for line in out.err.splitlines() if line.startswith("error:"))
        assert "mnt/" in error, error


def test_full_disk_in_process_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mounts: the dataset writer fails on ENOSPC with a DataError and removes its temporaries."""
    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.errors import DataError

    w = IndexedDatasetWriter(tmp_path / "x", np.uint16)

    class FullFile:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    w._bin.close()
    monkeypatch.setattr(w, "_bin", FullFile())
    with pytest.raises(DataError, match=r"x.bin: No space left on device"):
        w.add_document([1, 2, 3])
    assert list(tmp_path.iterdir()) == []
