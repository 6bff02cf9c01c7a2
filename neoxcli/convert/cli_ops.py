"""What ``neox convert`` does: whole directories in and out, written atomically.

The per-architecture maps in this package turn state dicts into state dicts;
this module adds everything around them that a user needs to get a working
model on the other side: reading our checkpoint layout, choosing the Hugging
Face architecture from the config, the tokenizer files, dtype casting, writing
into a temporary directory that is renamed into place only when complete (a
crash never leaves a half-written model under the requested name), and
uploading to the Hugging Face Hub.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from neoxcli.config.schema import ModelConfig
from neoxcli.convert._common import ConversionError, StateDict, cast_state
from neoxcli.errors import DataError, NeoxError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

#: Spellings accepted by ``--arch`` -> Hugging Face ``model_type``.
ARCH_ALIASES: dict[str, str] = {
    "gpt_neox": "gpt_neox",
    "gpt-neox": "gpt_neox",
    "neox": "gpt_neox",
    "gptneoxforcausallm": "gpt_neox",
    "gptj": "gptj",
    "gpt-j": "gptj",
    "gptjforcausallm": "gptj",
    "llama": "llama",
    "llamaforcausallm": "llama",
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "gpt2lmheadmodel": "gpt2",
}

_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>")
_PAD_CANDIDATES = ("<|padding|>", "<pad>", "[PAD]")
_UNK_CANDIDATES = ("<unk>", "<|unk|>", "[UNK]")


# --------------------------------------------------------------------------- helpers


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``fp32`` / ``fp16`` / ``bf16`` (or None, keep the stored dtype) as a torch dtype."""
    if name is None:
        return None
    key = name.strip().lower()
    if key not in DTYPES:
        raise NeoxError(f"unknown --dtype {name!r}", hint="use fp32, fp16 or bf16")
    return DTYPES[key]


def parse_arch(name: str) -> str:
    """A ``--arch`` spelling as a Hugging Face ``model_type``."""
    key = name.strip().lower()
    if key not in ARCH_ALIASES:
        raise NeoxError(f"unknown --arch {name!r}", hint="use gpt_neox, gptj, llama or gpt2")
    return ARCH_ALIASES[key]


def choose_arch(cfg: ModelConfig) -> str:
    """The Hugging Face architecture that computes the same function as ``cfg``.

    RMSNorm + SwiGLU is Llama; learned positions with a sequential residual is
    GPT-2; rotary with a parallel residual is GPT-J when the block shares one
    LayerNorm, GPT-NeoX otherwise. Anything else is refused here, naming the
    feature, instead of being exported as a different model.
    """
    if cfg.norm == "rmsnorm" or cfg.mlp_activation == "swiglu":
        return "llama"
    if cfg.pos_emb == "learned":
        return "gpt2"
    if cfg.pos_emb == "rotary":
        return "gptj" if cfg.gpt_j_tied else "gpt_neox"
    raise ConversionError(
        f"no supported Hugging Face architecture has pos_emb={cfg.pos_emb!r}",
        hint="GPT-NeoX, GPT-J and Llama use rotary positions and GPT-2 learned ones",
    )


# A write that failed for these reasons is the output's fault, not a bug or a bad input.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def _write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write, also where torch or safetensors wrap it in their own error."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _WRITE_ERRNOS else None
    text = str(exc)
    for code in _WRITE_ERRNOS:
        if os.strerror(code) in text or f"os error {code})" in text:
            return code
    return None


