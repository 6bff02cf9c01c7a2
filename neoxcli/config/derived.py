"""Values a run derives from its config and the job size, computed as GPT-NeoX computes them.

A config says what the user asked for (say, ``train_batch_size: 1024``); how
that becomes a micro batch and gradient-accumulation steps depends on how many
GPUs the job has, which only the launcher knows. ``resolve`` turns both into a
``Derived`` record that the training loop, ``neox config show`` and
``neox config validate`` all read, so they can never disagree.

No torch here: whether a bf16-capable GPU exists is passed in.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from neoxcli.config.schema import ModelConfig, NeoXConfig, TrainConfig
from neoxcli.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Derived:
    """What the training loop needs beyond the config itself.

    Names follow GPT-NeoX where it has one. ``warmup_iters`` is a float on
    purpose: GPT-NeoX's scheduler uses ``warmup * lr_decay_iters`` unrounded
    (it compares the step against it and divides by it), and so does neox.
    """

    world_size: int
    data_parallel_size: int
    train_micro_batch_size_per_gpu: int
    gradient_accumulation_steps: int
    train_batch_size: int
    lr_decay_iters: int
    warmup_iters: float
    precision: Precision
    zero_stage: int
    is_pipe_parallel: bool
    mlp_width: int  # of each branch for gated activations (GPT-NeoX's sizing rule)
    vocab_size: int | None = None
    padded_vocab_size: int | None = None

    @property
    def micro_batch(self) -> int:
        """Short name for ``train_micro_batch_size_per_gpu``."""
        return self.train_micro_batch_size_per_gpu

    @property
    def dp_size(self) -> int:
        """Short name for ``data_parallel_size``."""
        return self.data_parallel_size

    def as_dict(self) -> dict[str, Any]:
        """Plain values, in field order, for printing."""
        return asdict(self)


def default_world_size(cfg: NeoXConfig) -> int:
    """The job size a config implies when no launcher has said: ``num_gpus * num_nodes``.

    Without ``num_gpus`` it is one model replica (``model_parallel_size *
    max(pipe_parallel_size, 1)``): GPT-NeoX model files name no GPU count, and
    one whose model spans several GPUs is still a valid config. ``num_nodes`` of
    -1 (GPT-NeoX's "every host in the hostfile") counts as one node here; pass
    the real world size when it is known.
    """
    gpus = cfg.launcher.num_gpus
    if gpus is None or gpus < 1:
        return cfg.parallel.model_parallel_size * max(cfg.parallel.pipe_parallel_size, 1)
    return gpus * max(cfg.launcher.num_nodes, 1)


def data_parallel_size(world_size: int, model_parallel_size: int, pipe_parallel_size: int) -> int:
    """GPUs per model replica are ``mp * max(pp, 1)``; the rest of the world is data parallel."""
    per_replica = model_parallel_size * max(pipe_parallel_size, 1)
    if world_size % per_replica:
        raise ConfigError(
            f"world size ({world_size}) is not divisible by model_parallel_size ({model_parallel_size}) "
            f"* pipe_parallel_size ({max(pipe_parallel_size, 1)})",
            hint="change the parallel sizes, or the GPU count (num_gpus, --world-size)",
        )
    return world_size // per_replica


def batch_sizes(
    dp_size: int,
    train_batch: int | None,
    micro_batch: int | None,
    grad_accum: int | None,
) -> tuple[int, int, int]:
    """Fill in GPT-NeoX's batch triplet: ``train = micro * accum * dp``.

    Any two of the three determine the third; a lone ``train_batch_size`` or
    ``train_micro_batch_size_per_gpu`` means no accumulation. Returns
    ``(train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps)``.
    Unlike GPT-NeoX, which floors and then fails an assertion, an uneven split
    is reported as such.
    """
    if train_batch is None and micro_batch is None:
        raise ConfigError(
            "no batch size: set train_micro_batch_size_per_gpu or train_batch_size",
            hint="e.g. --set train_micro_batch_size_per_gpu=8 (gradient_accumulation_steps defaults to 1)",
        )
    if micro_batch is not None and train_batch is not None:
        if grad_accum is None:
            if train_batch % (micro_batch * dp_size):
                raise ConfigError(
                    f"train_batch_size ({train_batch}) is not divisible by train_micro_batch_size_per_gpu "
                    f"({micro_batch}) * data-parallel size ({dp_size})",
                    hint="adjust one of them, or give gradient_accumulation_steps instead of one",
                )
            grad_accum = train_batch // (micro_batch * dp_size)
    elif train_batch is not None:
        grad_accum = grad_accum or 1
        if train_batch % (grad_accum * dp_size):
            raise ConfigError(
                f"train_batch_size ({train_batch}) is not divisible by gradient_accumulation_steps "
                f"({grad_accum}) * data-parallel size ({dp_size})",
                hint="adjust one of them, or set train_micro_batch_size_per_gpu instead",
            )
        micro_batch = train_batch // (grad_accum * dp_size)
    else:
        assert micro_batch is not None
        grad_accum = grad_accum or 1
        train_batch = micro_batch * grad_accum * dp_size
    if train_batch != micro_batch * grad_accum * dp_size:
        raise ConfigError(
            f"train_batch_size ({train_batch}) must equal train_micro_batch_size_per_gpu ({micro_batch}) "
            f"* gradient_accumulation_steps ({grad_accum}) * data-parallel size ({dp_size}) "
            f"= {micro_batch * grad_accum * dp_size}",
            hint="give only two of the three and neox derives the third",
        )
    return train_batch, micro_batch, grad_accum


def mlp_width(cfg: ModelConfig) -> int:
    """Hidden width of the MLP (of each branch, for GLU), by GPT-NeoX's rule.

    The size is ``intermediate_size`` or 4h. A gated activation (SwiGLU/GeGLU)
    scales it by 2/3 and splits it between gate and value, so the three matrices
    cost what two of the full size would; the width is then rounded up to a
    multiple of ``mlp_multiple_of``. GPT-NeoX's Llama-2-7B config writes 32768
    with multiple 256 for Llama's 11008; a Hugging Face ``intermediate_size`` I
    is ``3 * I`` here.
    """
    size = cfg.intermediate_size if cfg.intermediate_size is not None else 4 * cfg.hidden_size
    if cfg.mlp_activation in ("swiglu", "geglu"):
        size = int(size * 2 / 3) // 2
    multiple = cfg.mlp_multiple_of
    return multiple * math.ceil(size / multiple)


def padded_vocab_size(vocab_size: int, divisible_by: int, model_parallel_size: int = 1) -> int:
    """GPT-NeoX's embedding size: the vocab rounded up to a multiple of ``divisible_by * mp``.

    The padding keeps the embedding matrix GEMM-friendly and evenly split
    across model-parallel ranks; checkpoints depend on it, so it must match.
    """
    multiple = divisible_by * model_parallel_size
    return -(-vocab_size // multiple) * multiple


def lr_schedule_iters(train: TrainConfig) -> tuple[int, float]:
    """``(lr_decay_iters, warmup_iters)`` as GPT-NeoX's scheduler sets them up.

    Decay runs over ``lr_decay_iters``, else ``floor(train_iters * lr_decay_fraction)``,
    else ``train_iters``, and at least 1. Warmup is ``warmup * that``, not rounded.
    """
    if train.lr_decay_iters is not None:
        decay = train.lr_decay_iters
    elif train.lr_decay_fraction is not None:
        decay = math.floor(train.train_iters * train.lr_decay_fraction)
    else:
        decay = train.train_iters
    decay = max(1, decay)
    return decay, train.warmup * decay


def precision_from_hardware(train: TrainConfig) -> bool:
    """Whether the device decides the precision: ``auto`` with no GPT-NeoX fp16/bf16 block enabled."""
    fp16, bf16 = train.fp16 or {}, train.bf16 or {}
    named = fp16.get("type") == "bfloat16" or bf16.get("enabled", False) or fp16.get("enabled", False)
    return train.precision == "auto" and not named


def resolve_precision(train: TrainConfig, bf16_supported: bool) -> Precision:
    """The dtype a run trains in; ``auto`` picks bf16 where the device runs it fast, else fp32.

    ``bf16_supported`` is the device's verdict (``neoxcli.model.precision``: GPUs
    with bf16, CPUs with AMX). ``load_config`` folds GPT-NeoX's ``fp16``/``bf16``
    blocks into ``precision``; they are read here too for configs built in code.
    """
    if train.precision == "auto":
        fp16, bf16 = train.fp16 or {}, train.bf16 or {}
        if fp16.get("type") == "bfloat16" or bf16.get("enabled", False):
            return "bf16"
        if fp16.get("enabled", False):
            return "fp16"
        return "bf16" if bf16_supported else "fp32"
    if train.precision in ("bf16", "bfloat16"):
        return "bf16"
    return "fp16" if train.precision == "fp16" else "fp32"


def vocab_size_from_file(path: str | Path | None) -> int | None:
    """The vocab size of a tokenizers JSON (or a GPT-2 ``vocab.json``), read with ``json`` only.

    Used where loading the tokenizer library would be too heavy (``neox config
    show``). Counts added tokens too, as the tokenizer does. None when the file
    is missing or not a vocab this understands.
    """
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix.lower() != ".json":
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    ids: set[int] = set()
    model = data.get("model")
    if isinstance(model, dict):  # tokenizers' tokenizer.json
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            ids.update(v for v in vocab.values() if isinstance(v, int))
        elif isinstance(vocab, list):  # Unigram: a list of [piece, score]
            ids.update(range(len(vocab)))
        for tok in data.get("added_tokens") or []:
            if isinstance(tok, dict) and isinstance(tok.get("id"), int):
                ids.add(tok["id"])
    elif data and all(isinstance(v, int) for v in data.values()):  # GPT-2 vocab.json: token -> id
        ids.update(data.values())
    return max(ids) + 1 if ids else None


def _zero_stage(zero: dict[str, Any] | None) -> int:
    stage = (zero or {}).get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return int(stage)


PARTITION_METHODS = ("parameters", "uniform")

# Beyond this many samples in one split the sample and shuffle indices (16 + 8 bytes a
# sample) outgrow any host's memory: 2^32 samples is already ~96 GiB of index.
MAX_SPLIT_SAMPLES = 2**32


def check_partition_method(method: str) -> str:
    """Validate ``pipe_partition_method``: parameters, uniform or type:REGEX (matched on layer class names)."""
    m = method.strip()
    if m.lower() in PARTITION_METHODS or (m.lower().startswith("type:") and len(m) > 5):
        return m
    raise ConfigError(
        f"pipe_partition_method {method!r} is not supported",
        hint="use parameters, uniform or type:Block (any regex over the layer class names)",
    )


def split_weights(split: str) -> list[float]:
    """GPT-NeoX's ``split`` string ("969,30,1" or "98/2/0") as three weights; ValueError if it is not one."""
    text = str(split).strip()
    sep = "," if "," in text else "/" if "/" in text else None
    try:
        weights = [float(s) for s in (text.split(sep) if sep else [text])]
    except ValueError:
        raise ValueError(f"invalid split {split!r}") from None
    weights = (weights + [0.0, 0.0, 0.0])[:3]
    if not all(math.isfinite(w) for w in weights) or sum(weights) <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"invalid split {split!r}: weights must be >= 0 and not all zero")
    return weights


