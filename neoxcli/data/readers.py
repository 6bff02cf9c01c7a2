"""Input documents for ``neox prepare``: files, globs, directories, archives and stdin.

Formats: ``.jsonl`` (one JSON object per line), ``.json`` (a JSON array, or
JSON lines, as c4's ``.json.gz`` files are), ``.txt`` (one document per file,
as GPT-NeoX reads it), each plain, ``.gz`` or ``.zst``, and tar archives
(``.tar``, ``.tar.gz``/``.tgz``, ``.tar.zst``) of such files. Compressed data
and archives are streamed, never fully decompressed: the preset corpora are
far larger than memory. ``-`` reads stdin (JSON lines when it starts with
``{``, else one text document; gzip or zstd is recognised by its magic bytes).
Every bad line is reported with its file (``archive.tar:member`` inside an
archive) and line number.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import posixpath
import re
import sys
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from neoxcli.errors import DataError

_KINDS = {".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".tar": "tar"}
_COMPRESSIONS = {"": None, ".gz": "gz", ".zst": "zst", ".zstd": "zst"}
#: what directory and archive scans pick up (any explicitly named file is read)
SUFFIXES = (*(k + c for k in _KINDS for c in _COMPRESSIONS), ".tgz")
STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class BadInput(Exception):
    """One unusable input record: ``file:line: reason`` (``file: reason`` when no line applies)."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}" if line is not None else f"{source}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass
class Record:
    """One document: its text per requested key (None where a key is absent)."""

    texts: list[str]
    source: str
    line: int


class Format(NamedTuple):
    """How to read a file: ``kind`` is jsonl, json, txt or tar; ``compression`` gz, zst or None."""

    kind: str
    compression: str | None


def format_of(name: str) -> Format | None:
    """The format a file name announces, or None when its suffix is not one we read."""
    low = name.lower()
    if low.endswith(".tgz"):
        return Format("tar", "gz")
    for csuf, comp in _COMPRESSIONS.items():
        if csuf and not low.endswith(csuf):
            continue
        base = low[: len(low) - len(csuf)]
        for ksuf, kind in _KINDS.items():
            if base.endswith(ksuf):
                return Format(kind, comp)
        if csuf:
            return None
    return None


def _is_supported(name: str) -> bool:
    return format_of(name) is not None


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
                    f"no .jsonl, .json or .txt files (plain, .gz or .zst) or tar archives under {item}",
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


def _decompressed(fh: IO[bytes], compression: str | None) -> IO[bytes]:
    """A buffered stream of ``fh``'s decompressed bytes (``fh`` itself when uncompressed)."""
    if compression == "zst":
        return io.BufferedReader(_ZstdRaw(fh), buffer_size=1 << 20)
    if compression == "gz":
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


class InputFile:
    """An open input with a byte position (compressed bytes read) for progress.

    ``source`` names what is being read now (``archive.tar:member`` inside an
    archive) and ``skipped`` counts archive members by suffix that hold no
    documents we read.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = "<stdin>" if path == STDIN else path
        self.source = self.name
        self.skipped: Counter[str] = Counter()
        try:
            self._raw_file: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")
        except OSError as exc:  # unreadable, or gone since the inputs were listed
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        if path == STDIN:
            peek = getattr(self._raw_file, "peek", None)
            head = peek(4)[:4] if peek is not None else b""
            compression = "gz" if head[:2] == _GZIP_MAGIC else "zst" if head == _ZSTD_MAGIC else None
            fmt = Format("stdin", compression)
        else:
            fmt = format_of(path) or Format("txt", _compression_of(path))
        self.kind = fmt.kind
        self.compression = fmt.compression
        self.stream = _decompressed(self._raw_file, fmt.compression)
        raw = getattr(self.stream, "raw", None)
        self._zraw: _ZstdRaw | None = raw if isinstance(raw, _ZstdRaw) else None

    def position(self) -> int:
        if self._zraw is not None:
            return self._zraw.compressed_pos
        if self.path == STDIN:
            return 0
        try:
            return self._raw_file.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self.path != STDIN:
            self.stream.close()
            self._raw_file.close()


def _compression_of(name: str) -> str | None:
    """Compression of a file whose suffix is otherwise unknown (it is then read as text)."""
    low = name.lower()
    return next((c for s, c in _COMPRESSIONS.items() if s and low.endswith(s)), None)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(text: str, key: str, source: str, line: int) -> None:
    """JSON's ``\\ud800`` escapes can leave half a UTF-16 pair, which no encoder can turn into bytes."""
    if not text.isascii():
        m = _SURROGATE.search(text)
        if m is not None:
            raise BadInput(
                source,
                line,
                f"key {key!r} holds a lone surrogate \\u{ord(m.group()):04x} at character {m.start()} "
                "(half a UTF-16 pair, not Unicode text)",
            )


