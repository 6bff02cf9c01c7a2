"""The tiktoken fast path of ``neox prepare``: ids identical for every tokenizer it accepts, refused otherwise.

The fast path accepts exactly GPT-2's BPE, reached three ways (a tokenizers JSON, GPT-2's
``vocab.json`` + ``merges.txt``, and GPT-NeoX's HFGPT2Tokenizer with its extra padding token),
and GPT-NeoX-20B's (NFC normaliser, runs of spaces as added tokens); each is checked id for id
against the tokenizers library on Shakespeare, the head of enwik8 (markup, Unicode), hand-picked
and random edge cases and random concatenations of vocabulary entries, and the written datasets
are compared byte for byte with the library path.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from neoxcli.data.prepare import CHUNK_CHARS, prepare
from neoxcli.data.tokenizer import (
    GPT2BPETokenizer,
    HFGPT2Tokenizer,
    HFTokenizer,
    TiktokenBPE,
    _byte_to_unicode,
    build_tokenizer,
)

pytest.importorskip("tiktoken")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = DATA / "gpt2-tokenizer.json"
NEOX20B = DATA / "neox-20b-tokenizer.json"
needs_gpt2 = pytest.mark.skipif(not GPT2.is_file(), reason=f"GPT-2 tokenizer JSON not found at {GPT2}")

EDGE = [
    "",
    " ",
    "\n",
    "  \n\n \t x  ",
    "a  b   c    d",
    "it's they'll I'VE we'd you're I'm",
    "héllo wörld, naïve café",
    "日本語のテキスト 中文 한국어",
    "emoji 🤖🎉👩‍👩‍👧 and flags 🇩🇪",
    "numbers 1234567890 3.14159 1e-10 0x1F",
    "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|> <|endoftext|><|endoftext|>",
    "<|endoftext",
    "<|padding|> pad<|padding|>",
    "tabs\tand\r\nwindows\rlines",
    "control \x00\x01\x7f chars",
    "combining e\u0301 and Hangul \u1100\u1161",
    "def f(x):\n    return x ** 2  # comment\n",
    "ZWJ\u200dzero\u200bwidth",
    "!!!???...,,,;;;",
    "     leading and trailing     ",
    " " * 30 + "x" + " " * 25 + "\n" + " " * 24 + "y" + "  \t  " + " " * 2,
    "    four<|endoftext|>    spaces\n        eight",
    "non-NFC: cafe\u0301 A\u030a \u1100\u1161 and NFC: café Å 가",
]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    """Random strings over a pool that mixes every character class GPT-2's regex treats apart."""
    rng = random.Random(seed)
    pool = list("abcXYZ019 '\n\t\r.,!?-_") + [
        "é",
        "ß",
        "中",
        "🤖",
        "\u0301",
        "\u00a0",
        "<|endoftext|>",
        "'s",
        "  ",
    ]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 80))) for _ in range(n)]


def _corpus() -> list[str]:
    texts = list(EDGE) + SEPARATOR_EDGES + _fuzz(3000)
    shakes = DATA / "tinyshakespeare.txt"
    if shakes.is_file():
        texts += [p for p in shakes.read_text(encoding="utf-8").split("\n\n") if p][:3000]
    enwik = DATA / "enwik8_first100.txt"
    if enwik.is_file():
        texts += enwik.read_text(encoding="utf-8", errors="replace").split("\n\n")
    return texts


def _vocab_concatenations(path: Path, n: int, seed: int = 0) -> list[str]:
    """Texts of 2-5 random vocabulary entries each: every merge order BPE can meet, not just words."""
    inverse = {c: b for b, c in _byte_to_unicode().items()}
    vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    pieces = [bytes(inverse[c] for c in t) for t in vocab if all(c in inverse for c in t)]
    rng = random.Random(seed)
    return [
        b"".join(rng.choice(pieces) for _ in range(rng.randint(2, 5))).decode("utf-8", "ignore")
        for _ in range(n)
    ]


