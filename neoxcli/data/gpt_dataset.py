"""GPT-NeoX's training samples, built exactly as GPT-NeoX builds them.

Given the same data, seed, seq_length and sample count, ``GPTDataset`` yields
the same samples in the same order as GPT-NeoX: documents of a split are
repeated for enough epochs, shuffled with ``numpy.random.RandomState(seed)``,
cut into ``seq_length + 1``-token samples that overlap by one token, and the
samples are shuffled with the same generator. The index arrays are built with
vectorised numpy (no compiled helper needed) and cached as ``.npy`` files.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neoxcli.config.schema import DataConfig
from neoxcli.data.indexed import IndexedDataset
from neoxcli.errors import DataError

INT32_MAX = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- splits


def split_boundaries(split: str, size: int) -> list[int]:
    """GPT-NeoX's ``get_train_valid_test_split_``: four boundaries over ``size`` sequences.

    Weights are normalised, each part's count rounded, and every boundary after
    the first shifted by the rounding excess so that the last one is ``size``.
    """
    from neoxcli.config.derived import split_weights

    try:
        weights = split_weights(split)
    except ValueError as exc:
        raise DataError(str(exc), hint='use three weights such as "969,30,1"') from None
    total = sum(weights)
    weights = [w / total for w in weights]
    bounds = [0]
    for i, w in enumerate(weights):
        bounds.append(bounds[i] + int(round(w * float(size))))
    diff = bounds[-1] - size
    for i in range(1, len(bounds)):
        bounds[i] -= diff
    return bounds


def split_ranges(split: str, n_docs: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` sequence ranges of train, valid and test."""
    b = split_boundaries(split, n_docs)
    return [(b[0], b[1]), (b[1], b[2]), (b[2], b[3])]