def _texts_of(obj: Any, keys: Sequence[str], source: str, line: int) -> list[str]:
    if isinstance(obj, str) and keys == ("text",):
        _check_unicode(obj, "text", source, line)
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
        _check_unicode(v, k, source, line)
        out.append(v)
    return out


def _decode_line(raw: bytes, source: str, line: int) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadInput(source, line, f"undecodable bytes (not UTF-8) at byte {exc.start}") from None
    except ValueError as exc:
        raise BadInput(source, line, f"invalid JSON: {exc}") from None


def _read_error(exc: Exception) -> str | None:
    """Why a compressed stream or archive could not be read; None for anything else (a bug)."""
    if isinstance(exc, TruncatedZstd):
        return "truncated .zst stream (the file ends inside a frame)"
    if isinstance(exc, EOFError):
        return "truncated .gz stream (the file ends inside a gzip member)"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt .gz data: {exc}"
    if isinstance(exc, tarfile.TarError):
        return f"truncated or corrupt tar archive: {exc}"
    if type(exc).__module__.startswith("zstandard"):
        return f"corrupt .zst data: {exc}"
    return None


def iter_records(f: InputFile, keys: Sequence[str]) -> Iterator[Record | BadInput]:
    """Documents of one input; bad records are yielded as ``BadInput`` (the caller decides)."""
    keys = tuple(keys)
    if f.kind == "tar":
        yield from _iter_tar(f.stream, f.name, f, keys)
    else:
        yield from _iter_stream(f.stream, f.kind, f.name, keys)


def _iter_stream(
    stream: IO[bytes], kind: str, name: str, keys: tuple[str, ...]
) -> Iterator[Record | BadInput]:
    """Documents of one decompressed jsonl/json/txt stream (or stdin, sniffed)."""
    lineno = 0
    try:
        if kind == "stdin":
            head = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
            kind = "jsonl" if head.lstrip()[:1] == b"{" else "txt"
        if kind == "txt":
            data = stream.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                yield BadInput(name, line, f"undecodable bytes (not UTF-8) at byte {exc.start}")
                return
            yield Record([text] * len(keys), name, 1)
            return
        if kind == "json":
            head = stream.peek(256)[:256] if hasattr(stream, "peek") else b""
            if head.lstrip()[:1] == b"[":
                data = stream.read()
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
        for raw in stream:
            lineno += 1
            if not raw.strip():
                continue
            try:
                obj = _decode_line(raw, name, lineno)
                yield Record(_texts_of(obj, keys, name, lineno), name, lineno)
            except BadInput as bad:
                yield bad
    except Exception as exc:
        reason = _read_error(exc)
        if reason is None:
            raise
        yield BadInput(name, lineno + 1, reason)


# ------------------------------------------------------------------ tar archives


