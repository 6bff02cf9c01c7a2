"""Tokenize documents into GPT-NeoX mmap datasets (the engine behind ``neox prepare``).

A reader thread parses inputs while the main thread encodes batches (the
tokenizers library's own threads do the parallel work) and appends them to one
``IndexedDatasetWriter`` per JSON key. With ``--ftfy`` or a pure-Python
tokenizer, ``workers > 1`` uses worker processes instead. Nothing here prints:
progress goes to an optional callback so the CLI can draw it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neoxcli.data.indexed import IndexedDatasetWriter, best_dtype
from neoxcli.data.readers import BadInput, InputFile, Record, expand_inputs, input_size, iter_records
from neoxcli.data.tokenizer import CharLevelTokenizer, Tokenizer, TokenizerSpec, rebuild
from neoxcli.errors import DataError

OnBad = Literal["skip", "fail"]

#: texts longer than this are cut at safe points and encoded in parallel pieces
CHUNK_CHARS = 1 << 14
_CUT = re.compile(r"(?<=\S\n)(?=[!-~])")


@dataclass
class Progress:
    """A snapshot for progress displays."""

    documents: int = 0
    tokens: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bad: int = 0
    empty: int = 0
    elapsed: float = 0.0
    source: str = ""


@dataclass
class OutputStats:
    """One written dataset (one per JSON key)."""

    key: str
    prefix: str
    documents: int = 0
    tokens: int = 0
    empty: int = 0


@dataclass
class PrepareResult:
    """What a preparation produced, for the closing summary."""

    outputs: list[OutputStats]
    documents_read: int = 0
    bad: int = 0
    bad_examples: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    dtype: str = "uint16"
    #: archive members holding nothing we read, by suffix (``.png``, ``.zip``, ``no suffix``)
    skipped_members: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outputs)

    @property
    def documents(self) -> int:
        return sum(o.documents for o in self.outputs)


def output_prefix_for(output_prefix: str | os.PathLike[str], key: str) -> str:
    """GPT-NeoX's naming: ``{output_prefix}_{key}_document``."""
    return f"{os.fspath(output_prefix)}_{key}_document"


def split_text(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut a long text after ``"<non-space>\\n"`` before a printable ASCII character.

    Byte-level BPE pre-tokenizers never join a token across such a point, so the
    pieces encode to exactly the ids of the whole text.
    """
    if len(text) <= chunk_chars:
        return [text]
    pieces = []
    start = 0
    n = len(text)
    while n - start > chunk_chars:
        m = _CUT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def _split_bytes_safe(text: str, chunk_chars: int) -> list[str]:
    """For byte tokenizers any character boundary is safe."""
    return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)] or [text]


def encode_texts(
    tok: Tokenizer,
    texts: Sequence[str],
    append_eod: bool,
    use_ftfy: bool = False,
    chunk_chars: int = CHUNK_CHARS,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode non-empty texts → (concatenated ids as int64, tokens per text incl. EOD)."""
    if use_ftfy:
        import ftfy

        texts = [ftfy.fix_text(t) for t in texts]
    eod = tok.eod_id
    if append_eod and eod is None:
        raise DataError(f"--append-eod: {tok.name} has no end-of-document token")
    if isinstance(tok, CharLevelTokenizer):
        encoded = [t.encode("utf-8") for t in texts]
        extra = 1 if append_eod else 0
        sizes = np.fromiter((len(b) + extra for b in encoded), dtype=np.int64, count=len(encoded))
        sep = bytes([eod]) if append_eod and eod is not None and eod < 256 else b""
        joined = sep.join(encoded) + sep if sep else b"".join(encoded)
        return np.frombuffer(joined, dtype=np.uint8).astype(np.int64), sizes
    owners: list[int] = []
    pieces: list[str] = list(texts)
    if texts and tok.split_points_safe() and max(map(len, texts)) > chunk_chars:
        pieces = []
        for i, t in enumerate(texts):
            parts = split_text(t, chunk_chars) if len(t) > chunk_chars else [t]
            pieces.extend(parts)
            owners.extend([i] * len(parts))
    bulk = tok.encode_flat(pieces)
    if bulk is not None:
        flat, piece_sizes = bulk
    else:
        ids = tok.encode_batch(pieces)
        piece_sizes = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(piece_sizes.sum()))
    if len(pieces) == len(texts):
        sizes = piece_sizes
    else:
        sizes = np.zeros(len(texts), dtype=np.int64)
        np.add.at(sizes, np.asarray(owners, dtype=np.int64), piece_sizes)
    if append_eod:
        # one [eod] after the last token of every text, inserted in one vectorised pass
        flat = np.insert(flat, np.cumsum(sizes), eod)
        sizes = sizes + 1
    return flat, sizes


