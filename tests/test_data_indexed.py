"""The mmap .bin/.idx format, byte for byte (see formats.md's worked example)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from neoxcli.data.indexed import IndexedDataset, IndexedDatasetWriter, best_dtype
from neoxcli.errors import DataError

WORKED_HEADER = bytes.fromhex(
    "4D4D494449445800 00 0100000000000000 08 0300000000000000 0400000000000000".replace(" ", "")
)


def _write_example(prefix: Path) -> list[np.ndarray]:
    docs = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9, 10, 11])]
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in docs:
            w.add_document(d)
    return docs


def test_worked_example_bytes(tmp_path: Path) -> None:
    prefix = tmp_path / "ex"
    _write_example(prefix)
    bin_bytes = (tmp_path / "ex.bin").read_bytes()
    idx = (tmp_path / "ex.idx").read_bytes()
    assert bin_bytes == np.arange(1, 12, dtype="<u2").tobytes() and len(bin_bytes) == 22
    assert len(idx) == 34 + 12 + 24 + 32 == 102
    assert idx[:34] == WORKED_HEADER
    assert list(struct.unpack("<3i", idx[34:46])) == [4, 2, 5]
    assert list(struct.unpack("<3q", idx[46:70])) == [0, 8, 12]
    assert list(struct.unpack("<4q", idx[70:102])) == [0, 1, 2, 3]


def test_reader_round_trip_and_views(tmp_path: Path) -> None:
    docs = _write_example(tmp_path / "ex")
    ds = IndexedDataset(tmp_path / "ex.bin")  # an extension is accepted
    assert len(ds) == 3 and ds.dtype == np.uint16 and ds.num_documents == 3 and ds.num_tokens == 11
    assert ds.sizes.tolist() == [4, 2, 5] and ds.doc_idx.tolist() == [0, 1, 2, 3]
    for i, d in enumerate(docs):
        assert ds[i].tolist() == d.tolist()
    assert ds.get(2, offset=1, length=3).tolist() == [8, 9, 10]
    assert ds.get(0, offset=2).tolist() == [3, 4]
    assert [a.tolist() for a in ds[0:2]] == [[1, 2, 3, 4], [5, 6]]
    assert not ds[0].flags.writeable  # a view of the memory map, not a copy


def test_megatron_sentence_level_documents(tmp_path: Path) -> None:
    """Several sequences per document (Megatron's sentence split) keep doc_idx."""
    with IndexedDatasetWriter(tmp_path / "m", np.int32) as w:
        w.add_item([1, 2])
        w.add_item([3])
        w.end_document()
        w.add_item([4, 5, 6])
        w.end_document()
    ds = IndexedDataset(tmp_path / "m")
    assert ds.doc_idx.tolist() == [0, 2, 3] and ds.num_documents == 2 and ds.dtype == np.int32
    assert ds.document(0).tolist() == [1, 2, 3] and ds.document(1).tolist() == [4, 5, 6]


def test_best_dtype() -> None:
    assert best_dtype(50257) == np.uint16 and best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32 and best_dtype(128256) == np.int32


def test_writer_removes_temps_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_ids_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([70000])
    assert list(tmp_path.iterdir()) == []


def test_stale_temps_of_dead_process_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".x.bin.tmp-999999999"
    stale.write_bytes(b"partial")
    with IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
        w.add_document([1])
    assert not stale.exists() and (tmp_path / "x.bin").exists()


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        IndexedDataset(tmp_path / "missing")
    _write_example(tmp_path / "ex")
    (tmp_path / "bad.bin").write_bytes(b"")
    (tmp_path / "bad.idx").write_bytes(b"NOTMAGIC" * 5)
    with pytest.raises(DataError, match="bad magic"):
        IndexedDataset(tmp_path / "bad")
    idx = (tmp_path / "ex.idx").read_bytes()
    (tmp_path / "trunc.idx").write_bytes(idx[:60])
    (tmp_path / "trunc.bin").write_bytes((tmp_path / "ex.bin").read_bytes())
    with pytest.raises(DataError, match="truncated"):
        IndexedDataset(tmp_path / "trunc")
    (tmp_path / "short.idx").write_bytes(idx)
    (tmp_path / "short.bin").write_bytes((tmp_path / "ex.bin").read_bytes()[:10])
    with pytest.raises(DataError, match="truncated"):
        IndexedDataset(tmp_path / "short")


def test_corrupt_document_index_is_a_user_error(tmp_path: Path) -> None:
    _write_example(tmp_path / "ex")
    idx = bytearray((tmp_path / "ex.idx").read_bytes())
    n = 3
    struct.pack_into("<q", idx, 34 + 12 * n + 8, 99)  # doc_idx[1]: a sequence that does not exist
    (tmp_path / "ex.idx").write_bytes(bytes(idx))
    with pytest.raises(DataError, match="ex.idx is corrupt: document 0"):
        IndexedDataset(tmp_path / "ex").document(0)
