"""GPT-NeoX's sample construction: index arrays, stitching, splits, blending, caching."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neoxcli.data.gpt_dataset import (
    BlendableDataset,
    GPTDataset,
    build_blending_indices,
    build_index_mappings,
    build_or_load,
    build_sample_idx,
    build_train_valid_test,
    num_epochs,
    num_samples_for,
    split_boundaries,
    split_ranges,
    weighted_num_samples,
)
from neoxcli.data.indexed import IndexedDataset, IndexedDatasetWriter
from neoxcli.errors import DataError


def _make(prefix: Path, sizes: list[int], seed: int = 0) -> IndexedDataset:
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for s in sizes:
            w.add_document(rng.integers(0, 60000, size=s))
    return IndexedDataset(prefix)


def _walk_reference(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, epochs: int, tpe: int
) -> np.ndarray:
    """GPT-NeoX's sample-index walk, one document at a time."""
    n = (epochs * tpe - 1) // seq_length
    out = [(0, 0)]
    d, off = 0, 0
    while len(out) <= n:
        remaining = seq_length + 1
        while remaining != 0:
            length = int(sizes[doc_idx[d]]) - off
            remaining -= length
            if remaining <= 0:
                off += remaining + length - 1
                remaining = 0
            else:
                d += 1
                off = 0
        out.append((d, off))
    return np.array(out)


def test_worked_example() -> None:
    sizes = np.array([4, 2, 5], dtype=np.int32)
    m = build_index_mappings(sizes, np.arange(3), num_samples=5, seq_length=3, seed=1234)
    assert m["doc_idx"].tolist() == [2, 1, 2, 0, 1, 0]
    assert m["sample_idx"].tolist() == [[0, 0], [0, 3], [1, 1], [2, 2], [3, 0], [3, 3], [5, 0], [5, 3]]
    assert sorted(m["shuffle_idx"].tolist()) == list(range(7))
    assert m["doc_idx"].dtype == np.int32


@pytest.mark.parametrize("seed", range(6))
def test_sample_idx_matches_walk_on_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=rng.integers(1, 60)).astype(np.int32)
    sizes[0] = max(sizes[0], 1)
    docs = np.arange(len(sizes))
    for seq in (1, 2, 7, 64):
        tpe = int(sizes.sum())
        ns = int(rng.integers(1, 200))
        e = num_epochs(tpe, seq, ns)
        doc_idx = np.random.RandomState(seed).permutation(np.tile(docs, e)).astype(np.int32)
        got = build_sample_idx(sizes, doc_idx, seq, e, tpe)
        ref = _walk_reference(sizes, doc_idx, seq, e, tpe)
        assert got.tolist() == ref.tolist()


def test_num_epochs_is_smallest() -> None:
    for tpe, seq, ns in [(11, 3, 5), (100, 7, 1), (5, 2048, 3), (2049, 2048, 1), (2048, 2048, 1)]:
        e = num_epochs(tpe, seq, ns)
        assert (e * tpe - 1) // seq >= ns
        assert e == 1 or ((e - 1) * tpe - 1) // seq < ns
    with pytest.raises(DataError):
        num_epochs(0, 4, 1)


def test_getitem_stitches_across_documents(tmp_path: Path) -> None:
    sizes = [5, 1, 0, 9, 3, 17, 2, 4]
    ds = _make(tmp_path / "d", sizes)
    seq = 6
    g = GPTDataset(ds, (0, len(ds)), num_samples=20, seq_length=seq, seed=7)
    stream = np.concatenate([ds.get(int(d)) for d in g.doc_idx]).astype(np.int64)
    epochs = len(g.doc_idx) // len(sizes)
    assert len(g) == (epochs * sum(sizes) - 1) // seq
    for i in range(len(g)):
        j = int(g.shuffle_idx[i])
        sample = g[i]
        assert sample.dtype == np.int64 and sample.shape == (seq + 1,)
        assert sample.tolist() == stream[j * seq : j * seq + seq + 1].tolist()
    with pytest.raises(IndexError):
        g[len(g)]


def test_split_boundaries_like_gpt_neox() -> None:
    assert split_boundaries("969,30,1", 1000) == [0, 969, 999, 1000]
    assert split_boundaries("1,1,1", 10) == [0, 4, 7, 10]  # rounding excess shifts every boundary
    assert split_boundaries("100", 7) == [0, 7, 7, 7]
    assert split_boundaries("8/1/1", 10) == [0, 8, 9, 10]
    assert split_ranges("949,50,1", 3) == [(0, 3), (3, 3), (3, 3)]
    with pytest.raises(DataError):
        split_boundaries("a,b", 3)


def test_sample_counts_and_weights() -> None:
    assert num_samples_for(100, 8, 50, 2) == (800, 48, 16)
    w, n = weighted_num_samples([3, 1], 1000)
    assert w == [0.75, 0.25] and n == [math.ceil(1000 * 0.75 * 1.005), math.ceil(1000 * 0.25 * 1.005)]


def _blend_reference(weights: list[float], size: int) -> list[int]:
    used = [0] * len(weights)
    out = []
    for i in range(size):
        errs = [w * max(i, 1) - u for w, u in zip(weights, used, strict=True)]
        d = int(np.argmax(errs))  # first maximum, like GPT-NeoX's strict ">"
        out.append(d)
        used[d] += 1
    return out