def _assert_same_ids(tok: HFTokenizer, texts: list[str]) -> None:
    fast = tok.fast_encoder()
    assert fast is not None
    reference = [e.ids for e in tok.backend.encode_batch(texts)]
    assert fast.encode_batch(texts) == reference
    assert fast.encode_batch(texts, threads=2) == reference
    assert tok.encode_batch(texts) == reference
    assert [fast.encode(t) for t in texts[:50]] == reference[:50]
    flat_reference = [i for ids in reference for i in ids]
    for threads in (1, 2):
        flat, sizes = fast.encode_flat(texts, threads)
        assert flat.tolist() == flat_reference and sizes.tolist() == [len(ids) for ids in reference]


#: texts that hold the string joining texts in one tiktoken call, or its start or end at their edges
SEPARATOR_EDGES = [
    f"a{TiktokenBPE.SEPARATOR}b",
    TiktokenBPE.SEPARATOR,
    "ends with a prefix \x00<|neox-end-of",
    "-text|> starts with a suffix",
    "\x00<|neox-end-of-text|",
    "|>",
    "\x00",
]


def _gpt2_vocab_merges(tmp: Path) -> tuple[Path, Path]:
    """GPT-2's vocab.json and merges.txt, written back out of its tokenizers JSON."""
    data = json.loads(GPT2.read_text(encoding="utf-8"))
    vocab, merges = tmp / "vocab.json", tmp / "merges.txt"
    vocab.write_text(json.dumps(data["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    lines = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    merges.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return vocab, merges


@needs_gpt2
def test_gpt2_json_fast_path_gives_the_libraries_ids() -> None:
    _assert_same_ids(HFTokenizer(str(GPT2)), _corpus())


@needs_gpt2
def test_gpt2_vocab_and_merges_files_take_the_fast_path_with_the_same_ids(tmp_path: Path) -> None:
    vocab, merges = _gpt2_vocab_merges(tmp_path)
    _assert_same_ids(GPT2BPETokenizer(str(vocab), str(merges)), _corpus())


@needs_gpt2
def test_hf_gpt2_with_a_padding_token_splits_both_specials_as_the_library(tmp_path: Path) -> None:
    tok = HFGPT2Tokenizer(str(GPT2))
    assert tok.pad_id == 50257
    _assert_same_ids(tok, EDGE + _fuzz(500, seed=1))


def _variant(tmp: Path, edit) -> HFTokenizer:  # type: ignore[no-untyped-def]
    data = json.loads(GPT2.read_text(encoding="utf-8"))
    edit(data)
    path = tmp / "variant.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return HFTokenizer(str(path))


@needs_gpt2
@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.__setitem__("normalizer", {"type": "Lowercase"}),
        lambda d: d["pre_tokenizer"].__setitem__("add_prefix_space", True),
        lambda d: d["pre_tokenizer"].__setitem__("use_regex", False),
        lambda d: d["model"].__setitem__("dropout", 0.1),
        lambda d: d["model"].__setitem__("merges", d["model"]["merges"][:-1]),
        lambda d: d["added_tokens"][0].__setitem__("lstrip", True),
        lambda d: d.__setitem__("normalizer", {"type": "NFKC"}),
        lambda d: (d.__setitem__("normalizer", {"type": "NFC"}), _add_tokens(d, [("e\u0301", True)])),
    ],
    ids=[
        "normalizer",
        "prefix-space",
        "no-regex",
        "dropout",
        "other-merges",
        "lstrip-special",
        "nfkc",
        "non-nfc-added-token",
    ],
)
def test_anything_but_gpt2_keeps_the_library(tmp_path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    tok = _variant(tmp_path, edit)
    assert tok.fast_encoder() is None


@pytest.mark.skipif(not NEOX20B.is_file(), reason=f"GPT-NeoX-20B tokenizer JSON not found at {NEOX20B}")
def test_neox_20b_json_fast_path_gives_the_libraries_ids() -> None:
    _assert_same_ids(HFTokenizer(str(NEOX20B)), _corpus() + _vocab_concatenations(NEOX20B, 20_000))


@needs_gpt2
def test_random_vocabulary_concatenations_give_the_libraries_ids() -> None:
    _assert_same_ids(HFTokenizer(str(GPT2)), _vocab_concatenations(GPT2, 20_000, seed=1))


@pytest.mark.skipif(not NEOX20B.is_file(), reason=f"GPT-NeoX-20B tokenizer JSON not found at {NEOX20B}")
def test_an_edited_neox_20b_keeps_the_library(tmp_path: Path) -> None:
    data = json.loads(NEOX20B.read_text(encoding="utf-8"))
    data["model"]["merges"] = data["model"]["merges"][:-1]
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert HFTokenizer(str(path)).fast_encoder() is None


def _add_tokens(data: dict, tokens: list[tuple[str, bool]]) -> None:  # type: ignore[type-arg]
    base = max(t["id"] for t in data["added_tokens"]) + 1
    for i, (content, normalized) in enumerate(tokens):
        data["added_tokens"].append(
            {
                "id": base + i,
                "content": content,
                "special": not normalized,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": normalized,
            }
        )


@needs_gpt2
def test_added_tokens_are_cut_out_as_the_library_cuts_them(tmp_path: Path) -> None:
    """Overlapping added tokens, some matched on the raw text and some on the NFC-normalised text."""

    def edit(d: dict) -> None:  # type: ignore[type-arg]
        d["normalizer"] = {"type": "NFC"}
        _add_tokens(d, [("ab", True), ("abc", True), ("bcd", False), ("é", True), ("<|x|>", False)])

    tok = _variant(tmp_path, edit)
    assert isinstance(tok.fast_encoder(), TiktokenBPE)
    texts = ["abcd", "abcbcdab", "xabcdx abc ab", "cafe\u0301 café", "é<|x|>é", "<|x|><|x|>ab<|endoftext|>"]
    _assert_same_ids(tok, texts + EDGE + _fuzz(500, seed=2) + [t.replace("c", "bcd") for t in _fuzz(300)])


def test_a_trained_byte_level_bpe_keeps_the_library(tmp_path: Path) -> None:
    from neoxcli.data.tokenizer import train_bpe_tokenizer

    out = tmp_path / "tok.json"
    tok = train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog " * 20] * 10, 300, out)
    assert tok.fast_encoder() is None
    assert build_tokenizer("HFTokenizer", out).fast_encoder() is None


@needs_gpt2
def test_without_tiktoken_the_library_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    tok = HFTokenizer(str(GPT2))
    assert tok.fast_encoder() is None
    assert tok.encode_batch(["it's a test"]) == [tok.backend.encode("it's a test").ids]


@needs_gpt2
def test_neox_tiktoken_0_opts_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOX_TIKTOKEN", "0")
    assert HFTokenizer(str(GPT2)).fast_encoder() is None


@needs_gpt2
def test_small_batches_do_not_build_the_fast_encoder() -> None:
    tok = HFTokenizer(str(GPT2))
    assert tok.encode_batch(["a short prompt"]) == [tok.backend.encode("a short prompt").ids]
    assert not hasattr(tok, "_fast")


def test_byte_map_is_gpt2s_bijection() -> None:
    table = _byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("tokenizer", [GPT2, NEOX20B], ids=["gpt2", "neox-20b"])
def test_prepared_files_are_byte_identical_to_the_library_path(
    tmp_path: Path, workers: int, tokenizer: Path
) -> None:
    if not tokenizer.is_file():
        pytest.skip(f"tokenizer JSON not found at {tokenizer}")
    texts = _corpus()
    texts.append("long line\n" * (CHUNK_CHARS // 5))  # cut into pieces and encoded in parallel
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    outs = []
    for name in ("fast", "library"):
        tok = HFTokenizer(str(tokenizer))
        if name == "library":
            tok._fast = None
        else:
            assert isinstance(tok.fast_encoder(), TiktokenBPE)
        prepare([src], tmp_path / name, tok, append_eod=True, workers=workers)
        prefix = tmp_path / f"{name}_text_document"
        outs.append((prefix.with_suffix(".bin").read_bytes(), prefix.with_suffix(".idx").read_bytes()))
    assert outs[0] == outs[1]
    assert len(outs[0][0]) > 100_000
