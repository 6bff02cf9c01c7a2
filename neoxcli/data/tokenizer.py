"""Tokenizers under GPT-NeoX's names, behind one small interface.

Every tokenizer exposes ``vocab_size``, ``eod_id``, ``pad_id``, ``encode``,
``encode_batch`` and ``decode``, plus a picklable ``spec`` so that worker
processes can rebuild it. Ids match GPT-NeoX's tokenizer of the same name.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neoxcli.errors import DataError

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
_EOS_FALLBACKS = (EOD_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>")


@dataclass(frozen=True)
class TokenizerSpec:
    """What ``build_tokenizer`` needs to rebuild a tokenizer (in another process)."""

    tokenizer_type: str
    vocab_file: str | None = None
    merge_file: str | None = None


class Tokenizer:
    """The interface the data pipeline and the training loop rely on."""

    name: str = "Tokenizer"
    spec: TokenizerSpec
    vocab_size: int
    eod_id: int | None = None
    pad_id: int | None = None
    #: encode_batch runs in native threads (tokenizers' rayon pool)
    native_parallel: bool = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_flat(self, texts: list[str]) -> tuple[Any, Any] | None:
        """(all ids, one int64 array; ids per text) where the tokenizer has a bulk path, else None."""
        return None

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def split_points_safe(self) -> bool:
        """Whether cutting text after a ``"<non-space>\\n"`` before an ASCII char keeps ids unchanged."""
        return False

    # GPT-NeoX's spellings
    @property
    def eod(self) -> int | None:
        return self.eod_id

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.decode(ids)

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod_id={self.eod_id}, pad_id={self.pad_id})"


class HFTokenizer(Tokenizer):
    """A ``tokenizers`` JSON file (GPT-NeoX's ``HFTokenizer``, e.g. the 20B tokenizer)."""

    name = "HFTokenizer"
    native_parallel = True

    def __init__(self, vocab_file: str, spec: TokenizerSpec | None = None, extra_pad: bool = False) -> None:
        from tokenizers import Tokenizer as _Tok

        path = Path(vocab_file)
        if not path.is_file():
            raise DataError(
                f"tokenizer file {vocab_file} not found",
                hint="pass a tokenizers JSON file with --vocab-file (e.g. 20B_tokenizer.json)",
            )
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise DataError(f"{vocab_file} is not a tokenizers JSON file: {exc}") from None
        if extra_pad and self._tok.token_to_id(PAD_TOKEN) is None:
            self._tok.add_special_tokens([PAD_TOKEN])
        self.spec = spec or TokenizerSpec("HFTokenizer", str(path))
        self._init_ids()
        self._safe = _bytelevel_split_safe(path)

    @classmethod
    def from_backend(cls, backend: Any, label: str = "(in memory)") -> HFTokenizer:
        """Wrap a ``tokenizers.Tokenizer`` already in memory (a Hugging Face model directory's)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tokenizer.json"
            backend.save(str(path))
            tok = cls(str(path))
        tok.spec = TokenizerSpec("HFTokenizer", label)
        return tok

    def _init_ids(self) -> None:
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod_id = next(
            (i for i in (self._tok.token_to_id(t) for t in _EOS_FALLBACKS) if i is not None), None
        )
        self.pad_id = self._tok.token_to_id(PAD_TOKEN)

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The fast encoder costs a few hundred ms to build: worth it from the first bulk batch on.
        bulk = hasattr(self, "_fast") or sum(map(len, texts)) >= FAST_ENCODER_MIN_CHARS
        fast = self.fast_encoder() if bulk else None
        if fast is not None:
            return fast.encode_batch(texts, int(os.environ.get("RAYON_NUM_THREADS", "1") or 1))
        batch = getattr(self._tok, "encode_batch_fast", None)
        encs = batch(texts) if batch is not None else self._tok.encode_batch(texts)
        return [e.ids for e in encs]

    def encode_flat(self, texts: list[str]) -> tuple[Any, Any] | None:
        bulk = hasattr(self, "_fast") or sum(map(len, texts)) >= FAST_ENCODER_MIN_CHARS
        fast = self.fast_encoder() if bulk else None
        if fast is None:
            return None
        return fast.encode_flat(texts, int(os.environ.get("RAYON_NUM_THREADS", "1") or 1))

    def fast_encoder(self) -> TiktokenBPE | None:
        """tiktoken over the same ranks for GPT-2's or GPT-NeoX-20B's BPE (ids proven identical), else None.

        Built on first use, so commands that encode one prompt never pay for it.
        """
        if not hasattr(self, "_fast"):
            self._fast = TiktokenBPE.for_backend(self._tok)
        return self._fast

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def split_points_safe(self) -> bool:
        return self._safe


# sha256 of the BPE vocabularies and merges (``_bpe_fingerprint``) whose tiktoken encoding is proven
# id-for-id identical to the tokenizers library's (tests/test_prepare_fast.py): GPT-2's and GPT-NeoX-20B's.
GPT2_BPE_FINGERPRINT = "01ac3c384ce81548dfafd8a85db58790cfd911a4a9bb2f1a108f980bdd23ac9d"
NEOX_20B_BPE_FINGERPRINT = "85a4884ddb918ca5fc00cfe4651f10dda88ed7dec9a4d249d1f2716cff821ca3"
FAST_BPE_FINGERPRINTS = frozenset({GPT2_BPE_FINGERPRINT, NEOX_20B_BPE_FINGERPRINT})
FAST_ENCODER_MIN_CHARS = 1 << 18
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _bpe_fingerprint(model: dict[str, Any]) -> str:
    """sha256 over the vocabulary in id order and the merges in rank order (any change shows)."""
    import hashlib

    vocab = sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    h = hashlib.sha256()
    h.update("\n".join(f"{i} {t}" for t, i in vocab).encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update("\n".join(merges).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what byte-level vocabularies spell)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = iter(range(256, 512))
    return {b: chr(b if b in keep else next(shifted)) for b in range(256)}


def _needles(contents: Iterable[str]) -> tuple[str, ...]:
    """The fewest strings whose absence from a text proves that none of ``contents`` occurs in it.

    A content holding a shorter one is covered by it (GPT-NeoX-20B's 23 runs of spaces reduce to
    two spaces), so a text is checked with a few C-speed ``in`` tests instead of a regex.
    """
    ordered = sorted(set(contents), key=len)
    kept: list[str] = []
    for c in ordered:
        if not any(k in c for k in kept):
            kept.append(c)
    return tuple(kept)


def _alternation(contents: Iterable[str]) -> re.Pattern[str] | None:
    """Longest first, so Python's leftmost-first alternation finds the leftmost-longest match, as the
    tokenizers library's added-token matcher does."""
    ordered = sorted(set(contents), key=lambda c: (-len(c), c))
    return re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None


class TiktokenBPE:
    """GPT-2's or GPT-NeoX-20B's BPE run by tiktoken: 3-7x less CPU than tokenizers, same ids.

    Accepted only for a tokenizer configured as those two are: byte-level pre-tokenizer with
    GPT-2's regex and no prefix space, no normaliser or NFC, plain BPE (no dropout, prefixes, byte
    fallback), one of the vocabulary-and-merges fingerprints proven identical, and added tokens
    that neither strip nor match single words. Added tokens are cut out first, as the tokenizers
    library does: those matched on the raw text, then, in what lies between, those matched on the
    normalised text; the pieces between them go to tiktoken. A text that NFC would change is
    encoded by the tokenizers library itself. Anything else, or no tiktoken installed, keeps the
    tokenizers library.
    """

    #: joins the texts of one tiktoken call, encoded as an id above every real one; a text holding it
    #: is encoded on its own. No proper prefix of it is also a suffix, so no match of it can straddle
    #: a join: each match found in the joined string is exactly one of the joins.
    SEPARATOR = "\x00<|neox-end-of-text|>"

    def __init__(self, encoding: Any, backend: Any, added: dict[str, tuple[int, bool]], nfc: bool) -> None:
        self._enc = encoding
        self._backend = backend
        self._ids = {content: i for content, (i, _) in added.items()}
        raw = [c for c, (_, normalized) in added.items() if not normalized]
        norm = [c for c, (_, normalized) in added.items() if normalized]
        self._raw, self._norm = _alternation(raw), _alternation(norm)
        self._needles = _needles([*added, self.SEPARATOR])
        self._nfc = backend.normalizer if nfc else None
        self._sep_id = encoding.encode_single_token(self.SEPARATOR)
        self._sep = {self.SEPARATOR}

    @classmethod
    def for_backend(cls, backend: Any) -> TiktokenBPE | None:
        """The fast encoder for ``backend`` (a ``tokenizers.Tokenizer``), or None; ``NEOX_TIKTOKEN=0`` opts out."""
        if os.environ.get("NEOX_TIKTOKEN", "1").strip() == "0":
            return None
        try:
            import tiktoken
        except ImportError:
            return None
        data = json.loads(backend.to_str())
        model = data.get("model") or {}
        pre = data.get("pre_tokenizer") or {}
        post = data.get("post_processor")
        norm = data.get("normalizer")
        added = data.get("added_tokens") or []
        plain_model = (
            model.get("type") == "BPE"
            and model.get("dropout") is None
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback")
            and not model.get("ignore_merges")
        )
        gpt2_split = (
            pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
        )
        plain_added = all(
            t.get("content") and not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
            for t in added
        )
        if not (
            plain_model
            and gpt2_split
            and (norm is None or norm.get("type") == "NFC")
            and (post is None or post.get("type") == "ByteLevel")
            and plain_added
            and _bpe_fingerprint(model) in FAST_BPE_FINGERPRINTS
        ):
            return None
        to_latin1 = str.maketrans({c: chr(b) for b, c in _byte_to_unicode().items()})
        specials = {
            t["content"]: (int(t["id"]), bool(t.get("normalized", not t.get("special")))) for t in added
        }
        if norm is not None and any(
            normalized and backend.normalizer.normalize_str(c) != c for c, (_, normalized) in specials.items()
        ):
            return None  # the library matches such a token by its normalised spelling
        ranks = {
            tok.translate(to_latin1).encode("latin-1"): i
            for tok, i in model["vocab"].items()
            if tok not in specials
        }
        top = max([*ranks.values(), *(i for i, _ in specials.values())]) + 1
        enc = tiktoken.Encoding(
            "neox-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={cls.SEPARATOR: top}
        )
        return cls(enc, backend, specials, nfc=norm is not None)

    def encode(self, text: str) -> list[int]:
        return self._encode_all([text])[0]

    def _split(self, text: str) -> list[int]:
        """Ids of a text holding added tokens: cut them out, tiktoken encodes the rest."""
        out: list[int] = []
        ordinary, ids = self._enc.encode_ordinary, self._ids
        raw_parts = self._raw.split(text) if self._raw is not None else [text]
        for i, part in enumerate(raw_parts):
            if i % 2:
                out.append(ids[part])
                continue
            parts = self._norm.split(part) if self._norm is not None else [part]
            for j, piece in enumerate(parts):
                if j % 2:
                    out.append(ids[piece])
                elif piece:
                    out.extend(ordinary(piece))
        return out

    def _apart(self, text: str) -> list[int] | None:
        """Ids of a text that cannot go straight to tiktoken (added tokens, not NFC), else None."""
        if self._nfc is not None and not text.isascii() and self._nfc.normalize_str(text) != text:
            return self._backend.encode(text).ids
        for n in self._needles:
            if n in text:
                return self._split(text)
        return None

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        ordinary, apart = self._enc.encode_ordinary, self._apart
        out: list[list[int]] = []
        for t in texts:
            ids = apart(t)
            out.append(ordinary(t) if ids is None else ids)
        return out

    def _encode_joined(self, texts: list[str]) -> tuple[Any, Any]:
        """One tiktoken call per run of plain texts, joined by the separator: the GIL is dropped once
        per run instead of once per text, and no per-text id lists are built."""
        import numpy as np

        parts: list[np.ndarray] = []
        sizes = np.empty(len(texts), dtype=np.int64)
        run: list[int] = []

        def flush() -> None:
            if not run:
                return
            joined = self.SEPARATOR.join([texts[i] for i in run]) + self.SEPARATOR
            ids = np.asarray(self._enc.encode(joined, allowed_special=self._sep), dtype=np.int64)
            ends = np.flatnonzero(ids == self._sep_id)
            sizes[run] = np.diff(ends, prepend=-1) - 1
            parts.append(np.delete(ids, ends))
            run.clear()

        for i, t in enumerate(texts):
            ids = self._apart(t)
            if ids is None:
                run.append(i)
                continue
            flush()
            parts.append(np.asarray(ids, dtype=np.int64))
            sizes[i] = len(ids)
        flush()
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), sizes

    def encode_flat(self, texts: list[str], threads: int = 1) -> tuple[Any, Any]:
        """All ids (int64) and ids per text; ``threads`` > 1 encodes contiguous slices in threads."""
        import numpy as np

        if threads <= 1 or len(texts) < 64:
            return self._encode_joined(texts)
        from concurrent.futures import ThreadPoolExecutor

        step = -(-len(texts) // threads)
        with ThreadPoolExecutor(threads) as pool:
            done = list(
                pool.map(self._encode_joined, [texts[i : i + step] for i in range(0, len(texts), step)])
            )
        return np.concatenate([f for f, _ in done]), np.concatenate([n for _, n in done])

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Ids of each text; ``threads`` > 1 encodes contiguous slices in threads (tiktoken drops the GIL)."""
        if threads <= 1 or len(texts) < 64:
            return self._encode_all(texts)
        from concurrent.futures import ThreadPoolExecutor

        step = -(-len(texts) // threads)
        with ThreadPoolExecutor(threads) as pool:
            parts = pool.map(self._encode_all, [texts[i : i + step] for i in range(0, len(texts), step)])
            return [ids for part in parts for ids in part]


def _bytelevel_split_safe(path: Path) -> bool:
    """True for GPT-2-style byte-level tokenizers (regex split, no or NFC normaliser).

    Their pre-tokenizer never merges a newline that follows a non-space
    character with the next character, so long texts may be cut there and
    encoded in parallel with identical ids.
    """
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    norm = cfg.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        return False
    pre = cfg.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")


class GPT2BPETokenizer(HFTokenizer):
    """GPT-2's ``vocab.json`` + ``merges.txt`` as a byte-level BPE (GPT-NeoX's default type)."""

    name = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str | None, merge_file: str | None) -> None:
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers

        if not vocab_file or not merge_file:
            raise DataError(
                "GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file (merges.txt)",
                hint="or use --tokenizer HFTokenizer --vocab-file tokenizer.json",
            )
        for p in (vocab_file, merge_file):
            if not Path(p).is_file():
                raise DataError(f"tokenizer file {p} not found")
        try:
            model = models.BPE.from_file(str(vocab_file), str(merge_file))
        except Exception as exc:
            raise DataError(f"cannot read GPT-2 BPE files {vocab_file}, {merge_file}: {exc}") from None
        tok = _Tok(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if tok.token_to_id(EOD_TOKEN) is not None:
            tok.add_special_tokens([EOD_TOKEN])
        self._tok = tok
        self.spec = TokenizerSpec("GPT2BPETokenizer", str(vocab_file), str(merge_file))
        self._init_ids()
        self.pad_id = None
        self._safe = True


class CharLevelTokenizer(Tokenizer):
    """UTF-8 bytes as ids, GPT-NeoX's character-level tokenizer (vocab 512, eod 0, pad 1).

    As in GPT-NeoX, ids 0 and 1 double as the bytes 0x00 and 0x01.
    """

    name = "CharLevelTokenizer"

    def __init__(self, vocab_size: int = 512) -> None:
        self.vocab_size = vocab_size
        self.eod_id = 0
        self.pad_id = 1
        self.spec = TokenizerSpec("CharLevelTokenizer")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, text: str) -> bytes:
        """The ids as raw bytes (one per id), the fast path of the data pipeline."""
        return text.encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def split_points_safe(self) -> bool:
        return True


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding by name (``cl100k_base``) or a local BPE ranks file."""

    name = "TiktokenTokenizer"

    def __init__(self, vocab_file: str | None) -> None:
        try:
            import tiktoken
        except ImportError:
            raise DataError(
                "TiktokenTokenizer needs the tiktoken package", hint="pip install tiktoken"
            ) from None
        name = vocab_file or "gpt2"
        try:
            if Path(name).is_file():
                from tiktoken.load import load_tiktoken_bpe

                ranks = load_tiktoken_bpe(name)
                pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
                self._enc = tiktoken.Encoding(
                    Path(name).stem,
                    pat_str=pat,
                    mergeable_ranks=ranks,
                    special_tokens={EOD_TOKEN: len(ranks)},
                )
            else:
                self._enc = tiktoken.get_encoding(name)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"cannot load tiktoken encoding {name!r}: {exc}",
                hint="pass a local ranks file with --vocab-file when offline",
            ) from None
        self.vocab_size = self._enc.n_vocab
        self.eod_id = self._enc.eot_token
        self.pad_id = None
        self.spec = TokenizerSpec("TiktokenTokenizer", vocab_file)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(
            texts, num_threads=int(os.environ.get("RAYON_NUM_THREADS", "1"))
        )

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))


