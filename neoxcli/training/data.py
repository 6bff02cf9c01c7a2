"""Glue between the run config and the datasets: prepare built-in data, build the three splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from neoxcli.config.schema import NeoXConfig
from neoxcli.errors import DataError, NeoxError


def _missing_inputs(cfg: NeoXConfig) -> list[str]:
    from neoxcli.data.indexed import dataset_exists

    missing = []
    paths = [cfg.data.data_path] if cfg.data.data_path else []
    for group in (cfg.data.train_data_paths, cfg.data.valid_data_paths, cfg.data.test_data_paths):
        paths.extend(group or [])
    missing += [p for p in paths if not dataset_exists(p)]
    if cfg.tokenizer.vocab_file and not Path(cfg.tokenizer.vocab_file).exists():
        missing.append(cfg.tokenizer.vocab_file)
    return missing


def ensure_data(
    cfg: NeoXConfig, *, is_main: bool, say: Callable[[str], None], barrier: Callable[[], Any]
) -> None:
    """Prepare a preset dataset named by ``data_preset`` when its files are missing (rank 0 only)."""
    if not (cfg.data.data_path or cfg.data.train_data_paths):
        raise DataError(
            "no training data: set data_path (with split) or train_data_paths",
            hint="prepare data with `neox prepare`, or set data_preset: python-stdlib for the built-in corpus",
        )
    missing = _missing_inputs(cfg)
    if missing and cfg.data.data_preset and cfg.data.data_path:
        if is_main:
            from neoxcli.data.presets import prepare_preset

            out_dir = Path(cfg.data.data_path).parent
            say(
                f"dataset {cfg.data.data_path} is missing: preparing preset '{cfg.data.data_preset}' into {out_dir}"
            )
            info = prepare_preset(cfg.data.data_preset, out_dir)
            say(f"prepared {info.documents:,} documents, {info.tokens:,} tokens")
        barrier()
        missing = _missing_inputs(cfg)
    vocab = cfg.tokenizer.vocab_file
    if vocab and vocab in missing:
        raise DataError(
            f"tokenizer file not found: {vocab} (vocab_file)",
            hint="vocab_file names the tokenizer the data was prepared with, e.g. a tokenizer.json",
        )
    if missing:
        raise DataError(
            f"data not found: {missing[0]}",
            hint="run `neox prepare` first (configs name the prefix without .bin/.idx)",
        )


def sample_counts(cfg: NeoXConfig, train_batch: int) -> tuple[int, int, int]:
    """Samples per split as GPT-NeoX requests them."""
    t = cfg.train
    train = t.train_iters * train_batch
    valid = (t.train_iters // t.eval_interval + 1) * t.eval_iters * train_batch
    test = t.eval_iters * train_batch
    return train, valid, test


def build_datasets(
    cfg: NeoXConfig,
    *,
    train_batch: int,
    cache_dir: Path,
    rank: int,
    barrier: Callable[[], Any],
    vocab_size: int | None = None,
) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets in GPT-NeoX's sample order; valid/test may be None.

    Every token id is checked against ``vocab_size`` (the padded embedding
    size; worked out from the tokenizer when not given) before training starts.
    """
    from neoxcli.data.gpt_dataset import build_train_valid_test

    if vocab_size is None:
        vocab_size = _padded_vocab(cfg)
    train_n, valid_n, test_n = sample_counts(cfg, train_batch)
    return build_train_valid_test(
        cfg.data,
        seq_length=cfg.model.seq_length,
        seed=cfg.train.seed,
        train_samples=train_n,
        valid_samples=valid_n,
        test_samples=test_n,
        cache_dir=cache_dir,
        rank=rank,
        barrier=barrier,
        vocab_size=vocab_size,
    )


def _padded_vocab(cfg: NeoXConfig) -> int | None:
    """The run's embedding size, from its tokenizer (None when the tokenizer cannot be built here)."""
    from neoxcli.config.derived import padded_vocab_size
    from neoxcli.data.tokenizer import build_tokenizer

    tok = cfg.tokenizer
    try:
        vocab = build_tokenizer(tok.tokenizer_type, tok.vocab_file, tok.merge_file).vocab_size
    except NeoxError:
        return None  # the run builds the same tokenizer and reports the problem itself
    return padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size)
