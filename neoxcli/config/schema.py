"""The pydantic models that hold every neox setting.

Settings live in sections (model, tokenizer, data, train, parallel, checkpoint,
logging, launcher, eval). Field names are GPT-NeoX's own spellings (with ``_``), and
every field name is unique across sections, so a flat GPT-NeoX YAML file maps
onto the sections without a translation table; see ``neoxcli.config.loader``.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated.

    Numbers are accepted for text fields because YAML reads ``wandb_group: 2024`` as an int.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), coerce_numbers_to_str=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``num_layers: true`` is a typo, not 1: pydantic's lax mode would read a bool as a number."""
        if not isinstance(value, (bool, list, tuple)) or info.field_name is None:
            return value
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        if isinstance(value, bool):
            if _number_not_bool(field.annotation, in_list=False):
                raise PydanticCustomError("bool_for_number", "a bool is not a number")
        elif any(isinstance(v, bool) for v in value) and _number_not_bool(field.annotation, in_list=True):
            raise PydanticCustomError("bool_for_number", "a bool is not a number")
        return value


def _number_not_bool(annotation: Any, *, in_list: bool) -> bool:
    """Whether a field typed ``annotation`` takes numbers (or, ``in_list``, lists of them) but no bools."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if bool in options or Any in options:
            return False
        return any(_number_not_bool(a, in_list=in_list) for a in options)
    if in_list:
        return origin in (list, tuple) and any(
            _number_not_bool(a, in_list=False) for a in typing.get_args(annotation) if a is not Ellipsis
        )
    return annotation in (int, float)


PosEmb = Literal["rotary", "alibi", "learned", "sinusoidal", "none"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swish", "swiglu", "geglu"]
InitMethod = Literal[
    "normal",
    "scaled_normal",
    "orthogonal",
    "scaled_orthogonal",
    "xavier_uniform",
    "xavier_normal",
    "wang_init",
    "small_init",
]


class ModelConfig(Section):
    """Architecture. Defaults follow GPT-NeoX's where GPT-NeoX has one."""

    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(
        None, ge=1, description="grouped-query attention; None = num_attention_heads"
    )
    seq_length: int = Field(2048, ge=1)
    max_position_embeddings: int | None = Field(None, ge=1, description="None = seq_length")
    pos_emb: PosEmb = "learned"
    rotary_pct: float = 1.0
    rotary_emb_base: float = 10000.0
    gpt_j_residual: bool = Field(False, description="parallel residual: x + attn(ln1(x)) + mlp(ln2(x))")
    gpt_j_tied: bool = Field(False, description="parallel residual with one shared LayerNorm")
    no_weight_tying: bool = Field(False, description="untie input embedding and output head")
    norm: Norm = "layernorm"
    layernorm_epsilon: float = 1e-5
    rms_norm_epsilon: float = 1e-8
    activation: Activation = "gelu"
    bias_gelu_fusion: bool = Field(False, description="GPT-NeoX's fused bias-GELU: the tanh approximation")
    intermediate_size: int | None = Field(
        None,
        ge=1,
        description="GPT-NeoX's MLP size (None = 4 * hidden_size); for GLU activations each branch "
        "gets 1/3 of it, rounded up to mlp_multiple_of",
    )
    mlp_multiple_of: int = Field(1, ge=1)
    use_bias_in_norms: bool = True
    use_bias_in_attn_linear: bool = True
    use_bias_in_mlp: bool = True
    make_vocab_size_divisible_by: int = Field(128, ge=1)
    init_method: InitMethod = "normal"
    output_layer_init_method: InitMethod = "scaled_normal"
    init_method_std: float = Field(0.02, gt=0)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    attention_config: list[Any] | None = Field(
        None,
        description='per-layer attention kinds as GPT-NeoX writes them, e.g. [[["local", "global"], 6]]; None = all global',
    )
    sliding_window_width: int | None = Field(None, ge=1, description='band width of "local" attention layers')
    use_bias_in_output_layer: bool = Field(False, description="a bias on the output head (GPT-J has one)")
    use_mup: bool = Field(False, description="maximal-update parametrisation (muP)")
    mup_width_scale: float = Field(1.0, gt=0, description="muP: hidden_size / base width")
    mup_embedding_mult: float = Field(1.0, gt=0, description="muP: scale on the embedding output")
    kernels: Literal["auto", "torch", "liger", "triton"] = Field(
        "auto",
        description="neox: compute kernels; auto = fused kernels and flex attention on CUDA, "
        "exact PyTorch on CPU; torch = PyTorch everywhere",
    )

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_length

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def attention_types(self) -> list[str]:
        """One attention kind per layer ("global" or "local"), expanded from ``attention_config``."""
        if not self.attention_config:
            return ["global"] * self.num_layers
        kinds: list[str] = []
        for item in self.attention_config:
            if isinstance(item, str):
                kinds.append(item)
                continue
            # GPT-NeoX's [[kinds...], repeat]; anything else is named, not a traceback from unpacking.
            ok = isinstance(item, (list, tuple)) and len(item) == 2
            pattern, repeat = item if ok else ([], 0)
            if not ok or not isinstance(pattern, (list, tuple)) or not isinstance(repeat, int) or repeat < 0:
                raise ValueError(
                    f'attention_config entries must be "global"/"local" or [[kinds...], repeat], got {item!r}'
                )
            kinds.extend([str(k) for k in pattern] * repeat)
        # GPT-NeoX's "flash" is dense causal attention through a faster kernel: the same model.
        return ["global" if k == "flash" else k for k in kinds]

    @property
    def mlp_activation(self) -> str:
        """The activation actually computed ("gelu" becomes "gelu_tanh" under bias_gelu_fusion)."""
        if self.activation == "gelu" and self.bias_gelu_fusion:
            return "gelu_tanh"
        return "silu" if self.activation == "swish" else self.activation

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_kv_heads is not None and self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        kinds = self.attention_types
        if len(kinds) != self.num_layers or not set(kinds) <= {"global", "local"}:
            raise ValueError(
                f'attention_config must give one of "global"/"local" for each of the '
                f"{self.num_layers} layers, got {kinds}"
            )
        if "local" in kinds and self.sliding_window_width is None:
            raise ValueError("local attention layers need sliding_window_width")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.max_position_embeddings is not None and self.max_position_embeddings < self.seq_length:
            raise ValueError(
                f"max_position_embeddings ({self.max_position_embeddings}) must be >= "
                f"seq_length ({self.seq_length})"
            )
        return self


