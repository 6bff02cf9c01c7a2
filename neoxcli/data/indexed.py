"""The Megatron / GPT-NeoX mmap indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

Byte-compatible with files written by GPT-NeoX and Megatron so that users can
train on data they already tokenized. Reading is zero-copy (numpy memmap):
opening a terabyte dataset costs only the index, and every ``get`` is a view.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import numpy as np

from neoxcli.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34  # magic 9 + version 8 + dtype 1 + N 8 + D 8

# GPT-NeoX's dtype codes (Megatron-core swaps 6 and 7; both are accepted on read
# because float data never holds tokens and a float type is enough to tell them apart).
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}
CODE_OF_DTYPE: dict[np.dtype, int] = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with GPT-NeoX's margin (vocab < 65500), else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


def bin_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def normalize_prefix(prefix: str | os.PathLike[str]) -> str:
    """Accept ``data/x_text_document``, ``data/x_text_document.bin`` or ``.idx``."""
    text = os.fspath(prefix)
    for ext in (".bin", ".idx"):
        if text.endswith(ext):
            return text[: -len(ext)]
    return text


def dataset_exists(prefix: str | os.PathLike[str]) -> bool:
    """Both files present (the writer only renames complete files into place)."""
    return bin_path(prefix).is_file() and idx_path(prefix).is_file()


def _pointers(sizes: np.ndarray, itemsize: int) -> np.ndarray:
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= itemsize
    return pointers


def write_index(path: Path, dtype: np.dtype, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write a ``.idx`` file for ``sizes`` (int32 per sequence) and ``doc_idx``."""
    sizes = np.asarray(sizes, dtype=np.int32)
    doc_idx = np.asarray(doc_idx, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF_DTYPE[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.astype("<i4", copy=False).tobytes(order="C"))
        f.write(_pointers(sizes, np.dtype(dtype).itemsize).astype("<i8", copy=False).tobytes(order="C"))
        f.write(doc_idx.astype("<i8", copy=False).tobytes(order="C"))


class IndexedDatasetWriter:
    """Writes ``prefix.bin``/``prefix.idx``, visible only once complete.

    Both files are written under temporary names in the destination directory
    and renamed on a clean ``close()``; an exception (or a killed process)
    never leaves a dataset that looks whole. Leftover temporaries of a killed
    run are named ``.{name}.tmp-{pid}`` and removed by the next writer.
    """

    def __init__(self, prefix: str | os.PathLike[str], dtype: np.dtype | type | str = np.uint16) -> None:
        self.prefix = normalize_prefix(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported dtype {self.dtype}")
        self._bin_final = bin_path(self.prefix)
        self._idx_final = idx_path(self.prefix)
        tag = f".tmp-{os.getpid()}"
        self._bin_tmp = self._bin_final.with_name(f".{self._bin_final.name}{tag}")
        self._idx_tmp = self._idx_final.with_name(f".{self._idx_final.name}{tag}")
        try:
            self._bin_final.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(self._bin_final, self._idx_final)
            self._bin = open(self._bin_tmp, "wb", buffering=1 << 20)
        except OSError as exc:  # a read-only directory, or a file where a directory should be
            raise DataError(f"cannot write {self._bin_final}: {exc.strerror or exc}") from None
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]
        self._closed = False
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self.tokens = 0

    # one sequence per document, as GPT-NeoX's preprocessing writes them
    def add_document(self, tokens: np.ndarray | list[int]) -> None:
        """Append one document (one sequence) and mark a document boundary."""
        self.add_item(tokens)
        self.end_document()

    def add_item(self, tokens: np.ndarray | list[int]) -> None:
        """Append one sequence without ending the document (Megatron's sentence level)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if arr.dtype != self.dtype:
            if self._info is not None and arr.size and arr.dtype.kind in "iu":
                lo, hi = int(arr.min()), int(arr.max())
                if lo < self._info.min or hi > self._info.max:
                    raise ValueError(f"token id out of range for {self.dtype}: [{lo}, {hi}]")
            arr = arr.astype(self.dtype)
        self._write(arr.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._sizes.append(int(arr.size))
        self.tokens += int(arr.size)

    def add_documents(self, docs: Iterable[np.ndarray | list[int]]) -> None:
        for doc in docs:
            self.add_document(doc)

    def add_concatenated(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append many documents at once: ``tokens`` is their concatenation."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        sizes = np.asarray(sizes, dtype=np.int64)
        if int(sizes.sum()) != tokens.size:
            raise ValueError("sizes do not add up to the number of tokens")
        self._write(tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        start = len(self._sizes)
        self._sizes.extend(sizes.tolist())
        self._doc_idx.extend(range(start + 1, start + len(sizes) + 1))
        self.tokens += int(tokens.size)

    def append_dataset(self, other: IndexedDataset, block: int = 1 << 24) -> None:
        """Append every sequence and document boundary of ``other`` (same dtype)."""
        if other.dtype != self.dtype:
            raise ValueError(f"dtype {other.dtype} differs from {self.dtype}")
        data = other._bin_map
        for s in range(0, data.size, block):
            self._write(np.ascontiguousarray(data[s : s + block]).tobytes())
        base = len(self._sizes)
        self._sizes.extend(np.asarray(other.sizes).tolist())
        self._doc_idx.extend((np.asarray(other.doc_idx[1:], dtype=np.int64) + base).tolist())
        self.tokens += other.num_tokens

    def _write(self, data: bytes) -> None:
        """Append to the .bin; a full or read-only disk drops the temporaries and names the dataset."""
        try:
            self._bin.write(data)
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> DataError:
        return DataError(
            f"cannot write {self._bin_final}: {exc.strerror or exc}",
            hint="nothing was left behind; free some space or choose another output (-o)",
        )

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    @property
    def documents(self) -> int:
        return len(self._doc_idx) - 1

    def close(self) -> None:
        """Finish the index and move both files into place (idx last)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bin.close()
            if self._sizes and max(self._sizes) > np.iinfo(np.int32).max:
                raise ValueError("a sequence longer than 2**31-1 tokens cannot be indexed")
            write_index(
                self._idx_tmp, self.dtype, np.asarray(self._sizes, dtype=np.int64), np.asarray(self._doc_idx)
            )
            os.replace(self._bin_tmp, self._bin_final)
            os.replace(self._idx_tmp, self._idx_final)
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far."""
        self._closed = True
        try:
            self._bin.close()
        except OSError:
            pass  # the buffered tail could not be written either; the file goes anyway
        finally:
            for p in (self._bin_tmp, self._idx_tmp):
                p.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove_stale_temps(*finals: Path) -> None:
    """Remove temporaries of writers whose process is gone (a killed run)."""
    for final in finals:
        for tmp in final.parent.glob(f".{final.name}.tmp-*"):
            try:
                pid = int(tmp.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_index(
    path: Path, sizes: np.ndarray, pointers: np.ndarray, doc_idx: np.ndarray, itemsize: int
) -> None:
    """Refuse an index whose arrays contradict each other, naming the first bad entry.

    The header and the last pointer say nothing about the entries in between: a
    negative size, a pointer past the data or a document boundary out of order
    would otherwise surface as absurd statistics or garbage samples (and a
    "loss became nan") long after the file was opened. One vectorised pass.
    """
    n = len(sizes)

    def corrupt(what: str) -> DataError:
        return DataError(
            f"{path} is corrupt: {what}",
            hint="prepare the dataset again (`neox prepare`); `neox prepare inspect` checks a dataset",
        )

    bad = np.flatnonzero(sizes < 0)
    if bad.size:
        i = int(bad[0])
        raise corrupt(f"sizes[{i}] is {int(sizes[i])} (a sequence length cannot be negative)")
    bad = np.flatnonzero(pointers != _pointers(sizes, itemsize))
    if bad.size:
        i = int(bad[0])
        want = int(sizes[:i].sum(dtype=np.int64)) * itemsize
        span = int(pointers[i]) - int(pointers[i - 1]) if i else 0
        if (
            i
            and span >= 0
            and span % itemsize == 0
            and i + 1 < n
            and int(pointers[i + 1]) == int(pointers[i]) + int(sizes[i]) * itemsize
        ):
            # the pointers agree with each other around i: the size before them is the odd one out
            raise corrupt(
                f"sizes[{i - 1}] is {int(sizes[i - 1])}, but the pointers give that sequence {span // itemsize} tokens"
            )
        raise corrupt(
            f"pointers[{i}] is {int(pointers[i])}, expected {want} "
            f"(the sizes before it times {itemsize} byte{'s' if itemsize > 1 else ''})"
        )
    if len(doc_idx):
        bad = np.flatnonzero((doc_idx < 0) | (doc_idx > n))
        if bad.size:
            i = int(bad[0])
            raise corrupt(
                f"document {max(i - 1, 0)}: doc_idx[{i}] is {int(doc_idx[i])}, "
                f"outside 0..{n} (the sequences in the index)"
            )
        bad = np.flatnonzero(np.diff(doc_idx) < 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise corrupt(
                f"document {i - 1}: doc_idx[{i}] is {int(doc_idx[i])}, "
                f"before doc_idx[{i - 1}] = {int(doc_idx[i - 1])} "
                "(document starts must not decrease)"
            )


class IndexedDataset:
    """Zero-copy reader of an mmap indexed dataset (ours, GPT-NeoX's or Megatron's).

    ``ds[i]`` / ``ds.get(i, offset, length)`` return read-only numpy views of
    sequence ``i``; ``sizes``, ``pointers`` and ``doc_idx`` are views into the index.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = normalize_prefix(prefix)
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        if not ipath.is_file() or not bpath.is_file():
            missing = ", ".join(str(p) for p in (bpath, ipath) if not p.is_file())
            raise DataError(
                f"dataset {self.prefix} not found (missing {missing})",
                hint="pass the prefix without .bin/.idx, e.g. data/enwik8/enwik8_text_document; "
                "create one with `neox prepare`",
            )
        size = ipath.stat().st_size
        try:
            with open(ipath, "rb") as f:
                header = f.read(HEADER_SIZE)
            with open(bpath, "rb"):
                pass
        except OSError as exc:
            raise DataError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        if len(header) < HEADER_SIZE or header[:9] != MAGIC:
            raise DataError(
                f"{ipath} is not an mmap indexed dataset index (bad magic)",
                hint="only the mmap format (data_impl: mmap) is supported",
            )
        (version,) = struct.unpack("<Q", header[9:17])
        if version != VERSION:
            raise DataError(f"{ipath}: unsupported index version {version}")
        code = header[17]
        if code not in DTYPE_CODES:
            raise DataError(f"{ipath}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        n, d = struct.unpack("<QQ", header[18:34])
        need = HEADER_SIZE + 12 * n + 8 * d
        if size < need:
            raise DataError(f"{ipath} is truncated ({size} bytes, expected at least {need})")
        self._idx_map = np.memmap(ipath, dtype=np.uint8, mode="r").view(np.ndarray)
        buf = self._idx_map
        off = HEADER_SIZE
        self.sizes: np.ndarray = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
        off += 4 * n
        self.pointers: np.ndarray = np.frombuffer(buf, dtype="<i8", count=n, offset=off)
        off += 8 * n
        self.doc_idx: np.ndarray = np.frombuffer(buf, dtype="<i8", count=d, offset=off)
        bsize = bpath.stat().st_size
        itemsize = self.dtype.itemsize
        check_index(ipath, self.sizes, self.pointers, self.doc_idx, itemsize)
        expected = (int(self.pointers[-1]) + int(self.sizes[-1]) * itemsize) if n else 0
        if bsize < expected:
            raise DataError(f"{bpath} is truncated ({bsize} bytes, the index needs {expected})")
        if bsize != expected:
            raise DataError(
                f"{bpath} does not match {ipath.name}: {bsize} bytes, the index describes {expected}",
                hint="the two files come from different runs; prepare the dataset again",
            )
        if bsize:
            # a plain ndarray view: slicing an np.memmap runs Python-level hooks on every access
            mm = np.memmap(bpath, dtype=self.dtype.newbyteorder("<"), mode="r")
            self._bin_map: np.ndarray = mm.view(np.ndarray)
        else:
            self._bin_map = np.zeros(0, dtype=self.dtype)
        self._itemsize = itemsize

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_documents(self) -> int:
        return max(len(self.doc_idx) - 1, 0)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset+length)`` of sequence ``i`` (a view, no copy)."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        start = int(self.pointers[i]) // self._itemsize + offset
        return self._bin_map[start : start + length]

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(len(self)))]
        return self.get(int(i))

    def document(self, d: int) -> np.ndarray:
        """All tokens of document ``d`` (its sequences concatenated)."""
        a, b = int(self.doc_idx[d]), int(self.doc_idx[d + 1])
        if not 0 <= a <= len(self) or not 0 <= b <= len(self):  # checked here, not for every file opened
            raise DataError(f"{idx_path(self.prefix)} is corrupt: document {d} spans sequences {a}..{b}")
        if b <= a:
            return self._bin_map[0:0]
        start = int(self.pointers[a]) // self._itemsize
        end = int(self.pointers[b - 1]) // self._itemsize + int(self.sizes[b - 1])
        return self._bin_map[start:end]

    def token_range(self, block: int = 1 << 24) -> tuple[int, int]:
        """(smallest, largest) token id in the data, read block by block from the memory map."""
        lo: int | None = None
        hi: int | None = None
        for s in range(0, self._bin_map.size, block):
            part = self._bin_map[s : s + block]
            a, b = int(part.min()), int(part.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        return int(lo or 0), int(hi or 0)

    def first_token_outside(self, vocab_size: int, block: int = 1 << 24) -> tuple[int, int, int] | None:
        """(document, position in it, id) of the first token id outside ``0..vocab_size-1``, if any."""
        data = self._bin_map
        for s in range(0, data.size, block):
            part = data[s : s + block]
            bad = (part >= vocab_size) | (part < 0) if data.dtype.kind == "i" else part >= vocab_size
            hits = np.flatnonzero(bad)
            if hits.size:
                pos = s + int(hits[0])
                starts = np.asarray(self.pointers) // self._itemsize
                seq = int(np.searchsorted(starts, pos, side="right")) - 1
                doc = max(int(np.searchsorted(self.doc_idx, seq, side="right")) - 1, 0)
                first = int(starts[int(self.doc_idx[doc])]) if len(self.doc_idx) else 0
                return doc, pos - first, int(data[pos])
        return None

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, dtype={self.dtype})"
