"""Input documents for ``neox prepare``: files, globs, directories and stdin.

Formats: ``.jsonl`` (one JSON object per line), ``.jsonl.zst`` (streamed, never
fully decompressed), ``.json`` (a JSON array, or JSON lines), ``.txt`` (one
document per file, as GPT-NeoX reads it) and ``-`` for stdin (JSON lines when
it starts with ``{``, else one text document). Every bad line is reported
with its file and line number.
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from neoxcli.errors import DataError

SUFFIXES = (".jsonl.zst", ".jsonl", ".json", ".txt", ".jsonl.zstd", ".json.zst", ".txt.zst")
STDIN = "-"


class BadInput(Exception):
    """One unusable input record: ``file:line: reason``."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass
class Record:
    """One document: its text per requested key (None where a key is absent)."""

    texts: list[str]
    source: str
    line: int


def _is_supported(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in SUFFIXES)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files, globs and directories (searched recursively) → a sorted, de-duplicated file list."""
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.abspath(p) if p != STDIN else STDIN
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in inputs:
        item = os.fspath(raw)
        if item == STDIN:
            add(STDIN)
        elif os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and _is_supported(p.name))
            if not found:
                raise DataError(
                    f"no .jsonl, .jsonl.zst, .json or .txt files under {item}",
                )
            for p in found:
                add(p)
        elif os.path.isfile(item):
            add(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"no files match {item}")
            for p in found:
                add(p)
        else:
            raise DataError(f"input {item} not found", hint="pass files, directories, globs or - for stdin")
    return out


def input_size(path: str) -> int:
    """Bytes on disk (0 for stdin), for the progress bar's ETA."""
    if path == STDIN:
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class TruncatedZstd(Exception):
    """The compressed stream ended inside a frame."""


class _ZstdRaw(io.RawIOBase):
    """Streams the frames of a ``.zst`` file and notices a truncated last frame."""

    def __init__(self, fh: IO[bytes]) -> None:
        import zstandard

        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._pending = b""
        self._fed = False  # bytes of the current frame were fed
        self._done = False
        self.compressed_pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending and not self._done:
            chunk = self._fh.read(1 << 18)
            if not chunk:
                self._done = True
                if self._fed and not self._dobj.eof:
                    raise TruncatedZstd()
                break
            self.compressed_pos += len(chunk)
            while chunk:
                out = self._dobj.decompress(chunk)
                self._fed = True
                if out:
                    self._pending += out
                if self._dobj.eof:
                    chunk = self._dobj.unused_data
                    self._dobj = self._dctx.decompressobj()
                    self._fed = False
                else:
                    chunk = b""
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


class InputFile:
    """An open input with a byte position (compressed bytes for .zst) for progress."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = "<stdin>" if path == STDIN else path
        low = path.lower()
        self.zst = low.endswith((".zst", ".zstd"))
        self._raw_file: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")
        if self.zst:
            self._zraw: _ZstdRaw | None = _ZstdRaw(self._raw_file)
            self.stream: IO[bytes] = io.BufferedReader(self._zraw, buffer_size=1 << 20)
        else:
            self._zraw = None
            self.stream = self._raw_file
        base = (
            low[: -len(".zst")]
            if low.endswith(".zst")
            else low[: -len(".zstd")]
            if low.endswith(".zstd")
            else low
        )
        self.kind = "jsonl" if base.endswith(".jsonl") else "json" if base.endswith(".json") else "txt"
        if path == STDIN:
            self.kind = "stdin"

    def position(self) -> int:
        if self._zraw is not None:
            return self._zraw.compressed_pos
        if self.path == STDIN:
            return 0
        try:
            return self._raw_file.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self.path != STDIN:
            self.stream.close()
            self._raw_file.close()


def _texts_of(obj: Any, keys: Sequence[str], source: str, line: int) -> list[str]:
    if isinstance(obj, str) and keys == ("text",):
        return [obj]
    if not isinstance(obj, dict):
        raise BadInput(source, line, f"expected a JSON object, got {type(obj).__name__}")
    out = []
    for k in keys:
        if k not in obj:
            raise BadInput(source, line, f"missing key {k!r}")
        v = obj[k]
        if not isinstance(v, str):
            raise BadInput(source, line, f"key {k!r} is {type(v).__name__}, not a string")
        out.append(v)
    return out


def _decode_line(raw: bytes, source: str, line: int) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadInput(source, line, f"undecodable bytes (not UTF-8) at byte {exc.start}") from None
    except ValueError as exc:
        raise BadInput(source, line, f"invalid JSON: {exc}") from None


def iter_records(f: InputFile, keys: Sequence[str]) -> Iterator[Record | BadInput]:
    """Documents of one input; bad records are yielded as ``BadInput`` (the caller decides)."""
    keys = tuple(keys)
    name = f.name
    lineno = 0
    try:
        kind = f.kind
        if kind == "stdin":
            head = f.stream.peek(64)[:64] if hasattr(f.stream, "peek") else b""
            kind = "jsonl" if head.lstrip()[:1] == b"{" else "txt"
        if kind == "txt":
            data = f.stream.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                yield BadInput(name, line, f"undecodable bytes (not UTF-8) at byte {exc.start}")
                return
            yield Record([text] * len(keys), name, 1)
            return
        if kind == "json":
            head = f.stream.peek(256)[:256] if hasattr(f.stream, "peek") else b""
            if head.lstrip()[:1] == b"[":
                data = f.stream.read()
                try:
                    items = json.loads(data)
                except (ValueError, UnicodeDecodeError) as exc:
                    yield BadInput(name, getattr(exc, "lineno", 1), f"invalid JSON: {exc}")
                    return
                for i, obj in enumerate(items, 1):
                    try:
                        yield Record(_texts_of(obj, keys, name, i), name, i)
                    except BadInput as bad:
                        yield bad
                return
        for raw in f.stream:
            lineno += 1
            if not raw.strip():
                continue
            try:
                obj = _decode_line(raw, name, lineno)
                yield Record(_texts_of(obj, keys, name, lineno), name, lineno)
            except BadInput as bad:
                yield bad
    except TruncatedZstd:
        yield BadInput(name, lineno + 1, "truncated .zst stream (the file ends inside a frame)")
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            yield BadInput(name, lineno + 1, f"corrupt .zst data: {exc}")
        else:
            raise
