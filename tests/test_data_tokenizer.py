"""Tokenizer types: ids, round trips, GPT-NeoX's conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neoxcli.data.prepare import encode_texts, split_text
from neoxcli.data.tokenizer import EOD_TOKEN, PAD_TOKEN, build_tokenizer, train_bpe_tokenizer
from neoxcli.errors import DataError

SHARED = Path("/work/shared/data")
TEXT = "def f(x):\n    return x * 2  # héllo wörld ✓\n\nclass A:\n    pass\n"
CORPUS = [
    TEXT * 3,
    "The quick brown fox jumps over the lazy dog.\n" * 20,
    "import os\nprint(os.getcwd())\n" * 10,
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe_tokenizer(CORPUS, 300, path)
    return path


def test_char_level_like_gpt_neox() -> None:
    tok = build_tokenizer("CharLevelTokenizer")
    assert (tok.vocab_size, tok.eod_id, tok.pad_id) == (512, 0, 1)
    assert tok.encode("hé") == [104, 195, 169]
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_trained_bpe_has_special_tokens_and_round_trips(trained: Path) -> None:
    tok = build_tokenizer("HFTokenizer", trained)
    assert tok.eod_id == 0 and tok.pad_id == 1 and tok.vocab_size <= 300
    cfg = json.loads(trained.read_text())
    assert [t["content"] for t in cfg["added_tokens"]] == [EOD_TOKEN, PAD_TOKEN]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode_batch([TEXT, "x"]) == [tok.encode(TEXT), tok.encode("x")]
    assert not list(trained.parent.glob(".*tmp*"))


def test_gpt2_bpe_from_vocab_and_merges(trained: Path, tmp_path: Path) -> None:
    cfg = json.loads(trained.read_text())
    vocab = {k: v for k, v in cfg["model"]["vocab"].items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    merges = cfg["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    gpt2 = build_tokenizer("GPT2BPETokenizer", tmp_path / "vocab.json", tmp_path / "merges.txt")
    hf = build_tokenizer("HFTokenizer", trained)
    assert gpt2.encode(TEXT) == hf.encode(TEXT)
    assert gpt2.decode(gpt2.encode(TEXT)) == TEXT
    assert gpt2.eod_id == 0
    with pytest.raises(DataError, match="merge-file"):
        build_tokenizer("GPT2BPETokenizer", tmp_path / "vocab.json", None)


@pytest.mark.skipif(
    not (SHARED / "gpt2-tokenizer.json").exists(), reason="needs /work/shared/data/gpt2-tokenizer.json"
)
def test_gpt2_json_ids_and_parallel_pieces() -> None:
    tok = build_tokenizer("HFTokenizer", SHARED / "gpt2-tokenizer.json")
    assert (tok.vocab_size, tok.eod_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    text = (SHARED / "tinyshakespeare.txt").read_text()[:300_000]
    pieces = split_text(text, 4096)
    assert len(pieces) > 10 and "".join(pieces) == text
    flat, sizes = encode_texts(tok, [text], append_eod=True, chunk_chars=4096)
    assert flat.tolist() == tok.encode(text) + [50256] and sizes.tolist() == [flat.size]


@pytest.mark.skipif(not (SHARED / "neox-20b-tokenizer.json").exists(), reason="needs the 20B tokenizer file")
def test_neox_20b_tokenizer_pieces_match_whole() -> None:
    tok = build_tokenizer("HFTokenizer", SHARED / "neox-20b-tokenizer.json")
    assert tok.eod_id == 0 and tok.vocab_size >= 50277
    text = (SHARED / "enwik8_first100.txt").read_text(errors="replace")
    flat, _ = encode_texts(tok, [text], append_eod=False, chunk_chars=512)
    assert flat.tolist() == tok.encode(text)


def test_unknown_type_suggests() -> None:
    with pytest.raises(DataError) as e:
        build_tokenizer("CharLevelTokeniser")
    assert "CharLevelTokenizer" in (e.value.hint or "")


def test_hub_tokenizer_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError, match="cannot fetch tokenizer.json"):
        build_tokenizer("SomeOrg/some-model-that-is-not-cached")


def test_tiktoken_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if it were not installed
    with pytest.raises(DataError, match="pip install tiktoken|tiktoken package"):
        build_tokenizer("TiktokenTokenizer", None)


def _write_ranks(path: Path) -> None:
    """A tiktoken ranks file: every byte, then three merges (he, ll, hell)."""
    import base64

    ranks = [bytes([i]) for i in range(256)] + [b"he", b"ll", b"hell"]
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))


def test_tiktoken_local_ranks_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("tiktoken", reason="tiktoken not installed (pip install tiktoken)")
    from neoxcli.data.indexed import IndexedDataset
    from neoxcli.data.prepare import prepare

    ranks = tmp_path / "tiny.tiktoken"
    _write_ranks(ranks)
    tok = build_tokenizer("TiktokenTokenizer", ranks)
    assert (tok.vocab_size, tok.eod_id) == (260, 259)
    assert tok.encode("hello") == [258, ord("o")]
    text = "hello, shell! héllo ☃"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["hello", "ll"]) == [[258, ord("o")], [257]]

    src = tmp_path / "docs.jsonl"
    docs = ["hello world", "shell hell", "ünïcode"]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    result = prepare([src], tmp_path / "out", tok, workers=1, append_eod=True)
    ds = IndexedDataset(result.outputs[0].prefix)
    assert [ds.get(i).tolist() for i in range(len(ds))] == [tok.encode(d) + [259] for d in docs]


def test_tiktoken_unknown_encoding_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("tiktoken", reason="tiktoken not installed (pip install tiktoken)")
    with pytest.raises(DataError, match="no-such-encoding"):
        build_tokenizer("TiktokenTokenizer", "no-such-encoding")