def num_samples_for(
    train_iters: int, train_batch_size: int, eval_interval: int, eval_iters: int
) -> tuple[int, int, int]:
    """GPT-NeoX's (train, valid, test) sample counts for a run."""
    return (
        train_iters * train_batch_size,
        (train_iters // eval_interval + 1) * eval_iters * train_batch_size,
        eval_iters * train_batch_size,
    )


def weighted_num_samples(weights: Sequence[float], num_samples: int) -> tuple[list[float], list[int]]:
    """Normalised weights and ``ceil(num_samples * weight * 1.005)`` samples per dataset."""
    total = float(sum(weights))
    if total <= 0:
        raise DataError("data weights must add up to more than 0")
    norm = [w / total for w in weights]
    return norm, [int(math.ceil(num_samples * w * 1.005)) for w in norm]


# --------------------------------------------------------------------------- index arrays


def num_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest e >= 1 with ``(e * tokens_per_epoch - 1) // seq_length >= num_samples``."""
    if tokens_per_epoch <= 0:
        raise DataError(
            "the dataset split has no tokens", hint="check the split and that the data is not empty"
        )
    # (e*T - 1) // seq >= n  <=>  e*T >= n*seq + 1
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def build_doc_idx(documents: np.ndarray, epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """The split's document ids repeated ``epochs`` times, int32, shuffled once by ``rng``."""
    doc_idx = np.tile(np.asarray(documents, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, epochs: int, tokens_per_epoch: int
) -> np.ndarray:
    """``(num_samples + 1, 2)`` rows of [position in doc_idx, offset in that document].

    Sample ``s`` starts at token ``s * seq_length`` of the doc_idx stream and its
    last token is the next sample's first, so each boundary is found with one
    ``searchsorted`` over the cumulative document lengths. A boundary that falls
    exactly at a document's end stays on that document's last token and empty
    documents are stepped over, as in GPT-NeoX's walk.
    """
    n = (epochs * tokens_per_epoch - 1) // seq_length
    lengths = np.asarray(sizes)[doc_idx]
    cum = np.zeros(len(doc_idx) + 1, dtype=np.int64)
    np.cumsum(lengths, dtype=np.int64, out=cum[1:])
    big = 2 * (n + 1) >= INT32_MAX or len(doc_idx) >= INT32_MAX
    out = np.empty((n + 1, 2), dtype=np.int64 if big else np.int32)
    out[0] = (0, 0)
    chunk = 1 << 22
    for lo in range(1, n + 1, chunk):
        hi = min(n + 1, lo + chunk)
        pos = np.arange(lo, hi, dtype=np.int64) * seq_length
        k = np.searchsorted(cum, pos, side="right") - 1
        out[lo:hi, 0] = k
        out[lo:hi, 1] = pos - cum[k]
    return out


def build_shuffle_idx(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of ``range(size)`` drawn from ``rng`` (uint32 unless too large)."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    idx = np.arange(size, dtype=dtype)
    rng.shuffle(idx)
    return idx


def build_index_mappings(
    sizes: np.ndarray, documents: np.ndarray, num_samples: int, seq_length: int, seed: int
) -> dict[str, np.ndarray]:
    """doc_idx, sample_idx and shuffle_idx with GPT-NeoX's order of random draws."""
    documents = np.asarray(documents)
    tokens_per_epoch = int(np.asarray(sizes)[documents].sum(dtype=np.int64))
    epochs = num_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    doc_idx = build_doc_idx(documents, epochs, rng)
    sample_idx = build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
    shuffle_idx = build_shuffle_idx(sample_idx.shape[0] - 1, rng)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}


# --------------------------------------------------------------------------- caching


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX flock; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_or_load(
    paths: dict[str, Path],
    build: Callable[[], dict[str, np.ndarray]],
    rank: int = 0,
    timeout: float = 3600.0,
    poll: float = 0.2,
) -> dict[str, np.ndarray]:
    """Load cached arrays memory-mapped, building them once if missing.

    Rank 0 builds under a file lock (so concurrent runs sharing a cache do not
    race) and writes each file atomically, the last key of ``paths`` last; other
    ranks wait until every file exists and then map them.
    """

    def complete() -> bool:
        return all(p.is_file() for p in paths.values())

    def load() -> dict[str, np.ndarray]:
        return {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in paths.items()}

    if complete():
        return load()
    first = next(iter(paths.values()))
    first.parent.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        with _file_lock(first.with_name(first.name + ".lock")):
            if not complete():
                arrays = build()
                for key, path in paths.items():
                    _save_atomic(path, arrays[key])
        return load()
    deadline = time.monotonic() + timeout
    while not complete():
        if time.monotonic() > deadline:
            raise DataError(
                f"timed out after {timeout:.0f}s waiting for rank 0 to write {first.parent}",
                hint="rank 0 builds the sample index; check its log for an error",
            )
        time.sleep(poll)
    return load()


def _documents_array(documents: tuple[int, int] | range | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(documents, tuple) and len(documents) == 2:
        return np.arange(documents[0], documents[1], dtype=np.int32)
    if isinstance(documents, range):
        return np.arange(documents.start, documents.stop, documents.step, dtype=np.int32)
    return np.asarray(documents, dtype=np.int32)


def cache_key(
    indexed: IndexedDataset, documents: np.ndarray, num_samples: int, seq_length: int, seed: int
) -> str:
    """A short hash of everything the index arrays depend on."""
    h = hashlib.sha1()
    h.update(os.path.abspath(indexed.prefix).encode())
    h.update(f"|{len(indexed)}|{indexed.num_tokens}|{num_samples}|{seq_length}|{seed}|".encode())
    docs = np.ascontiguousarray(documents, dtype=np.int32)
    if len(docs) and np.array_equal(docs, np.arange(docs[0], docs[0] + len(docs), dtype=np.int32)):
        h.update(f"range:{docs[0]}:{docs[0] + len(docs)}".encode())
    else:
        h.update(docs.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- datasets


class GPTDataset:
    """Samples of ``seq_length + 1`` tokens (int64) from a range of sequences.

    ``ds[i]`` is GPT-NeoX's sample ``i``: inputs are ``ds[i][:-1]``, labels
    ``ds[i][1:]``. ``len(ds)`` is every sample the epochs hold (at least the
    ``num_samples`` requested), as in GPT-NeoX.
    """

    def __init__(
        self,
        indexed: IndexedDataset,
        documents: tuple[int, int] | range | np.ndarray | Sequence[int],
        num_samples: int,
        seq_length: int,
        seed: int = 1234,
        cache_dir: Path | str | None = None,
        name: str = "train",
        rank: int = 0,
        label_indexed: IndexedDataset | None = None,
    ) -> None:
        self.indexed = indexed
        self.name = name
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.label_indexed = label_indexed
        docs = _documents_array(documents)
        if len(docs) == 0:
            raise DataError(f"{name}: no documents in {indexed.prefix}")
        if docs.min() < 0 or docs.max() >= len(indexed):
            raise DataError(
                f"{name}: document ids out of range for {indexed.prefix} ({len(indexed)} sequences)"
            )
        if label_indexed is not None and not np.array_equal(label_indexed.sizes, indexed.sizes):
            raise DataError(f"label dataset {label_indexed.prefix} does not match {indexed.prefix} in sizes")
        self.documents = docs

        def build() -> dict[str, np.ndarray]:
            return build_index_mappings(indexed.sizes, docs, self.num_samples, self.seq_length, self.seed)

        if cache_dir is None:
            arrays = build()
        else:
            key = cache_key(indexed, docs, self.num_samples, self.seq_length, self.seed)
            stem = f"{Path(indexed.prefix).name}_{name}_{key}"
            base = Path(cache_dir)
            paths = {k: base / f"{stem}_{k}.npy" for k in ("doc_idx", "sample_idx", "shuffle_idx")}
            arrays = build_or_load(paths, build, rank=rank)
        # plain ndarray views of the (possibly memory-mapped) arrays: cheaper to index
        self.doc_idx: np.ndarray = arrays["doc_idx"].view(np.ndarray)
        self.sample_idx: np.ndarray = arrays["sample_idx"].view(np.ndarray)
        self.shuffle_idx: np.ndarray = arrays["shuffle_idx"].view(np.ndarray)
        self._len = int(min(self.shuffle_idx.shape[0], self.sample_idx.shape[0] - 1))
        # token-unit start of every sequence, so a read is one slice of the .bin map
        self._starts = np.asarray(indexed.pointers) // indexed.dtype.itemsize
        self._sizes = indexed.sizes

    def __len__(self) -> int:
        return self._len

    def _read(self, source: IndexedDataset, i: int) -> np.ndarray:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"sample {i} out of range for {self.name} ({self._len} samples)")
        j = int(self.shuffle_idx[i])
        f, off_f, last, off_l = self.sample_idx[j : j + 2].ravel().tolist()
        data = source._bin_map
        starts = self._starts
        doc_idx = self.doc_idx
        if f == last:
            s = int(starts[doc_idx[f]]) + off_f
            return data[s : s + off_l - off_f + 1].astype(np.int64)
        docs = doc_idx[f : last + 1]
        st = starts[docs].tolist()
        sz = self._sizes[docs].tolist()
        out = np.empty(self.seq_length + 1, dtype=np.int64)
        n = sz[0] - off_f
        out[:n] = data[st[0] + off_f : st[0] + sz[0]]
        pos = n
        for k in range(1, len(st) - 1):
            n = sz[k]
            out[pos : pos + n] = data[st[k] : st[k] + n]
            pos += n
        out[pos : pos + off_l + 1] = data[st[-1] : st[-1] + off_l + 1]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self._read(self.indexed, int(i))

    def labels(self, i: int) -> np.ndarray | None:
        """The label dataset's tokens for sample ``i`` (-100 masks the loss), if any."""
        if self.label_indexed is None:
            return None
        return self._read(self.label_indexed, int(i))


def build_blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """GPT-NeoX's largest-deficit rule: for sample i pick argmax ``w[d]*max(i,1) - used[d]``.

    Returns (dataset index per sample, sample index within that dataset). Ties
    go to the lowest dataset index, as in GPT-NeoX.
    """
    w = [float(x) for x in np.asarray(weights, dtype=np.float64)]
    nd = len(w)
    which = np.zeros(size, dtype=np.uint8 if nd < 255 else np.int32)
    within = np.zeros(size, dtype=np.int64)
    used = [0] * nd
    if nd == 1:
        within[:] = np.arange(size)
        return which, within
    rng_d = range(1, nd)
    for i in range(size):
        x = float(i) if i > 1 else 1.0
        best = 0
        err = w[0] * x - used[0]
        for d in rng_d:
            e = w[d] * x - used[d]
            if e > err:
                err = e
                best = d
        which[i] = best
        within[i] = used[best]
        used[best] += 1
    return which, within


class BlendableDataset:
    """Several datasets mixed by weight with GPT-NeoX's largest-deficit rule."""

    def __init__(
        self,
        datasets: Sequence[Any],
        weights: Sequence[float],
        size: int | None = None,
        cache_dir: Path | str | None = None,
        rank: int = 0,
    ) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise DataError("need one weight per dataset and at least one dataset")
        w = np.asarray(weights, dtype=np.float64)
        if w.sum() <= 0 or (w < 0).any():
            raise DataError("data weights must be >= 0 and not all zero")
        self.weights = w / w.sum()
        self.datasets = list(datasets)
        self.size = int(sum(len(d) for d in datasets) if size is None else size)

        def build() -> dict[str, np.ndarray]:
            which, within = build_blending_indices(self.weights, self.size)
            return {"dataset_index": which, "dataset_sample_index": within}

        if cache_dir is None:
            arrays = build()
        else:
            h = hashlib.sha1(self.weights.tobytes() + f"|{self.size}".encode()).hexdigest()[:16]
            base = Path(cache_dir)
            paths = {k: base / f"blend_{h}_{k}.npy" for k in ("dataset_index", "dataset_sample_index")}
            arrays = build_or_load(paths, build, rank=rank)
        self.dataset_index: np.ndarray = arrays["dataset_index"].view(np.ndarray)
        self.dataset_sample_index: np.ndarray = arrays["dataset_sample_index"].view(np.ndarray)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> np.ndarray:
        d = self.datasets[int(self.dataset_index[i])]
        # the 1.005 margin normally suffices; GPT-NeoX wraps around when it does not
        return d[int(self.dataset_sample_index[i]) % len(d)]

    def labels(self, i: int) -> np.ndarray | None:
        """The label tokens of sample ``i`` from its dataset's label file, if it has one."""
        d = self.datasets[int(self.dataset_index[i])]
        read = getattr(d, "labels", None)
        return None if read is None else read(int(self.dataset_sample_index[i]) % len(d))


# --------------------------------------------------------------------------- top level


def data_settings(data: Any = None, **fields: Any) -> DataConfig:
    """The data section as a ``DataConfig``, from one, a dict or any object with its attributes.

    Library callers can pass plain values; the training config passes its own section.
    """
    names = DataConfig.model_fields
    unknown = set(fields) - set(names)
    if unknown:
        raise TypeError(f"unknown data settings: {', '.join(sorted(unknown))}")
    if isinstance(data, DataConfig):
        values = data.model_dump()
    elif isinstance(data, dict):
        values = {k: v for k, v in data.items() if k in names}
    else:
        values = {k: getattr(data, k) for k in names if data is not None and hasattr(data, k)}
    values.update(fields)
    if values.get("split") is None:
        values["split"] = "969,30,1"
    return DataConfig(**values)


_OPENED: dict[str, IndexedDataset] = {}
_CHECKED: set[tuple[str, int]] = set()


def open_indexed(prefix: str) -> IndexedDataset:
    """Open (once per process) the dataset at ``prefix``."""
    key = os.path.abspath(prefix)
    if key not in _OPENED:
        _OPENED[key] = IndexedDataset(prefix)
    return _OPENED[key]


def open_training_data(prefix: str, key: str, vocab_size: int | None) -> IndexedDataset:
    """Open a dataset to train on: it must hold tokens, all of them ids the model's embedding has.

    An empty dataset would otherwise become a split "with no tokens" and an id
    past the embedding an ``IndexError`` deep in the model, both naming neither
    the file nor the document. The id check is one max over the memory-mapped
    data per dataset and process.
    """
    ds = open_indexed(prefix)
    if ds.num_tokens == 0:
        raise DataError(
            f"the training dataset {prefix} ({key}) is empty: {ds.num_documents} documents, 0 tokens",
            hint="check the input given to `neox prepare` (`neox prepare inspect` shows a dataset)",
        )
    if vocab_size is None or (os.path.abspath(prefix), vocab_size) in _CHECKED:
        return ds
    info = np.iinfo(ds.dtype) if ds.dtype.kind in "iu" else None
    if info is None or info.max >= vocab_size or info.min < 0:
        bad = ds.first_token_outside(vocab_size)
        if bad is not None:
            doc, pos, token = bad
            raise DataError(
                f"dataset {prefix} ({key}): document {doc} holds token id {token} at position {pos}, "
                f"outside the model's vocabulary of {vocab_size} (padded)",
                hint="the data was prepared with another tokenizer: prepare it again with this run's "
                "tokenizer_type/vocab_file, or set those to the tokenizer it was prepared with",
            )
    _CHECKED.add((os.path.abspath(prefix), vocab_size))
    return ds


def build_train_valid_test(
    data: Any = None,
    seq_length: int = 2048,
    seed: int = 1234,
    train_samples: int = 0,
    valid_samples: int = 0,
    test_samples: int = 0,
    cache_dir: Path | str | None = None,
    rank: int = 0,
    barrier: Callable[[], Any] | None = None,
    vocab_size: int | None = None,
    **fields: Any,
) -> tuple[Any | None, Any | None, Any | None]:
    """Train/valid/test datasets as GPT-NeoX builds them (``None`` where empty).

    ``data`` (a DataConfig, dict or any object) and/or keyword ``fields`` carry
    GPT-NeoX's keys: either ``data_path`` + ``split`` (one dataset cut into
    contiguous ranges of sequences) or ``train/valid/test_data_paths`` with
    optional ``*_data_weights`` (each path a whole dataset; several are blended,
    each asked for ``ceil(samples * weight * 1.005)`` samples). With ``barrier``
    (a collective), rank 0 writes the index caches first and the other ranks
    map them after the barrier; without it they poll for the files. With
    ``vocab_size`` (the padded embedding size) every token id is checked to be
    below it, and an empty dataset is refused naming its file.
    """
    spec = data_settings(data, **fields)
    args = (
        spec,
        seq_length,
        seed,
        (int(train_samples), int(valid_samples), int(test_samples)),
        cache_dir,
        rank,
        vocab_size,
    )
    if barrier is None:
        return _build_splits(*args)
    if rank == 0:
        try:
            return _build_splits(*args)
        finally:
            barrier()
    barrier()
    return _build_splits(*args)


def _build_splits(
    spec: DataConfig,
    seq_length: int,
    seed: int,
    counts: tuple[int, int, int],
    cache_dir: Path | str | None,
    rank: int,
    vocab_size: int | None = None,
) -> tuple[Any | None, Any | None, Any | None]:
    if spec.train_data_paths:
        out: list[Any | None] = []
        lists = (spec.train_data_paths, spec.valid_data_paths, spec.test_data_paths)
        wlists = (spec.train_data_weights, spec.valid_data_weights, spec.test_data_weights)
        for kind, paths, weights, n in zip(("train", "valid", "test"), lists, wlists, counts, strict=True):
            if not paths or n <= 0:
                out.append(None)
                continue
            weights = list(weights) if weights else [1.0] * len(paths)
            if len(weights) != len(paths):
                raise DataError(f"{kind}_data_weights has {len(weights)} entries for {len(paths)} paths")
            norm, per = weighted_num_samples(weights, n)
            parts = []
            for i, (path, k) in enumerate(zip(paths, per, strict=True)):
                ds = open_training_data(path, f"{kind}_data_paths", vocab_size)
                label = None
                if kind == "train" and spec.label_data_paths:
                    label = open_indexed(spec.label_data_paths[i])
                parts.append(
                    GPTDataset(ds, (0, len(ds)), k, seq_length, seed, cache_dir, f"{kind}_{i}", rank, label)
                )
            out.append(BlendableDataset(parts, norm, cache_dir=cache_dir, rank=rank))
        return out[0], out[1], out[2]
    if not spec.data_path:
        raise DataError(
            "no training data configured",
            hint="set data_path (with split) or train_data_paths, or data_preset to prepare one",
        )
    ds = open_training_data(spec.data_path, "data_path", vocab_size)
    label = open_indexed(spec.label_data_paths[0]) if spec.label_data_paths else None
    result: list[Any | None] = []
    for name, (lo, hi), n in zip(
        ("train", "valid", "test"), split_ranges(spec.split, len(ds)), counts, strict=True
    ):
        if hi > lo and n > 0:
            result.append(GPTDataset(ds, (lo, hi), n, seq_length, seed, cache_dir, name, rank, label))
        else:
            result.append(None)
    return result[0], result[1], result[2]