def check_split_sizes(cfg: NeoXConfig, train_batch: int) -> None:
    """Refuse a run whose sample index could never be built (``train_iters`` absurdly large)."""
    t = cfg.train
    wanted = {
        "train_iters": t.train_iters * train_batch,
        "eval_iters": (t.train_iters // t.eval_interval + 1) * t.eval_iters * train_batch,
    }
    for key, samples in wanted.items():
        if samples > MAX_SPLIT_SAMPLES:
            raise ConfigError(
                f"train.{key}: {samples:,} samples (batch {train_batch}) is more than the "
                f"{MAX_SPLIT_SAMPLES:,} a dataset index can hold",
                hint="lower train_iters (or eval_iters)",
            )


def check_layout(layout: Any, precision: str) -> None:
    """Refuse parallel combinations DeepSpeed cannot run (``layout``: anything with ``pp`` and ``zero_stage``)."""
    if layout.pp > 1 and layout.zero_stage > 1:
        raise ConfigError(
            f"ZeRO stage {layout.zero_stage} cannot be combined with pipeline parallelism",
            hint="DeepSpeed's pipeline engine supports ZeRO stage 0 or 1",
        )
    if layout.pp > 1 and layout.zero_stage == 0 and precision == "bf16":
        raise ConfigError(
            "bf16 pipelines need ZeRO stage 1",
            hint="set zero_optimization: {stage: 1} (DeepSpeed cannot reload bf16 stage-0 pipeline checkpoints)",
        )


def resolve(
    cfg: NeoXConfig,
    world_size: int | None = None,
    vocab_size: int | None = None,
    *,
    bf16_supported: bool = False,
) -> Derived:
    """Derive batch sizes, parallel sizes, schedule lengths, precision and padded vocab.

    ``world_size`` is the number of GPUs (processes) in the job, by default what
    the config's launcher section implies (``default_world_size``);
    ``vocab_size`` is the tokenizer's, and without it ``padded_vocab_size`` is
    None. Raises ``ConfigError`` for inconsistent batch or parallel settings.
    """
    if world_size is None:
        world_size = default_world_size(cfg)
    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    par = cfg.parallel
    dp = data_parallel_size(world_size, par.model_parallel_size, par.pipe_parallel_size)
    train_batch, micro, accum = batch_sizes(
        dp,
        cfg.train.train_batch_size,
        cfg.train.train_micro_batch_size_per_gpu,
        cfg.train.gradient_accumulation_steps,
    )
    decay, warmup = lr_schedule_iters(cfg.train)
    padded = None
    if vocab_size is not None:
        padded = padded_vocab_size(
            vocab_size, cfg.model.make_vocab_size_divisible_by, par.model_parallel_size
        )
    precision = resolve_precision(cfg.train, bf16_supported)
    stage = _zero_stage(par.zero_optimization)
    check_layout(SimpleNamespace(pp=max(par.pipe_parallel_size, 1), zero_stage=stage), precision)
    check_split_sizes(cfg, train_batch)
    return Derived(
        world_size=world_size,
        data_parallel_size=dp,
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=accum,
        train_batch_size=train_batch,
        lr_decay_iters=decay,
        warmup_iters=warmup,
        precision=precision,
        zero_stage=stage,
        is_pipe_parallel=par.pipe_parallel_size > 1,
        mlp_width=mlp_width(cfg.model),
        vocab_size=vocab_size,
        padded_vocab_size=padded,
    )