# ------------------------------------------------------------------ worker processes

_WORKER_TOK: Tokenizer | None = None
#: how long a failed run waits for the worker pool to wind down before it moves on
POOL_STOP_SECONDS = 5.0


def _worker_init(spec: TokenizerSpec) -> None:
    global _WORKER_TOK
    # Ctrl-C reaches the whole process group. Only the main process may act on it: a
    # worker dying of KeyboardInterrupt mid-reply leaves half a message in the result
    # pipe, and the pool's shutdown then waits on that pipe forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOK = rebuild(spec)


def _worker_encode(args: tuple[list[list[str]], bool, bool]) -> list[tuple[np.ndarray, np.ndarray]]:
    per_key, append_eod, use_ftfy = args
    assert _WORKER_TOK is not None
    return [encode_texts(_WORKER_TOK, texts, append_eod, use_ftfy) for texts in per_key]


@contextlib.contextmanager
def _worker_pool(workers: int, spec: TokenizerSpec) -> Iterator[Any]:
    """A pool of encoding processes that an error or an interrupt stops at once.

    ``Pool.terminate`` can wait forever when a worker was killed (a signal sent to
    the whole process group) while sending a reply or holding a queue lock, so
    after a failure the workers are killed and the pool gets a few seconds to wind
    down; the output files are then removed as usual.
    """
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(spec,))
    try:
        yield pool
    except BaseException:
        for proc in getattr(pool, "_pool", ()):
            proc.kill()
        stopper = threading.Thread(target=pool.terminate, name="neox-prepare-pool-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=POOL_STOP_SECONDS)
        raise
    pool.terminate()


# ------------------------------------------------------------------ the pipeline


@dataclass
class _Batch:
    per_key: list[list[str]]
    empty: list[int]
    docs: int
    bad: list[BadInput]
    pos: int
    source: str


def _batches(
    records: Iterable[Record | BadInput],
    nkeys: int,
    batch_bytes: int,
    max_docs: int | None,
    position: Callable[[], tuple[int, str]],
) -> Iterator[_Batch]:
    per_key: list[list[str]] = [[] for _ in range(nkeys)]
    empty = [0] * nkeys
    bad: list[BadInput] = []
    size = 0
    docs = 0
    total = 0
    for rec in records:
        if isinstance(rec, BadInput):
            bad.append(rec)
            continue
        if max_docs is not None and total >= max_docs:
            break
        total += 1
        docs += 1
        for k, t in enumerate(rec.texts):
            if t:
                per_key[k].append(t)
                size += len(t)
            else:
                empty[k] += 1
        if size >= batch_bytes or bad:
            pos, src = position()
            yield _Batch(per_key, empty, docs, bad, pos, src)
            per_key, empty, bad, size, docs = [[] for _ in range(nkeys)], [0] * nkeys, [], 0, 0
    pos, src = position()
    yield _Batch(per_key, empty, docs, bad, pos, src)


def _prefetch(it: Iterator[_Batch], depth: int = 4) -> Iterator[_Batch]:
    """Run ``it`` in a thread so parsing overlaps encoding."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run() -> None:
        try:
            for b in it:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    t = threading.Thread(target=run, name="neox-prepare-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=0.5)  # a reader blocked on a pipe is a daemon; do not wait for it


def tokenize_records(
    records: Iterable[Record | BadInput],
    prefixes: Sequence[str],
    keys: Sequence[str],
    tokenizer: Tokenizer,
    *,
    append_eod: bool = False,
    ftfy: bool = False,
    workers: int = 1,
    on_bad: OnBad = "fail",
    max_docs: int | None = None,
    bytes_total: int = 0,
    position: Callable[[], tuple[int, str]] | None = None,
    progress: Callable[[Progress], None] | None = None,
    batch_bytes: int = 1 << 20,
    dtype: np.dtype | None = None,
) -> PrepareResult:
    """Encode ``records`` into one dataset per key; files appear only on success."""
    if on_bad not in ("skip", "fail"):
        raise DataError(f"--on-bad must be skip or fail, not {on_bad!r}")
    workers = max(1, int(workers))
    dt = np.dtype(dtype) if dtype is not None else best_dtype(tokenizer.vocab_size)
    outputs = [OutputStats(k, p) for k, p in zip(keys, prefixes, strict=True)]
    result = PrepareResult(outputs, dtype=str(dt))
    prog = Progress(bytes_total=bytes_total)
    t0 = time.perf_counter()
    pos_fn = position or (lambda: (0, ""))
    batches = _prefetch(_batches(records, len(keys), batch_bytes, max_docs, pos_fn))
    use_pool = workers > 1 and (
        ftfy or not (tokenizer.native_parallel or isinstance(tokenizer, CharLevelTokenizer))
    )
    if not use_pool:
        # the tokenizers thread pool reads this once, at its first parallel call
        os.environ["RAYON_NUM_THREADS"] = str(workers)

    def handle_bad(batch: _Batch) -> None:
        for bad in batch.bad:
            if on_bad == "fail":
                raise DataError(str(bad), hint="fix the input, or pass --on-bad skip to skip bad records")
            result.bad += 1
            if len(result.bad_examples) < 5:
                result.bad_examples.append(str(bad))

    def write(
        batch: _Batch, encoded: list[tuple[np.ndarray, np.ndarray]], writers: list[IndexedDatasetWriter]
    ) -> None:
        for k, (flat, sizes) in enumerate(encoded):
            out = outputs[k]
            out.empty += batch.empty[k]
            nz = sizes > 0
            out.empty += int((~nz).sum())
            if not nz.all():
                sizes = sizes[nz]
            if len(sizes):
                if flat.size and (int(flat.max()) > np.iinfo(dt).max or int(flat.min()) < np.iinfo(dt).min):
                    raise DataError(
                        f"token id {int(flat.max())} does not fit {dt}; the tokenizer vocabulary is larger"
                    )
                writers[k].add_concatenated(flat, sizes)
            out.documents += len(sizes)
            out.tokens += int(flat.size)
        result.documents_read += batch.docs
        prog.documents = result.documents_read
        prog.tokens = result.tokens
        prog.bytes_done = batch.pos
        prog.bad = result.bad
        prog.empty = sum(o.empty for o in outputs)
        prog.elapsed = time.perf_counter() - t0
        prog.source = batch.source
        if progress is not None:
            progress(prog)

    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(IndexedDatasetWriter(p, dt)) for p in prefixes]
        if not use_pool:
            for batch in batches:
                handle_bad(batch)
                encoded = [encode_texts(tokenizer, texts, append_eod, ftfy) for texts in batch.per_key]
                write(batch, encoded, writers)
        else:
            pool = stack.enter_context(_worker_pool(workers, tokenizer.spec))
            pending: deque[tuple[_Batch, Any]] = deque()
            for batch in batches:
                handle_bad(batch)
                pending.append(
                    (batch, pool.apply_async(_worker_encode, ((batch.per_key, append_eod, ftfy),)))
                )
                while len(pending) > 2 * workers:
                    b, r = pending.popleft()
                    write(b, r.get(), writers)
            while pending:
                b, r = pending.popleft()
                write(b, r.get(), writers)
    result.seconds = time.perf_counter() - t0
    result.bytes_read = prog.bytes_done
    return result


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    tokenizer: Tokenizer,
    jsonl_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    ftfy: bool = False,
    workers: int = 1,
    on_bad: OnBad = "fail",
    max_docs: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    batch_bytes: int = 1 << 20,
) -> PrepareResult:
    """Tokenize ``.jsonl``/``.json``/``.txt`` files (plain, ``.gz`` or ``.zst``), tar archives
    of them, or ``-`` into ``{output_prefix}_{key}_document.bin/.idx``, one dataset per key."""
    files = expand_inputs(inputs)
    keys = tuple(jsonl_keys) or ("text",)
    if len(set(keys)) != len(keys):
        raise DataError(f"duplicate --jsonl-keys {list(keys)}")
    prefixes = [output_prefix_for(output_prefix, k) for k in keys]
    sizes = [input_size(p) for p in files]
    state = {"done": 0, "file": None}
    skipped: Counter[str] = Counter()

    def records() -> Iterator[Record | BadInput]:
        for path, size in zip(files, sizes, strict=True):
            f = InputFile(path)
            state["file"] = f
            try:
                yield from iter_records(f, keys)
            finally:
                skipped.update(f.skipped)
                f.close()
                state["file"] = None
                state["done"] = int(state["done"]) + size

    def position() -> tuple[int, str]:
        f = state["file"]
        if isinstance(f, InputFile):
            return int(state["done"]) + f.position(), f.source
        return int(state["done"]), ""

    out_dir = Path(os.fspath(output_prefix)).parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, or no permission
        raise DataError(f"cannot create output directory {out_dir}: {exc.strerror or exc}") from None
    result = tokenize_records(
        records(),
        prefixes,
        keys,
        tokenizer,
        append_eod=append_eod,
        ftfy=ftfy,
        workers=workers,
        on_bad=on_bad,
        max_docs=max_docs,
        bytes_total=sum(sizes),
        position=position,
        progress=progress,
        batch_bytes=batch_bytes,
    )
    result.skipped_members = dict(skipped)
    return result


def skipped_members_note(counts: dict[str, int]) -> str:
    """One line naming the archive members that held nothing to read, so none vanish unnoticed."""
    if not counts:
        return ""
    total = sum(counts.values())
    kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total:,} archive member{'s' if total != 1 else ''} skipped (not .jsonl/.json/.txt): {kinds}"


def read_texts(
    inputs: Sequence[str | os.PathLike[str]], key: str = "text", max_docs: int | None = None
) -> Iterator[str]:
    """Texts of the inputs (bad records skipped), e.g. to train a tokenizer first."""
    n = 0
    for path in expand_inputs(inputs):
        f = InputFile(path)
        try:
            for rec in iter_records(f, (key,)):
                if isinstance(rec, Record):
                    yield rec.texts[0]
                    n += 1
                    if max_docs is not None and n >= max_docs:
                        return
        finally:
            f.close()


def ensure_output_absent(prefixes: Iterable[str], overwrite: bool) -> None:
    """Refuse to replace an existing dataset unless asked to, and never a directory of its name."""
    prefixes = list(prefixes)
    for p in prefixes:
        for ext in (".bin", ".idx"):
            if Path(p + ext).is_dir():
                raise DataError(
                    f"cannot write {p}{ext}: it is a directory",
                    hint="--overwrite replaces datasets, not directories: choose another output (-o)",
                )
    if overwrite:
        return
    for p in prefixes:
        if Path(p + ".bin").exists() or Path(p + ".idx").exists():
            raise DataError(
                f"{p}.bin/.idx already exists",
                hint="pass --overwrite to replace it, or choose another output (-o)",
            )
