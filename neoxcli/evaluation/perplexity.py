"""Perplexity, bits per byte, bits per character and word perplexity of a model on text files.

Inputs: plain text (one document per file), ``.jsonl`` (one document per line, its
``text`` field) or a ``.bin/.idx`` prefix (GPT-NeoX's tokenized format, one
document per entry, its trailing EOD dropped).

Each scored sequence starts with EOD, so every text token is predicted. In
*stream* mode the documents are one sequence, ``EOD d1 EOD d2 ...``, and windows
run across document boundaries; the separators give context but are not scored.
With ``per_document`` each document is its own sequence and no window crosses it.

Windows (``context_length`` L, ``stride`` S): the targets are cut into
consecutive blocks of S tokens; a block is scored by one forward over the (at
most) L tokens that end just before its last target. With S = L the model
inputs are disjoint (every token is scored once, the first of each block with
one token of context: the convention of lm-eval's rolling windows and of the
ALiBi paper's extrapolation tables); with S < L every token of a later block has
at least L - S + 1 tokens of context, as in Hugging Face's perplexity guide.

Only about L + S tokens and one window batch are held at a time, so memory does
not grow with the input. Metric sums run over the whole corpus before dividing:
token perplexity ``exp(nll / tokens)``, ``bits_per_byte = nll / (bytes ln 2)``
(UTF-8 bytes), ``bits_per_char = nll / (chars ln 2)``, word perplexity
``exp(nll / words)`` with words counted as lm-eval does (``re.split(r"\\s+", text)``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError, NeoxError

_CHUNK = 1 << 20  # characters of plain text tokenized at a time (cut at a newline)


@dataclass
class TextSource:
    """One input: what it is and how big (for the progress bar)."""

    path: Path
    kind: str  # "text", "jsonl" or "indexed"
    size: int
    label: str | None = None  # what the results call it (a preset's name), else the path


def open_source(name: str | Path) -> TextSource:
    """Check one ``--text`` entry exists and is not empty; which reader it needs."""
    from neoxcli.data.indexed import bin_path, dataset_exists, normalize_prefix

    path = Path(name)
    if path.suffix in (".bin", ".idx") or (not path.exists() and dataset_exists(path)):
        prefix = normalize_prefix(path)
        if not dataset_exists(prefix):
            raise DataError(f"--text {name}: {prefix}.bin/.idx not found")
        size = bin_path(prefix).stat().st_size
        if size == 0:
            raise DataError(f"--text {name}: the dataset is empty")
        return TextSource(Path(prefix), "indexed", size)
    if not path.is_file():
        raise DataError(f"--text {name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"--text {name}: the file is empty")
    return TextSource(path, "jsonl" if path.suffix == ".jsonl" else "text", size)


@dataclass
class Document:
    """One document's tokens and the counts its metrics divide by."""

    tokens: list[int]
    bytes: int
    chars: int
    words: int
    consumed: int  # bytes of the input read for it (progress)


def _counts(text: str) -> tuple[int, int, int]:
    return len(text.encode("utf-8")), len(text), len(re.split(r"\s+", text))


def _plain_text_document(path: Path, tokenizer: Any) -> Iterator[Document]:
    """A whole file as one document, tokenized in newline-aligned chunks (bounded memory).

    Cutting after a newline keeps the ids of GPT-2-style byte-level tokenizers
    unchanged; other tokenizers may merge differently across a cut, at worst one
    token per megabyte.
    """
    with open(path, encoding="utf-8", errors="strict", newline="") as f:
        rest = ""
        first = True
        while True:
            try:
                block = f.read(_CHUNK)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"--text {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            text = rest + block
            if not block:
                if text:
                    yield _text_part(text, tokenizer, first, last=True)
                return
            cut = text.rfind("\n", 0, len(text) - 1)
            if cut < 0:
                rest = text
                continue
            part, rest = text[: cut + 1], text[cut + 1 :]
            yield _text_part(part, tokenizer, first, last=False)
            first = False


