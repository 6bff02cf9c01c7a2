"""Perplexity on text against a by-hand computation over the same windows, and the position limits.

The reference below builds each window's tokens by slicing the whole token
list and sums log-probabilities itself; the library streams tokens through a
bounded buffer. Both must agree for disjoint and strided windows, as one
stream and document by document.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from eval_tasks import sentence, write_checkpoint

from neoxcli.checkpoint import load_for_inference
from neoxcli.errors import NeoxError
from neoxcli.evaluation.perplexity import evaluate_text, open_source, windows

DOCS = [sentence(i, 10 + 17 * i) for i in range(5)]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ppl")
    model, tok, _ = load_for_inference(write_checkpoint(root / "run"))
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    yield model, tok, jsonl
    torch.set_num_threads(threads)


@torch.no_grad()
def reference(model: Any, seq: list[int], scored: list[bool], L: int, S: int) -> tuple[float, int]:
    """Sum of log p over scored targets; targets in blocks of S, each block given the L tokens before its end."""
    total, count = 0.0, 0
    for t0 in range(1, len(seq), S):
        t1 = min(t0 + S, len(seq))
        a = max(0, t1 - 1 - L)
        logp = torch.log_softmax(model(torch.tensor([seq[a : t1 - 1]]))[0].float(), -1)
        for t in range(t0, t1):
            if scored[t]:
                total += float(logp[t - 1 - a, seq[t]])
                count += 1
        assert t1 - 1 - a <= L
    return total, count


def by_hand(model: Any, tok: Any, L: int, S: int, per_document: bool) -> tuple[float, int]:
    eod = tok.eod_id
    if per_document:
        parts = [
            reference(model, [eod, *tok.encode(d)], [False] + [True] * len(tok.encode(d)), L, S) for d in DOCS
        ]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    seq, scored = [eod], [False]
    for i, d in enumerate(DOCS):
        if i:
            seq.append(eod)
            scored.append(False)
        ids = tok.encode(d)
        seq += ids
        scored += [True] * len(ids)
    return reference(model, seq, scored, L, S)


@pytest.mark.parametrize("per_document", [False, True], ids=["stream", "per-document"])
@pytest.mark.parametrize("L,S", [(32, 32), (32, 8), (64, 64), (24, 1)])
def test_matches_a_by_hand_computation(loaded: Any, per_document: bool, L: int, S: int) -> None:
    model, tok, jsonl = loaded
    row = evaluate_text(
        model, tok, [open_source(jsonl)], context_length=L, stride=S, per_document=per_document, batch_size=3
    )
    ll, n = by_hand(model, tok, L, S, per_document)
    assert row.tokens == n == sum(len(tok.encode(d)) for d in DOCS)
    assert row.nll == pytest.approx(-ll, rel=1e-9, abs=1e-6)
    text_bytes = sum(len(d.encode()) for d in DOCS)
    assert (row.bytes, row.chars, row.documents) == (text_bytes, sum(map(len, DOCS)), len(DOCS))
    assert row.words == sum(len(re.split(r"\s+", d)) for d in DOCS)
    assert row.bits_per_byte == pytest.approx(-ll / text_bytes / math.log(2))
    assert row.token_perplexity == pytest.approx(math.exp(-ll / n))
    assert row.word_perplexity == pytest.approx(math.exp(-ll / row.words))


def test_windows_score_every_token_once_with_enough_context() -> None:
    seq = list(range(100))
    for L, S in [(10, 10), (10, 3), (7, 1), (16, 5)]:
        seen = []
        for w in windows(((t, True) for t in seq), L, S):
            assert len(w.inputs) <= L
            for j, t in enumerate(w.targets):
                row = w.offset + j
                assert w.inputs[row] == t - 1  # the token just before the target
                seen.append(t)
                if t > L:
                    assert row + 1 >= min(L - S + 1, t)  # context of at least L - S + 1 tokens
        assert seen == seq[1:]


def test_plain_text_and_indexed_inputs(loaded: Any, tmp_path: Path) -> None:
    """A .txt file is one document; a .bin/.idx prefix gives the same numbers as the same documents in jsonl."""
    import numpy as np

    from neoxcli.data.indexed import IndexedDatasetWriter

    model, tok, jsonl = loaded
    txt = tmp_path / "one.txt"
    txt.write_text("\n".join(DOCS))
    row = evaluate_text(model, tok, [open_source(txt)], context_length=32)
    assert row.documents == 1 and row.bytes == txt.stat().st_size
    assert row.words == len(re.split(r"\s+", txt.read_text()))

    prefix = tmp_path / "docs_text_document"
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in DOCS:
            w.add_document(tok.encode(d) + [tok.eod_id])
    a = evaluate_text(model, tok, [open_source(str(prefix))], context_length=32, per_document=True)
    b = evaluate_text(model, tok, [open_source(jsonl)], context_length=32, per_document=True)
    assert (a.tokens, a.documents) == (b.tokens, b.documents)
    assert a.nll == pytest.approx(b.nll, rel=1e-9)


def test_alibi_extrapolates_and_learned_positions_refuse(tmp_path: Path) -> None:
    """ALiBi at 2x and 4x its training length gives finite numbers with a note; learned positions refuse."""
    alibi, tok, _ = load_for_inference(write_checkpoint(tmp_path / "alibi", pos_emb="alibi", seq_length=16))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    for L in (32, 64):
        row = evaluate_text(alibi, tok, [open_source(data)], context_length=L)
        assert math.isfinite(row.nll) and row.note and "ALiBi" in row.note
        ll, _ = by_hand(alibi, tok, L, L, per_document=False)
        assert row.nll == pytest.approx(-ll, rel=1e-9)
    learned, tok, _ = load_for_inference(
        write_checkpoint(tmp_path / "learned", pos_emb="learned", seq_length=16)
    )
    with pytest.raises(NeoxError, match="exceeds the model's 16 learned positions"):
        evaluate_text(learned, tok, [open_source(data)], context_length=32)
    assert evaluate_text(learned, tok, [open_source(data)], context_length=16).note is None


def test_bad_strides_are_refused(loaded: Any) -> None:
    model, tok, jsonl = loaded
    for stride in (0, -1, 33):
        with pytest.raises(NeoxError, match="--stride"):
            evaluate_text(model, tok, [open_source(jsonl)], context_length=32, stride=stride)