class TokenizerConfig(Section):
    tokenizer_type: str = "GPT2BPETokenizer"
    vocab_file: str | None = None
    merge_file: str | None = None


class DataConfig(Section):
    data_path: str | None = None
    train_data_paths: list[str] | None = None
    valid_data_paths: list[str] | None = None
    test_data_paths: list[str] | None = None
    train_data_weights: list[float] | None = None
    valid_data_weights: list[float] | None = None
    test_data_weights: list[float] | None = None
    label_data_paths: list[str] | None = None
    split: str = "969,30,1"
    data_impl: Literal["mmap"] = "mmap"
    num_workers: int = Field(
        0,
        ge=0,
        description="threads that read the next step's batches while this step runs (0: read in line)",
    )
    data_preset: str | None = Field(
        None,
        description="neox: a `neox prepare --preset` name, prepared on first use if data_path is missing",
    )
    data_cache_dir: str | None = Field(
        None, description="neox: where sample-index caches go (default: the run dir)"
    )
    # Packed documents: a sample holds several documents, each ended by the tokenizer's EOD token.
    eod_mask_loss: bool = Field(
        False, description="leave out of the loss every position whose input token is the EOD token"
    )
    reset_position_ids: bool = Field(
        False, description="neox (Megatron-LM's key): position ids restart at 0 after each EOD token"
    )
    reset_attention_mask: bool = Field(
        False,
        description="neox (Megatron-LM's key): tokens after an EOD token attend only within their document",
    )