def test_blending_proportions() -> None:
    w = [0.5, 0.3, 0.2]
    which, within = build_blending_indices(w, 1000)
    assert which.tolist() == _blend_reference(w, 1000)
    counts = np.bincount(which, minlength=3)
    assert np.all(np.abs(counts - np.array(w) * 1000) <= 1)
    for d in range(3):
        assert within[which == d].tolist() == list(range(counts[d]))


def test_blendable_dataset_reads_members(tmp_path: Path) -> None:
    a = GPTDataset(_make(tmp_path / "a", [30] * 5, 1), (0, 5), 20, 4, 1)
    b = GPTDataset(_make(tmp_path / "b", [30] * 5, 2), (0, 5), 20, 4, 1)
    blend = BlendableDataset([a, b], [2, 1], size=30)
    assert len(blend) == 30
    for i in range(30):
        d = [a, b][int(blend.dataset_index[i])]
        assert blend[i].tolist() == d[int(blend.dataset_sample_index[i])].tolist()


def test_cache_is_reused_memory_mapped(tmp_path: Path) -> None:
    ds = _make(tmp_path / "d", [50, 20, 33, 7])
    cache = tmp_path / "cache"
    g1 = GPTDataset(ds, (0, 4), 30, 8, 1234, cache, "train")
    files = sorted(p.name for p in cache.glob("*.npy"))
    assert len(files) == 3
    g2 = GPTDataset(ds, (0, 4), 30, 8, 1234, cache, "train")
    assert isinstance(g2.sample_idx.base, np.memmap)
    assert all(g1[i].tolist() == g2[i].tolist() for i in range(len(g1)))
    GPTDataset(ds, (0, 4), 30, 8, 99, cache, "train")  # a new seed is a new cache entry
    assert len(list(cache.glob("*.npy"))) == 6


def test_build_or_load_other_ranks_wait(tmp_path: Path) -> None:
    paths = {"a": tmp_path / "c" / "a.npy"}
    got: dict[str, np.ndarray] = {}

    def waiter() -> None:
        got.update(build_or_load(paths, lambda: pytest.fail("rank 1 must not build"), rank=1, poll=0.01))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    build_or_load(paths, lambda: {"a": np.arange(5)}, rank=0)
    t.join(5)
    assert got["a"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="timed out"):
        build_or_load({"b": tmp_path / "c" / "b.npy"}, dict, rank=1, timeout=0.05, poll=0.01)


def test_build_train_valid_test_with_split(tmp_path: Path) -> None:
    _make(tmp_path / "d", [40] * 100)
    cfg = {"data_path": str(tmp_path / "d"), "split": "90,8,2"}
    train, valid, test = build_train_valid_test(cfg, 16, 1234, 200, 20, 5, tmp_path / "cache")
    assert train is not None and valid is not None and test is not None
    assert train.documents.tolist() == list(range(90)) and valid.documents.tolist() == list(range(90, 98))
    assert len(train) >= 200 and len(valid) >= 20 and len(test) >= 5
    assert train[0].shape == (17,)


def test_build_train_valid_test_with_weighted_paths(tmp_path: Path) -> None:
    _make(tmp_path / "a", [30] * 10, 1)
    _make(tmp_path / "b", [30] * 10, 2)

    class Cfg:
        train_data_paths = [str(tmp_path / "a"), str(tmp_path / "b")]
        train_data_weights = [3.0, 1.0]
        valid_data_paths = [str(tmp_path / "b")]
        test_data_paths = None

    train, valid, test = build_train_valid_test(Cfg(), 8, 1234, 100, 10, 10, None)
    assert test is None and isinstance(train, BlendableDataset)
    assert [d.num_samples for d in train.datasets] == [
        math.ceil(100 * 0.75 * 1.005),
        math.ceil(100 * 0.25 * 1.005),
    ]
    first = train.dataset_index[:100]
    assert abs(int((first == 0).sum()) - 75) <= 1
    assert valid is not None and valid[0].shape == (9,)


def test_no_data_is_a_user_error() -> None:
    with pytest.raises(DataError, match="no training data"):
        build_train_valid_test({}, 8, 1, 1, 1, 1, None)


def test_keyword_call_with_barrier_and_labels(tmp_path: Path) -> None:
    """The training loop's call: GPT-NeoX keys as keywords, a collective barrier, label data."""
    _make(tmp_path / "d", [40] * 20)
    with IndexedDatasetWriter(tmp_path / "lab", np.int32) as w:
        for _ in range(20):
            w.add_document(np.full(40, -100))
    calls: list[int] = []
    kw = dict(data_path=str(tmp_path / "d"), split="18,2,0", label_data_paths=[str(tmp_path / "lab")])
    train, valid, test = build_train_valid_test(
        seq_length=8,
        seed=1,
        train_samples=30,
        valid_samples=4,
        test_samples=0,
        cache_dir=tmp_path / "c",
        rank=0,
        barrier=lambda: calls.append(0),
        **kw,
    )
    assert calls == [0] and test is None and valid is not None
    labels = train.labels(0)
    assert labels is not None and labels.tolist() == [-100] * 9
    other, _, _ = build_train_valid_test(
        seq_length=8,
        seed=1,
        train_samples=30,
        valid_samples=4,
        test_samples=0,
        cache_dir=tmp_path / "c",
        rank=1,
        barrier=lambda: calls.append(1),
        **kw,
    )
    assert calls == [0, 1] and isinstance(other.sample_idx.base, np.memmap)
    assert other[3].tolist() == train[3].tolist()
    with pytest.raises(TypeError):
        build_train_valid_test(seq_length=8, datapath="x")