class _Guard(io.RawIOBase):
    """Reads through to ``stream`` and notes a failed read: an archive cannot go on past one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.failed = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception:
            self.failed = True
            raise

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


# tarfile's header errors: in the module since Python 3.2 though not in its __all__; were they
# ever gone, every header error would count as the end marker, which is what tarfile itself does
_END_MARKER: type[Exception] = getattr(tarfile, "EOFHeaderError", tarfile.HeaderError)
_NO_HEADER: type[Exception] | None = getattr(tarfile, "EmptyHeaderError", None)
_SHORT_HEADER: type[Exception] | None = getattr(tarfile, "TruncatedHeaderError", None)


class _EndNotingTarInfo(tarfile.TarInfo):
    """Records why the member list ended: tarfile takes a short or bad header there for the end."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _EndNotingTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as exc:
            tarfile_.neox_end = exc  # type: ignore[attr-defined]
            raise


def _skip_label(member: tarfile.TarInfo) -> str | None:
    """Why a member holds no documents we read (its suffix, for the summary); None when it does."""
    base = posixpath.basename(member.name)
    if base.startswith("._") or member.name.startswith("__MACOSX/"):
        return "macOS metadata"
    if not member.isreg():
        return "link or special file"
    if format_of(member.name) is None:
        return posixpath.splitext(base)[1].lower() or "no suffix"
    return None


def _end_problem(tf: tarfile.TarFile, last: str | None) -> str | None:
    """A member list that ends anywhere but at the end-of-archive marker means a damaged archive."""
    end = getattr(tf, "neox_end", None)
    if end is None or last is None or isinstance(end, _END_MARKER):
        return None
    if _NO_HEADER is not None and isinstance(end, _NO_HEADER):
        return f"truncated tar archive: it ends after member {last} without the end-of-archive marker"
    if _SHORT_HEADER is not None and isinstance(end, _SHORT_HEADER):
        return f"truncated tar archive: it ends inside the member header after {last}"
    return f"corrupt tar archive: bad member header after {last}: {end}"


def _iter_tar(
    stream: IO[bytes], label: str, f: InputFile, keys: tuple[str, ...]
) -> Iterator[Record | BadInput]:
    """Members of a (decompressed) tar stream in archive order, each read like a file of its type.

    Nested archives are read the same way. Members are forgotten once read, so an
    archive of millions of files streams in constant memory.
    """
    guard = _Guard(stream)
    last: str | None = None
    try:
        with tarfile.open(fileobj=guard, mode="r|", tarinfo=_EndNotingTarInfo) as tf:
            while True:
                member = tf.next()
                tf.members.clear()  # type: ignore[attr-defined]  # stream mode never looks back
                if member is None:
                    break
                last = member.name
                if member.isdir():
                    continue
                why = _skip_label(member)
                fmt = format_of(member.name) if why is None else None
                fh = tf.extractfile(member) if fmt is not None else None
                if fmt is None or fh is None:
                    f.skipped[why or "unreadable"] += 1
                    continue
                source = f"{label}:{member.name}"
                f.source = source
                member_guard = _Guard(fh)
                inner = (
                    _decompressed(cast(IO[bytes], member_guard), fmt.compression)
                    if fmt.compression
                    else cast(IO[bytes], io.BufferedReader(member_guard, 1 << 16))
                )
                try:
                    if fmt.kind == "tar":
                        yield from _iter_tar(inner, source, f, keys)
                    else:
                        yield from _iter_stream(inner, fmt.kind, source, keys)
                finally:
                    inner.close()
                if guard.failed or member_guard.failed:  # the error was this archive's, not the member's
                    return
            problem = _end_problem(tf, last)
            if problem:
                yield BadInput(label, None, problem)
                return
        while guard.read(1 << 16):  # lets a compressed stream notice a truncated end
            pass
    except Exception as exc:
        reason = _read_error(exc)
        if reason is None:
            raise
        if last is None and isinstance(exc, tarfile.ReadError):
            reason = f"not a tar archive ({exc})"
        yield BadInput(label, None, reason + (f", after member {last}" if last else ""))