@contextmanager
def atomic_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` that becomes ``out_dir`` when the block succeeds.

    The temporary directory is removed on any failure, so ``out_dir`` is either
    absent, its previous content, or complete.
    """
    from neoxcli.fileio import check_output_file, write_error

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise NeoxError(f"{out_dir} already exists", hint="choose a new directory or pass --overwrite")
    if not out_dir.is_dir():
        check_output_file(out_dir)  # a file where a parent directory should be
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:  # a read-only or full file system, before any conversion work
        raise write_error(out_dir, exc) from None
    try:
        try:
            yield tmp
        except Exception as exc:
            code = _write_errno(exc)
            if code is None:
                raise
            raise write_error(out_dir, OSError(code, os.strerror(code))) from None
        # mkdtemp makes the directory private (0700) and safetensors writes 0600; the model
        # directory is meant to be shared like every other output, so it follows the umask.
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.rglob("*")):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        old = None
        if out_dir.exists() or out_dir.is_symlink():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            # --overwrite may replace a plain file: rmtree alone would leave it behind.
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _first_token(backend: Any, candidates: tuple[str, ...]) -> str | None:
    return next((t for t in candidates if backend.token_to_id(t) is not None), None)


def write_hf_tokenizer(backend: Any, out_dir: Path, model_max_length: int) -> dict[str, int]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for ``AutoTokenizer``.

    ``tokenizer_class`` is ``PreTrainedTokenizerFast``, which transformers 4.x and
    5.x both load (5.x's own ``TokenizersBackend`` is unknown to 4.x). Returns the
    special-token ids for config.json.
    """
    backend.save(str(out_dir / "tokenizer.json"))
    eos = _first_token(backend, _EOS_CANDIDATES)
    bos = _first_token(backend, _BOS_CANDIDATES) or eos  # GPT-NeoX and GPT-2 use one token for both
    pad = _first_token(backend, _PAD_CANDIDATES)
    unk = _first_token(backend, _UNK_CANDIDATES) or eos
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk)) if v}
    if pad:
        special["pad_token"] = pad
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return {f"{k[:-6]}_token_id": backend.token_to_id(v) for k, v in special.items() if k != "unk_token"}


# --------------------------------------------------------------------------- export


def export_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    tag: str | None = None,
    arch: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one of our checkpoints as a Hugging Face model directory; returns a summary.

    The directory holds ``config.json``, ``model.safetensors`` and, when the
    checkpoint's tokenizer is a ``tokenizers`` one, the tokenizer files.
    """
    from neoxcli.checkpoint import (
        CONFIG_NAME,
        TOKENIZER_NAME,
        check_state_fits,
        load_module_state,
        resolve_checkpoint,
    )
    from neoxcli.config import load_config
    from neoxcli.convert.archs import to_hf
    from neoxcli.convert.hf_io import save_hf_dir
    from neoxcli.data.tokenizer import build_tokenizer

    torch_dtype = parse_dtype(dtype)
    tag_dir = resolve_checkpoint(ckpt_dir, tag)
    cfg_path = tag_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise NeoxError(f"{tag_dir} has no {CONFIG_NAME}; was it written by neox?")
    cfg = load_config([cfg_path], warn=lambda _msg: None)
    model_type = parse_arch(arch) if arch else choose_arch(cfg.model)
    state = load_module_state(tag_dir, cfg.model)
    check_state_fits(cfg.model, state, f"the checkpoint {tag_dir}")
    hf_config, hf_state = to_hf(model_type, cfg.model, state)

    tok_path = tag_dir / TOKENIZER_NAME
    tokenizer = None
    try:
        tokenizer = build_tokenizer(
            cfg.tokenizer.tokenizer_type,
            str(tok_path) if tok_path.is_file() else cfg.tokenizer.vocab_file,
            cfg.tokenizer.merge_file,
        )
    except NeoxError:
        if tok_path.is_file():
            raise
    backend = getattr(tokenizer, "backend", None)
    notes: list[str] = []
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        if backend is not None:
            ids = write_hf_tokenizer(backend, tmp, cfg.model.max_positions)
            hf_config.update({k: v for k, v in ids.items() if v is not None})
        else:
            notes.append(
                f"tokenizer {cfg.tokenizer.tokenizer_type!r} has no tokenizer.json form; no tokenizer files written"
            )
        hf_config["transformers_version"] = _transformers_version()
        stored = torch_dtype or _stored_dtype(hf_state)
        hf_config["dtype"] = str(stored).removeprefix("torch.")
        save_hf_dir(tmp, hf_config, hf_state, dtype=stored)
    return {
        "architecture": hf_config["architectures"][0],
        "out_dir": str(out_dir),
        "dtype": str(stored).removeprefix("torch."),
        "tensors": len(hf_state),
        "parameters": sum(t.numel() for t in hf_state.values()),
        "notes": notes,
    }


def _stored_dtype(state: StateDict) -> torch.dtype:
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # not installed: the key is informational only
        return "unknown"


# --------------------------------------------------------------------------- import


def _hf_tokenizer_backend(hf_dir: Path) -> Any:
    """The ``tokenizers.Tokenizer`` of a Hugging Face directory: tokenizer.json, or GPT-2's vocab + merges."""
    from tokenizers import Tokenizer

    if (hf_dir / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    vocab, merges = hf_dir / "vocab.json", hf_dir / "merges.txt"
    if vocab.is_file() and merges.is_file():
        from neoxcli.data.tokenizer import GPT2BPETokenizer

        return GPT2BPETokenizer(str(vocab), str(merges)).backend
    raise DataError(
        f"{hf_dir} has no tokenizer.json (or vocab.json + merges.txt)",
        hint="copy the model's tokenizer.json into the directory; a neox checkpoint carries its tokenizer",
    )


def vocab_divisor(tokenizer_vocab: int, rows: int) -> int:
    """A ``make_vocab_size_divisible_by`` that pads ``tokenizer_vocab`` to exactly ``rows``.

    Our loader rebuilds the embedding size from the tokenizer, so the imported
    config must reproduce the checkpoint's row count; round powers of two are
    preferred (Pythia's 50277 -> 50304 is 128), the row count itself always works.
    """
    if tokenizer_vocab > rows:
        raise ConversionError(
            f"the tokenizer has {tokenizer_vocab} tokens but the embedding only {rows} rows"
        )
    for d in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if -(-tokenizer_vocab // d) * d == rows:
            return d
    return rows


def read_hf(hf_dir: str | Path) -> tuple[ModelConfig, StateDict, Any, dict[str, Any]]:
    """A Hugging Face model directory as (our model config, our state dict, its tokenizer, facts about it).

    Nothing is written: ``import_hf`` stores the result as a checkpoint and
    ``load_hf_for_inference`` builds the model from it in memory.
    """
    from neoxcli.checkpoint import check_state_fits
    from neoxcli.convert.archs import from_hf
    from neoxcli.convert.hf_io import load_hf_dir

    hf_dir = Path(hf_dir)
    hf_config, hf_state = load_hf_dir(hf_dir)
    kwargs, state = from_hf(hf_state, hf_config)
    backend = _hf_tokenizer_backend(hf_dir)
    rows = state["layers.0.word_embeddings.weight"].shape[0]
    kwargs["make_vocab_size_divisible_by"] = vocab_divisor(
        backend.get_vocab_size(with_added_tokens=True), rows
    )
    try:
        model_cfg = ModelConfig(**kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConversionError(
            f"{hf_dir}/config.json describes a model neox cannot build ({field}: {err['msg']})"
        ) from None
    check_state_fits(model_cfg, state, f"the weights in {hf_dir}")
    info = {
        "architecture": (hf_config.get("architectures") or [hf_config.get("model_type")])[0],
        "model_type": hf_config.get("model_type"),
        "vocab_rows": rows,
        "make_vocab_size_divisible_by": kwargs["make_vocab_size_divisible_by"],
    }
    return model_cfg, state, backend, info


def load_hf_for_inference(hf_dir: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, tokenizer, config) from a Hugging Face directory, converted in memory (no copy on disk)."""
    from neoxcli.config import padded_vocab_size
    from neoxcli.config.schema import NeoXConfig, TokenizerConfig
    from neoxcli.data.tokenizer import HFTokenizer
    from neoxcli.model import GPTModel

    model_cfg, state, backend, _info = read_hf(hf_dir)
    tokenizer = HFTokenizer.from_backend(backend)
    cfg = NeoXConfig(model=model_cfg, tokenizer=TokenizerConfig(tokenizer_type="HFTokenizer"))
    vocab = padded_vocab_size(tokenizer.vocab_size, model_cfg.make_vocab_size_divisible_by, 1)
    model = GPTModel(model_cfg, vocab)
    model.load_state_dict(cast_state(state, torch.float32))
    return model.to(device=device).eval(), tokenizer, cfg


def import_hf(
    hf_dir: str | Path, out_dir: str | Path, dtype: str | None = "fp32", overwrite: bool = False
) -> dict[str, Any]:
    """Write a Hugging Face model directory as our checkpoint, loadable by ``load_for_inference``.

    Layout: ``out_dir/latest`` -> ``global_step0/`` with ``mp_rank_00_model_states.pt``
    (``{'module': state_dict}``, what DeepSpeed writes), ``config.yml``, ``tokenizer.json``
    and ``layout.json`` (``neoxcli.checkpoint.write_checkpoint``).
    Weights default to fp32, the dtype training keeps its master weights in.
    """
    from neoxcli.checkpoint import TOKENIZER_NAME, tag_for, write_checkpoint
    from neoxcli.config.schema import NeoXConfig, TokenizerConfig

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    torch_dtype = parse_dtype(dtype)
    model_cfg, state, backend, info = read_hf(hf_dir)
    tag = tag_for(0)
    final_tag_dir = out_dir.resolve() / tag
    cfg = NeoXConfig(
        model=model_cfg,
        tokenizer=TokenizerConfig(
            tokenizer_type="HFTokenizer", vocab_file=str(final_tag_dir / TOKENIZER_NAME)
        ),
    )
    module = cast_state(state, torch_dtype)
    header = f"# imported from Hugging Face: {hf_dir} ({info['model_type']})\n"
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint(tmp, cfg, module, tokenizer=backend, header=header)
    return {
        "architecture": info["architecture"],
        "out_dir": str(out_dir),
        "tag": tag,
        "parameters": sum(t.numel() for t in module.values()),
        "vocab_rows": info["vocab_rows"],
        "make_vocab_size_divisible_by": info["make_vocab_size_divisible_by"],
    }


# --------------------------------------------------------------------------- hub


def push_to_hub(out_dir: str | Path, repo: str, token: str | None = None, private: bool = False) -> str:
    """Upload a converted directory to the Hugging Face Hub; returns the repository URL.

    The token comes from ``token``, else huggingface-hub's own lookup (``HF_TOKEN``,
    then the login cache). It is never printed: errors are reported by type and
    status only, because hub error messages can echo request headers.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type="model",
            folder_path=str(out_dir),
            commit_message="Upload model converted with neox",
        )
    except Exception as exc:  # huggingface-hub raises many HTTP and auth error types
        status = getattr(getattr(exc, "response", None), "status_code", None)
        what = type(exc).__name__ + (f", HTTP {status}" if status else "")
        raise NeoxError(
            f"upload to the Hugging Face Hub repository {repo!r} failed ({what})",
            hint="check the repository name and your token (HF_TOKEN, or `hf auth login`) and its write access",
        ) from None
    return str(url)