def hub_tokenizer_file(name: str) -> str:
    """``tokenizer.json`` of a Hugging Face Hub repository, downloaded once and cached."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("huggingface-hub is needed to fetch tokenizer " + name) from None
    try:
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour a later setting too.
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        return hf_hub_download(repo_id=name, filename="tokenizer.json", local_files_only=offline)
    except Exception as exc:
        kind = type(exc).__name__
        raise DataError(
            f"cannot fetch tokenizer.json of {name!r} from the Hugging Face Hub ({kind})",
            hint="check the name and your connection, or download tokenizer.json and pass it with "
            "--tokenizer HFTokenizer --vocab-file PATH (HF_HUB_OFFLINE=1 uses the local cache only)",
        ) from None


class HFGPT2Tokenizer(HFTokenizer):
    """GPT-2 from the Hub (or a local tokenizer.json) plus a ``<|padding|>`` token, as in GPT-NeoX."""

    name = "HFGPT2Tokenizer"

    def __init__(self, vocab_file: str | None = None) -> None:
        src = vocab_file or "gpt2"
        path = src if Path(src).is_file() else hub_tokenizer_file(src)
        super().__init__(path, TokenizerSpec("HFGPT2Tokenizer", vocab_file), extra_pad=True)


_TYPES = ("HFTokenizer", "GPT2BPETokenizer", "HFGPT2Tokenizer", "CharLevelTokenizer", "TiktokenTokenizer")


def build_tokenizer(
    tokenizer_type: str,
    vocab_file: str | os.PathLike[str] | None = None,
    merge_file: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """A tokenizer by GPT-NeoX type name (case-insensitive) or Hugging Face Hub repository id."""
    vf = os.fspath(vocab_file) if vocab_file is not None else None
    mf = os.fspath(merge_file) if merge_file is not None else None
    t = (tokenizer_type or "").strip()
    key = t.lower()
    if key == "hftokenizer":
        if not vf:
            raise DataError("HFTokenizer needs --vocab-file (a tokenizers JSON file)")
        return HFTokenizer(vf)
    if key == "gpt2bpetokenizer":
        return GPT2BPETokenizer(vf, mf)
    if key in ("hfgpt2tokenizer", "hfgpt2tokenizerfast"):
        return HFGPT2Tokenizer(vf)
    if key == "charleveltokenizer":
        return CharLevelTokenizer()
    if key == "tiktokentokenizer":
        return TiktokenTokenizer(vf)
    if t.endswith(".json") and Path(t).is_file():
        return HFTokenizer(t)
    if "/" in t or key in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        tok = HFTokenizer(hub_tokenizer_file(t), TokenizerSpec(t))
        return tok
    close = difflib.get_close_matches(t, _TYPES, n=1, cutoff=0.5)
    raise DataError(
        f"unknown tokenizer type {tokenizer_type!r}",
        hint=(f"did you mean {close[0]}? " if close else "")
        + "known types: "
        + ", ".join(_TYPES)
        + ", or a Hugging Face Hub repository id such as EleutherAI/pythia-70m",
    )


def rebuild(spec: TokenizerSpec) -> Tokenizer:
    """``build_tokenizer`` from a spec (what worker processes call)."""
    if spec.tokenizer_type not in _TYPES and "/" not in spec.tokenizer_type:
        return build_tokenizer(spec.tokenizer_type)
    return build_tokenizer(spec.tokenizer_type, spec.vocab_file, spec.merge_file)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    min_frequency: int = 2,
    length: int | None = None,
) -> HFTokenizer:
    """Train a byte-level BPE with ``<|endoftext|>`` (id 0) and ``<|padding|>`` (id 1).

    The file is written atomically, so a half-written tokenizer never exists.
    """
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 2:
        raise DataError(f"--vocab-size {vocab_size} is too small for a byte-level BPE (at least 258)")
    out = Path(out_path)
    try:  # before training, so an unusable output path fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create directory {out.parent}: {exc.strerror or exc}") from None
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOD_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer, length=length)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tok.save(str(tmp))
        os.replace(tmp, out)
    except Exception as exc:  # tokenizers reports a failed save as a plain Exception
        raise DataError(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return HFTokenizer(str(out))


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t