# optimizer.type values the trainer builds (lower-cased): DeepSpeed's Adam variants run as AdamW.
# The memory-saving ones (neox; ``lion`` is GPT-NeoX's too) are in neoxcli.training.optim.
ADAM_TYPES = ("adam", "adamw", "cpu_adam", "cpu_torch_adam", "fused_adam")
LOW_MEMORY_TYPES = ("adamw8bit", "torchao_adamw8bit", "lion", "adafactor")
OPTIMIZER_TYPES = (*ADAM_TYPES, "sgd", *LOW_MEMORY_TYPES)


DEFAULT_LR = 6e-4
# What an optimizer uses for a key ``optimizer.params`` leaves out: the optimizer's own
# defaults, as GPT-NeoX's (Fused)Adam leaves them. So unset betas are (0.9, 0.999), not
# the (0.9, 0.95) that neox's default params spell out.
UNSET_PARAMS: dict[str, Any] = {"lr": DEFAULT_LR, "betas": (0.9, 0.999), "eps": 1e-8, "momentum": 0.0}


class OptimizerConfig(Section):
    type: str = "Adam"
    params: dict[str, Any] = Field(
        default_factory=lambda: {"lr": DEFAULT_LR, "betas": [0.9, 0.95], "eps": UNSET_PARAMS["eps"]}
    )

    @property
    def lr(self) -> float:
        return float(self.params.get("lr", DEFAULT_LR))

    def setting(self, name: str) -> Any:
        """``params[name]``, or what the optimizer itself uses when the file leaves it out."""
        return self.params.get(name, UNSET_PARAMS[name])

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        # The optimizer is built only once training has started: a bad value here would
        # otherwise pass `neox config validate` and stop the run with a traceback.
        if self.type.lower() not in OPTIMIZER_TYPES:
            raise ValueError(
                f"optimizer.type {self.type!r} is not supported by neox "
                "(use Adam, AdamW, SGD, adamw8bit, torchao_adamw8bit, lion or adafactor)"
            )
        for name in ("lr", "eps", "momentum"):
            value = self.params.get(name, 0.0)
            # The trainer reads these with float(), so a quoted "6e-4" is a number too.
            x = _finite(value)
            if x is None or x < 0:
                raise ValueError(f"optimizer.params.{name} must be a number >= 0, got {value!r}")
        betas = self.params.get("betas", [0.9, 0.95])
        if not (
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(not isinstance(b, str) and (x := _finite(b)) is not None and 0 <= x < 1 for b in betas)
        ):
            raise ValueError(f"optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")
        return self


