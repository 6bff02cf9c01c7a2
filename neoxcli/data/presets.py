"""Named datasets for ``neox prepare --preset NAME`` and ``data_preset:`` in configs.

``python-stdlib`` is built in: one document per ``.py`` file of the running
interpreter's standard library (tests and site-packages excluded, sorted
paths), read at run time, with a byte-level BPE trained on it. The other
presets are GPT-NeoX's download list: fetched with resume and a progress
callback, then tokenized like any other input (``.json.gz`` and tar archives
included, streamed member by member).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neoxcli.data.indexed import dataset_exists
from neoxcli.data.prepare import PrepareResult, Progress, output_prefix_for, prepare, tokenize_records
from neoxcli.data.readers import Record
from neoxcli.data.tokenizer import Tokenizer, build_tokenizer, train_bpe_tokenizer
from neoxcli.errors import DataError
from neoxcli.fileio import atomic_write_text

STDLIB = "python-stdlib"
STDLIB_VOCAB = 8192
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_EYE = "https://the-eye.eu/public/AI/pile_preliminary_components/"


@dataclass(frozen=True)
class Preset:
    """A downloadable dataset (GPT-NeoX's URL list)."""

    name: str
    urls: tuple[str, ...]
    num_docs: int | None = None
    sha256: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("enwik8", ("https://data.deepai.org/enwik8.zip",)),
        Preset("enron", ("http://eaidata.bmk.sh/data/enron_emails.jsonl.zst",), 517401),
        Preset("pile_subset", ("https://the-eye.eu/public/AI/pile/train/00.jsonl.zst",)),
        Preset("pile", tuple(f"https://the-eye.eu/public/AI/pile/train/{i:02}.jsonl.zst" for i in range(30))),
        Preset("pile_validation", ("https://the-eye.eu/public/AI/pile/val.jsonl.zst",)),
        Preset("pile_test", ("https://the-eye.eu/public/AI/pile/test.jsonl.zst",)),
        Preset("github", ("http://eaidata.bmk.sh/data/github_small.jsonl.zst",)),
        Preset("europarl", (_EYE + "EuroParliamentProceedings_1996_2011.jsonl.zst",)),
        Preset("freelaw", (_EYE + "FreeLaw_Opinions.jsonl.zst",)),
        Preset("nih", (_EYE + "NIH_ExPORTER_awarded_grant_text.jsonl.zst",)),
        Preset("ubuntu_irc", (_EYE + "ubuntu_irc_until_2020_9_1.jsonl.zst",)),
        Preset("youtube_subtitles", (_EYE + "yt_subs.jsonl.zst",)),
        Preset("arxiv", (_EYE + "2020-09-08-arxiv-extracts-nofallback-until-2007-068.tar.gz",)),
        Preset("pubmed", (_EYE + "PMC_extracts.tar.gz",)),
        Preset("books1", (_EYE + "books1.tar.gz",)),
        Preset("books3", (_EYE + "books3.tar.gz",)),
        Preset("hackernews", (_EYE + "hn.tar.gz",), 373000),
        Preset("openwebtext2", (_EYE + "openwebtext2.jsonl.zst.tar",), 17103000),
        Preset("stackexchange", (_EYE + "stackexchange_dataset.tar",)),
        Preset(
            "c4",
            tuple(
                f"https://the-eye.eu/eleuther_staging/c4/en/c4-train.{i:05}-of-01024.json.gz"
                for i in range(1024)
            ),
        ),
        Preset(
            "c4_openwebtext",
            tuple(
                f"https://the-eye.eu/eleuther_staging/c4/realnewslike/c4-train.{i:05}-of-00512.json.gz"
                for i in range(512)
            ),
        ),
    )
}


def preset_names() -> list[str]:
    return [STDLIB, *PRESETS]


def default_data_dir() -> Path:
    """Where presets go unless told: ``$NEOX_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("NEOX_DATA_DIR", "data"))


@dataclass
class PreparedDataset:
    """A ready dataset: pass ``prefix`` as data_path and the tokenizer fields to the model."""

    name: str
    prefix: str
    tokenizer_type: str
    tokenizer_path: Path | None
    documents: int
    tokens: int
    seconds: float = 0.0
    skipped: bool = False
    files: int = 0
    vocab_size: int = 0
    #: archive members holding nothing to read, by suffix (see ``skipped_members_note``)
    skipped_members: dict[str, int] = field(default_factory=dict)

    def tokenizer(self) -> Tokenizer:
        return build_tokenizer(self.tokenizer_type, str(self.tokenizer_path) if self.tokenizer_path else None)


# ------------------------------------------------------------------ python-stdlib


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(max_files: int | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted by relative path (tests excluded)."""
    root = stdlib_root()
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).parts
        if any(part in _EXCLUDED_DIRS for part in rel[:-1]) or not p.is_file():
            continue
        files.append((p.relative_to(root).as_posix(), p))
    files.sort()
    out = [p for _, p in files]
    return out[:max_files] if max_files is not None else out