def _text_part(text: str, tokenizer: Any, first: bool, last: bool) -> Document:
    """One chunk of a document; its word count adds up to the whole text's ``re.split`` count.

    Every earlier chunk ends with a newline, so a whitespace run at the start of
    this one continues a run already counted.
    """
    n_bytes, n_chars, n_words = _counts(text)
    if not first:
        n_words = len(re.findall(r"\s+", text)) - (1 if text[:1].isspace() else 0)
    return Document(list(tokenizer.encode(text)), n_bytes, n_chars, n_words, n_bytes)


def iter_documents(source: TextSource, tokenizer: Any) -> Iterator[Iterable[Document]]:
    """The documents of one input; each item is one document, possibly in several parts.

    A plain text file is one document read part by part as it is scored (consume
    each item before asking for the next), so its tokens are never all in memory.
    """
    if source.kind == "text":
        yield _plain_text_document(source.path, tokenizer)
        return
    if source.kind == "jsonl":
        with open(source.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise DataError(
                        f"--text {source.path}:{lineno} is not a JSON object with a 'text' field"
                    ) from None
                if not isinstance(text, str):
                    raise DataError(f"--text {source.path}:{lineno}: 'text' is not a string")
                n_bytes, n_chars, n_words = _counts(text)
                yield [Document(list(tokenizer.encode(text)), n_bytes, n_chars, n_words, len(line.encode()))]
        return
    from neoxcli.data.indexed import IndexedDataset

    data = IndexedDataset(source.path)
    eod = tokenizer.eod_id
    for d in range(data.num_documents):
        ids = [int(t) for t in data.document(d)]
        if ids and ids[-1] == eod:
            ids = ids[:-1]
        text = tokenizer.decode(ids)
        n_bytes, n_chars, n_words = _counts(text)
        yield [Document(ids, n_bytes, n_chars, n_words, len(ids) * data.dtype.itemsize)]


# --------------------------------------------------------------------------- windows


@dataclass
class Window:
    """One forward: ``inputs``; ``targets`` are predicted by rows ``offset ..`` of its logits."""

    inputs: list[int]
    targets: list[int]
    scored: list[bool]
    offset: int


def windows(items: Iterable[tuple[int, bool]], context_length: int, stride: int) -> Iterator[Window]:
    """Windows over a token sequence given as (token, scored) pairs; position 0 is context only."""
    if stride <= 0 or stride > context_length:
        raise ValueError(f"stride must be in 1..{context_length}, got {stride}")
    it = iter(items)
    toks: list[int] = []
    flags: list[bool] = []
    base = 0  # sequence index of toks[0]
    exhausted = False
    t0 = 1
    while True:
        want = t0 + stride
        while not exhausted and base + len(toks) < want:
            try:
                tok, flag = next(it)
            except StopIteration:
                exhausted = True
                break
            toks.append(tok)
            flags.append(flag)
        t1 = min(want, base + len(toks))
        if t1 <= t0:
            return
        start = max(0, t1 - 1 - context_length)
        yield Window(
            inputs=toks[start - base : t1 - 1 - base],
            targets=toks[t0 - base : t1 - base],
            scored=flags[t0 - base : t1 - base],
            offset=t0 - 1 - start,
        )
        t0 = t1
        drop = max(0, t0 - context_length - 1) - base
        if drop > 0:
            del toks[:drop], flags[:drop]
            base += drop


# --------------------------------------------------------------------------- the evaluation


def position_note(model_cfg: Any, context_length: int) -> str | None:
    """Refuse a context the model cannot represent; a note when it is past the trained length."""
    trained = model_cfg.seq_length
    if model_cfg.pos_emb == "learned" and context_length > model_cfg.max_positions:
        raise NeoxError(
            f"context length {context_length} exceeds the model's {model_cfg.max_positions} learned positions",
            hint=f"use --context-length {model_cfg.max_positions} or less",
        )
    if context_length <= trained:
        return None
    how = {
        "rotary": "rotary positions extrapolated (numerically defined, usually degrades)",
        "alibi": "ALiBi extrapolation",
        "sinusoidal": "sinusoidal positions extrapolated",
        "none": "no position encoding",
    }.get(model_cfg.pos_emb, f"{model_cfg.pos_emb} positions extrapolated")
    return f"beyond the trained length {trained}: {how}"


@dataclass
class PerplexityRow:
    source: str
    context_length: int
    stride: int
    mode: str
    documents: int
    tokens: int
    bytes: int
    chars: int
    words: int
    nll: float
    token_perplexity: float
    bits_per_byte: float
    bits_per_char: float
    word_perplexity: float
    windows: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sequence(
    docs: Iterable[Iterable[Document]], eod: int, counts: dict[str, int], per_document: bool
) -> Iterator[Iterator[tuple[int, bool]]]:
    """Scored sequences of (token, scored): one per document, or one stream."""

    def one(parts: Iterable[Document], lead: bool) -> Iterator[tuple[int, bool]]:
        if lead:
            yield eod, False
        counts["documents"] += 1
        for part in parts:
            for key in ("bytes", "chars", "words", "consumed"):
                counts[key] += getattr(part, key)
            counts["tokens"] += len(part.tokens)
            for t in part.tokens:
                yield t, True

    if per_document:
        for parts in docs:
            yield one(parts, lead=True)
        return

    def stream() -> Iterator[tuple[int, bool]]:
        yield eod, False
        for i, parts in enumerate(docs):
            if i:
                yield eod, False
            yield from one(parts, lead=False)

    yield stream()


def evaluate_text(
    model: Any,
    tokenizer: Any,
    sources: list[TextSource],
    *,
    context_length: int,
    stride: int | None = None,
    per_document: bool = False,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> PerplexityRow:
    """Score every token of ``sources`` (together) with windows of ``context_length`` / ``stride``."""
    import torch
    import torch.nn.functional as F

    stride = context_length if stride is None else stride
    if stride <= 0 or stride > context_length:
        raise NeoxError(f"--stride {stride} must be between 1 and the context length {context_length}")
    if tokenizer.eod_id is None:
        raise NeoxError(f"{tokenizer!r} has no end-of-text token to start each sequence with")
    note = position_note(model.cfg, context_length)
    device = next(model.parameters()).device
    counts = dict.fromkeys(("documents", "bytes", "chars", "words", "consumed", "tokens"), 0)
    nll = 0.0
    scored_tokens = 0
    n_windows = 0
    reported = 0

    def all_docs() -> Iterator[Iterable[Document]]:
        for s in sources:
            yield from iter_documents(s, tokenizer)

    def flush(batch: list[Window]) -> float:
        width = max(len(w.inputs) for w in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        for i, w in enumerate(batch):
            ids[i, : len(w.inputs)] = torch.as_tensor(w.inputs)
        with torch.inference_mode():
            logp = F.log_softmax(model(ids.to(device)).float(), dim=-1)
        total = 0.0
        for i, w in enumerate(batch):
            rows = logp[i, w.offset : w.offset + len(w.targets)]
            picked = rows.gather(1, torch.as_tensor(w.targets, device=device)[:, None]).squeeze(1)
            mask = torch.as_tensor(w.scored, device=device)
            total += float(picked[mask].double().sum())
        return total

    batch: list[Window] = []
    for seq in _sequence(all_docs(), tokenizer.eod_id, counts, per_document):
        for w in windows(seq, context_length, stride):
            if not any(w.scored):
                continue
            scored_tokens += sum(w.scored)
            batch.append(w)
            n_windows += 1
            if len(batch) == batch_size:
                nll -= flush(batch)
                batch = []
            if progress is not None and counts["consumed"] != reported:
                progress(counts["consumed"] - reported)
                reported = counts["consumed"]
    if batch:
        nll -= flush(batch)
    if progress is not None and counts["consumed"] != reported:
        progress(counts["consumed"] - reported)
    if scored_tokens == 0:
        raise DataError("the text holds no tokens to score")
    ln2 = math.log(2)
    return PerplexityRow(
        source=",".join(s.label or str(s.path) for s in sources),
        context_length=context_length,
        stride=stride,
        mode="per_document" if per_document else "stream",
        documents=counts["documents"],
        tokens=scored_tokens,
        bytes=counts["bytes"],
        chars=counts["chars"],
        words=counts["words"],
        nll=nll,
        token_perplexity=_exp(nll / scored_tokens),
        bits_per_byte=nll / max(counts["bytes"], 1) / ln2,
        bits_per_char=nll / max(counts["chars"], 1) / ln2,
        word_perplexity=_exp(nll / max(counts["words"], 1)),
        windows=n_windows,
        note=note,
    )


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")