def _finite(value: Any) -> float | None:
    """``float(value)`` when that is a finite number (booleans excluded), else None."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class SeqLengthWarmup(Section):
    """neox: train on shorter samples first, one stage after another, then at ``seq_length``.

    ``steps`` is the whole warmup (split evenly over the stages) or one count per stage.
    """

    stages: list[int] = Field(min_length=1)
    steps: int | list[int]

    @model_validator(mode="after")
    def _check(self) -> SeqLengthWarmup:
        if any(s < 1 for s in self.stages):
            raise ValueError(f"seq_length_warmup.stages must be lengths >= 1, got {self.stages}")
        counts = self.steps if isinstance(self.steps, list) else [self.steps]
        if isinstance(self.steps, list) and len(self.steps) != len(self.stages):
            raise ValueError(
                f"seq_length_warmup.steps lists {len(self.steps)} counts for {len(self.stages)} stages"
            )
        if any(c < 1 for c in counts) or (isinstance(self.steps, int) and self.steps < len(self.stages)):
            raise ValueError(
                f"seq_length_warmup.steps must give every stage at least one step, got {self.steps}"
            )
        return self


# DeepSpeed's legacy curriculum schedules and the schedule_config keys each one reads.
CURRICULUM_SCHEDULE_KEYS = {
    "fixed_linear": ("total_curriculum_step", "difficulty_step"),
    "fixed_root": ("total_curriculum_step", "difficulty_step", "root_degree"),
    "fixed_discrete": ("difficulty", "max_step"),
}


class CurriculumLearning(Section):
    """GPT-NeoX's ``curriculum_learning`` block (DeepSpeed's legacy sequence-length curriculum)."""

    enabled: bool = False
    curriculum_type: Literal["seqlen"] = "seqlen"
    min_difficulty: int | None = Field(None, ge=1)
    max_difficulty: int | None = Field(None, ge=1)
    schedule_type: Literal["fixed_linear", "fixed_root", "fixed_discrete"] = "fixed_linear"
    schedule_config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> CurriculumLearning:
        if not self.enabled:
            return self
        if self.min_difficulty is None or self.max_difficulty is None:
            raise ValueError("curriculum_learning needs min_difficulty and max_difficulty (sequence lengths)")
        if self.min_difficulty > self.max_difficulty:
            raise ValueError(
                f"curriculum_learning.min_difficulty ({self.min_difficulty}) is above max_difficulty "
                f"({self.max_difficulty})"
            )
        sc, want = self.schedule_config, CURRICULUM_SCHEDULE_KEYS[self.schedule_type]
        missing = [k for k in want if k not in sc]
        unknown = [k for k in sc if k not in want]
        if missing or unknown:
            what = f"lacks {', '.join(missing)}" if missing else f"has unknown key(s) {', '.join(unknown)}"
            raise ValueError(
                f"curriculum_learning.schedule_config {what} (schedule_type {self.schedule_type} "
                f"takes {', '.join(want)})"
            )
        if self.schedule_type == "fixed_discrete":
            diff, steps = sc["difficulty"], sc["max_step"]
            if not (_ints(diff) and _ints(steps) and steps and len(diff) == len(steps) + 1):
                raise ValueError(
                    "curriculum_learning.schedule_config: fixed_discrete needs lists of integers, "
                    f"one more difficulty than max_step (got difficulty {diff!r}, max_step {steps!r})"
                )
            if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[0] < 1:
                raise ValueError(
                    f"curriculum_learning.schedule_config.max_step must rise from >= 1, got {steps}"
                )
            if any(d < 1 for d in diff):
                raise ValueError(f"curriculum_learning.schedule_config.difficulty must be >= 1, got {diff}")
        else:
            for k in ("total_curriculum_step", "difficulty_step"):
                if not _ints([sc[k]]) or sc[k] < 1:
                    raise ValueError(f"curriculum_learning.schedule_config.{k} must be an integer >= 1")
            if "root_degree" in sc and ((x := _finite(sc["root_degree"])) is None or x <= 0):
                raise ValueError("curriculum_learning.schedule_config.root_degree must be a number > 0")
        return self


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


class TrainConfig(Section):
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    use_bnb_optimizer: bool = Field(False, description="bitsandbytes' 8-bit AdamW for Adam/AdamW (GPT-NeoX)")
    seq_length_warmup: SeqLengthWarmup | None = Field(
        None, description="neox: staged sequence lengths, e.g. {stages: [128, 256, 512], steps: 3000}"
    )
    curriculum_learning: CurriculumLearning | None = None
    train_micro_batch_size_per_gpu: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    train_batch_size: int | None = Field(None, ge=1)
    train_iters: int = Field(100, ge=0)
    lr_decay_style: Literal["constant", "linear", "cosine", "exponential"] = "linear"
    lr_decay_iters: int | None = Field(None, ge=0)
    lr_decay_fraction: float | None = Field(
        None, gt=0, le=1, description="decay over this fraction of train_iters when lr_decay_iters is unset"
    )
    warmup: float = Field(0.01, ge=0, le=1, description="fraction of lr_decay_iters spent warming up")
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    gradient_clipping: float = Field(1.0, ge=0)
    precision: Literal["auto", "fp32", "fp16", "bfloat16", "bf16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it and on CPUs with AMX, else fp32"
    )
    fp16: dict[str, Any] | None = None
    bf16: dict[str, Any] | None = None
    seed: int = Field(1234, ge=0, le=2**32 - 1)  # numpy's RandomState takes 32 bits
    eval_interval: int = Field(1000, ge=1)
    eval_iters: int = Field(100, ge=0)  # GPT-NeoX's default
    compile: bool = Field(False, description="neox: torch.compile the model")
    checkpoint_activations: bool = Field(
        False, description="recompute activations in the backward pass instead of keeping them"
    )
    checkpoint_num_layers: int = Field(1, ge=1, description="blocks recomputed together as one checkpoint")
    recompute_granularity: Literal["full", "selective"] = Field(
        "full",
        description="with checkpoint_activations: full = whole blocks (checkpoint_num_layers at a time); "
        "selective = only the attention core, the largest activation per FLOP (Megatron-LM's)",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_lr > self.optimizer.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= the optimizer lr ({self.optimizer.lr})")
        return self


class ParallelConfig(Section):
    model_parallel_size: int = Field(1, ge=1)
    pipe_parallel_size: int = Field(0, ge=0)
    zero_optimization: dict[str, Any] = Field(default_factory=lambda: {"stage": 0})
    prescale_gradients: bool = Field(False, description="DeepSpeed: divide gradients before the all-reduce")
    gradient_predivide_factor: float = Field(
        1.0, gt=0, description="DeepSpeed: divide by this before reducing"
    )
    communication_data_type: Literal["fp32", "fp16", "bf16"] | None = Field(
        None, description="DeepSpeed: the dtype gradients are reduced in (default: the training dtype)"
    )
    pipe_partition_method: str = Field(
        "type:transformer|mlp",
        description="how pipeline stages split the layers: parameters, uniform, or type:REGEX over layer "
        "class names (the default balances transformer blocks, as GPT-NeoX's does)",
    )


class CheckpointConfig(Section):
    save: str | None = None
    load: str | None = None
    load_tag: str | None = Field(
        None, description="neox: the tag in load to resume from (e.g. global_step100) instead of its 'latest'"
    )
    overwrite: bool = Field(
        False,
        description="neox: start from scratch, deleting the checkpoints already in save (neox train --overwrite)",
    )
    finetune: bool = Field(
        False,
        description="load only the weights of load (a checkpoint or a Hugging Face directory); start at "
        "iteration 0 with a fresh optimizer, LR schedule and data position",
    )
    no_load_optim: bool = Field(
        False, description="resume iteration, LR schedule and data position, with a fresh optimizer state"
    )
    no_load_rng: bool = Field(False, description="resume without restoring the random generators' states")
    checkpoint_factor: int | None = Field(None, ge=1, description="save every N iterations")
    keep_last_n_checkpoints: int | None = Field(None, ge=1)
    extra_save_iters: list[int] | None = None
    portable_checkpoint: bool = Field(
        True,
        description="neox: save each shard's full fp32 weights and optimizer state in the layout-free files "
        "only (each tensor once; resumes under any ZeRO stage, DP, TP or PP size); false: DeepSpeed's own "
        "files only (they resume only under the layout they were saved with)",
    )
    save_optimizer: bool = Field(
        True,
        description="neox: false saves the weights only (a release checkpoint for generation, evaluation "
        "and finetuning; it cannot be resumed exactly)",
    )
    no_save_optim: bool = Field(False, description="GPT-NeoX's spelling of save_optimizer: false")
    no_save_rng: bool = Field(
        False, description="save no RNG states: a resume restarts the random streams from the seed"
    )
    s3_path: str | None = Field(
        None,
        description="s3://bucket/prefix: each checkpoint is uploaded there in the background after it is "
        "saved ('latest' last)",
    )
    s3_chunk_size: int = Field(104_857_600, ge=5 * 1024 * 1024, description="bytes per part of an upload")
    s3_endpoint_url: str | None = Field(
        None, description="neox: an S3-compatible server's URL (default: AWS_ENDPOINT_URL, else AWS)"
    )

    @field_validator("s3_path")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("s3://") and value[5:].strip("/")):
            raise ValueError(f"must be an s3://bucket/prefix URL, not {value!r}")
        return value

    @property
    def keeps_optimizer(self) -> bool:
        """Whether checkpoints hold the optimizer state (``save_optimizer`` and not ``no_save_optim``)."""
        return self.save_optimizer and not self.no_save_optim


class LoggingConfig(Section):
    log_interval: int = Field(10, ge=1)
    tensorboard_dir: str | None = None
    use_wandb: bool = False
    wandb_project: str = "neox"
    wandb_group: str | None = None
    wandb_team: str | None = Field(None, description="the W&B entity (team or user) the run is logged under")
    wandb_host: str | None = Field(None, description="the W&B server, e.g. https://api.wandb.ai")
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="neox: one device's peak TFLOP/s for MFU (default: the known accelerators' table; "
        "on CPU the measured matmul rate)",
    )
    sample_at_end: bool = Field(True, description="neox: print a short generated sample after training")


class EvalConfig(Section):
    """lm-eval tasks for ``neox eval cfg.yml`` and for the final checkpoint of ``neox train`` (GPT-NeoX's keys)."""

    eval_tasks: list[str] | None = Field(
        None, description="lm-eval task names, globs or task YAML files; `neox train` evaluates its last save"
    )
    eval_results_prefix: str | None = Field(
        None, description="results go to {prefix}_eval_results_<date>.json, as GPT-NeoX names them"
    )

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _one_string(cls, value: Any) -> Any:
        """``eval_tasks: lambada,piqa`` (one string) means the list of its comma-separated names."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class LauncherConfig(Section):
    launcher: str = "local"
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    # Upper bounds: neoxcli.launchers.hostlist.MAX_HOSTS and neoxcli.launchers.hostfile.MAX_SLOTS,
    # so a typo is a config error instead of a launch plan too large to build.
    num_nodes: int = Field(-1, le=1 << 20)
    num_gpus: int | None = Field(None, ge=-1, le=4096)  # -1 or 0: every slot, as DeepSpeed reads it
    master_addr: str | None = None
    master_port: int = Field(29500, ge=1, le=65535)  # a TCP port: 0 would mean "any" to each rank
    launcher_args: list[str] = Field(default_factory=list)
    launcher_env: dict[str, str] = Field(default_factory=dict)
    ssh_port: int | None = Field(None, ge=1, le=65535)
    mpi_flavor: Literal["auto", "openmpi", "mpich", "mvapich", "intel"] = Field(
        "auto", description="neox: the mpi launcher's dialect; auto asks `mpirun --version`"
    )
    sbatch: bool = Field(
        False, description="neox: slurm launcher submits a batch script instead of running srun"
    )
    sbatch_args: list[str] = Field(
        default_factory=list, description="neox: extra sbatch flags (--partition=...)"
    )
    sbatch_template: str | None = Field(
        None, description="neox: batch script template (default: templates/slurm/neox.sbatch)"
    )
    # Not a GPT-NeoX key (it has none; DeepSpeed's default is 30 minutes for NCCL and gloo alike).
    distributed_timeout_minutes: float | None = Field(
        None,
        gt=0,
        le=24 * 60,
        description="neox: collective timeout, and how long a rank may go without a heartbeat or without "
        "finishing a step before the launcher ends the job naming it (default: 5 on CPU/gloo, 30 on NCCL)",
    )


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "tokenizer": TokenizerConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "launcher": LauncherConfig,
    "eval": EvalConfig,
}


class NeoXConfig(Section):
    """The whole resolved configuration of a run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    # Filled by neoxcli.config.loader; private so they never look like settings.
    _ignored_keys: dict[str, Any] = PrivateAttr(default_factory=dict)
    _sources: tuple[str, ...] = PrivateAttr(default=())
    _hf_id: str | None = PrivateAttr(default=None)

    @property
    def ignored_keys(self) -> dict[str, Any]:
        """GPT-NeoX keys that were accepted but are not acted on (name -> value), kept so they can be shown."""
        return self._ignored_keys

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the settings came from, in merge order (file paths, then ``--set``)."""
        return self._sources

    @property
    def hf_id(self) -> str | None:
        """The Hugging Face model the config files say they reproduce (``hf_id:``); the model ignores it."""
        return self._hf_id


def field_index() -> dict[str, str]:
    """Map every flat field name to its section ("hidden_size" -> "model")."""
    index: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for name in cls.model_fields:
            if name in index:  # pragma: no cover - a schema bug
                raise AssertionError(f"field {name!r} is in both {index[name]} and {section}")
            index[name] = section
    return index