def _stdlib_texts(files: list[Path]) -> Iterator[tuple[str, Path]]:
    for p in files:
        try:
            yield p.read_bytes().decode("utf-8"), p
        except (OSError, UnicodeDecodeError):
            continue


def _manifest_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def _read_manifest(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def _up_to_date(manifest_path: Path, want: dict[str, Any], prefix: str, force: bool) -> dict[str, Any] | None:
    """The manifest of an earlier run with the same settings whose dataset is still there, else None."""
    if force:
        return None
    old = _read_manifest(manifest_path)
    if old is None or any(old.get(k) != v for k, v in want.items()) or not dataset_exists(prefix):
        return None
    return old


def _prepare_stdlib(
    out_dir: Path,
    vocab_size: int,
    max_files: int | None,
    workers: int,
    force: bool,
    progress: Callable[[Progress], None] | None,
) -> PreparedDataset:
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(out_dir / f"{STDLIB}_text_document")
    tok_path = out_dir / "tokenizer.json"
    manifest_path = _manifest_path(out_dir, STDLIB)
    want = {
        "preset": STDLIB,
        "python": ".".join(map(str, sys.version_info[:3])),
        "vocab_size": vocab_size,
        "max_files": max_files,
    }
    old = _up_to_date(manifest_path, want, prefix, force)
    if old is not None and tok_path.is_file():
        return PreparedDataset(
            STDLIB,
            prefix,
            "HFTokenizer",
            tok_path,
            old["documents"],
            old["tokens"],
            0.0,
            True,
            old["files"],
            old["vocab"],
        )
    manifest_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files = stdlib_files(max_files)
    if not files:
        raise DataError(f"no .py files found under {stdlib_root()}")
    docs = list(_stdlib_texts(files))
    tok = train_bpe_tokenizer((t for t, _ in docs), vocab_size, tok_path, length=len(docs))
    root = stdlib_root()
    records = (Record([t], str(p.relative_to(root)), 1) for t, p in docs)
    total = sum(len(t) for t, _ in docs)
    done = {"n": 0}

    def position() -> tuple[int, str]:
        return done["n"], ""

    def counting() -> Iterator[Record]:
        for r in records:
            done["n"] += len(r.texts[0])
            yield r

    res = tokenize_records(
        counting(),
        [prefix],
        ("text",),
        tok,
        append_eod=True,
        workers=workers,
        bytes_total=total,
        position=position,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    _write_json_atomic(
        manifest_path,
        {
            **want,
            "files": len(files),
            "documents": res.documents,
            "tokens": res.tokens,
            "vocab": tok.vocab_size,
            "seconds": round(seconds, 3),
            "tokenizer": tok_path.name,
            "prefix": Path(prefix).name,
        },
    )
    return PreparedDataset(
        STDLIB,
        prefix,
        "HFTokenizer",
        tok_path,
        res.documents,
        res.tokens,
        seconds,
        False,
        len(files),
        tok.vocab_size,
    )


# ------------------------------------------------------------------ downloads


def download(
    url: str,
    dest: Path,
    progress: Callable[[int, int | None], None] | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Fetch ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run.

    The file appears under its final name only when complete (and its checksum,
    if known, matches).
    """
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "neox-prepare"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if have and status != 206:
                    have = 0  # the server ignored the range: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f:
                    done = have
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                if total is not None and done < total:
                    raise urllib.error.URLError(f"connection closed after {done} of {total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # already complete
                break
            raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            attempt += 1
            if attempt > retries:
                raise DataError(
                    f"download of {url} failed: {getattr(exc, 'reason', exc)}",
                    hint="check the connection; run the command again to resume the download",
                ) from None
            time.sleep(min(2.0**attempt, 10.0) * 0.1)
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != sha256.lower():
            part.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}", hint="the partial file was removed; run again")
    os.replace(part, dest)
    return dest


def _zip_texts(path: Path) -> Iterator[Record]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or info.filename.startswith("__MACOSX"):
                continue
            data = zf.read(info)
            yield Record([data.decode("utf-8", errors="replace")], f"{path}:{info.filename}", 1)


def _prepare_download(
    preset: Preset,
    out_dir: Path,
    tokenizer: Tokenizer | None,
    workers: int,
    force: bool,
    progress: Callable[[Progress], None] | None,
    download_progress: Callable[[str, int, int | None], None] | None,
    urls: list[str] | None,
    max_docs: int | None,
) -> PreparedDataset:
    tok = tokenizer or build_tokenizer("HFGPT2Tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = output_prefix_for(out_dir / preset.name, "text")
    manifest_path = _manifest_path(out_dir, preset.name)
    want = {"preset": preset.name, "tokenizer": asdict(tok.spec), "max_docs": max_docs}
    old = _up_to_date(manifest_path, want, prefix, force)
    if old is not None:
        return PreparedDataset(
            preset.name,
            prefix,
            tok.spec.tokenizer_type,
            _tok_path(tok),
            old["documents"],
            old["tokens"],
            0.0,
            True,
            old["files"],
            tok.vocab_size,
            old.get("skipped_members", {}),
        )
    manifest_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files: list[Path] = []
    for url in urls or list(preset.urls):
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        cb = (lambda d, t, _n=name: download_progress(_n, d, t)) if download_progress else None
        files.append(download(url, out_dir / "raw" / name, cb, preset.sha256.get(name)))
    zips = [f for f in files if f.suffix == ".zip"]
    if zips:

        def recs() -> Iterator[Record]:
            for z in zips:
                yield from _zip_texts(z)

        res: PrepareResult = tokenize_records(
            recs(),
            [prefix],
            ("text",),
            tok,
            append_eod=True,
            workers=workers,
            max_docs=max_docs,
            progress=progress,
        )
    else:
        res = prepare(
            [str(f) for f in files],
            out_dir / preset.name,
            tok,
            append_eod=True,
            workers=workers,
            max_docs=max_docs,
            progress=progress,
            on_bad="skip",
        )
    seconds = time.perf_counter() - t0
    _write_json_atomic(
        manifest_path,
        {
            **want,
            "files": len(files),
            "documents": res.documents,
            "tokens": res.tokens,
            "seconds": round(seconds, 3),
            "prefix": Path(prefix).name,
            "skipped_members": res.skipped_members,
        },
    )
    return PreparedDataset(
        preset.name,
        prefix,
        tok.spec.tokenizer_type,
        _tok_path(tok),
        res.documents,
        res.tokens,
        seconds,
        False,
        len(files),
        tok.vocab_size,
        res.skipped_members,
    )


def _tok_path(tok: Tokenizer) -> Path | None:
    return Path(tok.spec.vocab_file) if tok.spec.vocab_file else None


def prepare_preset(
    name: str,
    out_dir: Path | str | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = STDLIB_VOCAB,
    workers: int = 1,
    max_files: int | None = None,
    max_docs: int | None = None,
    force: bool = False,
    progress: Callable[[Progress], None] | None = None,
    download_progress: Callable[[str, int, int | None], None] | None = None,
    urls: list[str] | None = None,
) -> PreparedDataset:
    """Prepare preset ``name`` into ``out_dir`` (default ``data/NAME``); a no-op when already complete.

    ``python-stdlib`` writes ``python-stdlib_text_document.{bin,idx}`` and its own
    ``tokenizer.json``; download presets use ``tokenizer`` (default HFGPT2Tokenizer).
    ``urls`` replaces a preset's URLs (mirrors, tests).
    """
    key = name.strip().lower().replace("-", "_")
    out = Path(out_dir) if out_dir is not None else default_data_dir() / name
    if key == STDLIB.replace("-", "_"):
        return _prepare_stdlib(out, vocab_size, max_files, workers, force, progress)
    if key in PRESETS:
        return _prepare_download(
            PRESETS[key], out, tokenizer, workers, force, progress, download_progress, urls, max_docs
        )
    import difflib

    close = difflib.get_close_matches(name, preset_names(), n=1)
    raise DataError(
        f"unknown preset {name!r}",
        hint=(f"did you mean {close[0]}? " if close else "") + "presets: " + ", ".join(preset_names()),
    )
