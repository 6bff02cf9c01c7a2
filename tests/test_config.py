"""Config loading, GPT-NeoX compatibility, error messages and derived values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neoxcli.config import (
    GPT_NEOX_KEYS,
    dump_config,
    field_index,
    load_config,
    padded_vocab_size,
    resolve,
    vocab_size_from_file,
)
from neoxcli.errors import ConfigError

# The shape of GPT-NeoX's configs/pythia/160M.yml (JSON-ish YAML with comments and a
# trailing comma), plus the data and tokenizer keys a local setup file adds.
PYTHIA_160M = """\
{
  # parallelism settings
  "pipe-parallel-size": 1,
  "model-parallel-size": 1,

  # model settings
  "num-layers": 12,
  "hidden-size": 768,
  "num-attention-heads": 12,
  "seq-length": 2048,
  "max-position-embeddings": 2048,
  "pos-emb": "rotary",
  "rotary-pct": 0.25,
  "no-weight-tying": true,
  "gpt-j-residual": true,
  "output-layer-parallelism": "column",

  "attention-config": [[["flash"], 12]],

  "scaled-upper-triang-masked-softmax-fusion": true,
  "bias-gelu-fusion": true,

  # init methods
  "init_method": "small_init",
  "output_layer_init_method": "wang_init",

  "optimizer": {
    "type": "Adam",
    "params": {
      "lr": 0.0006,
      "betas": [0.9, 0.95],
      "eps": 1.0e-8
    }
  },
  "min_lr": 0.00006,

  "zero_optimization": {
    "stage": 1,
    "allgather_partitions": true,
    "allgather_bucket_size": 500000000,
    "overlap_comm": true,
    "reduce_scatter": true,
    "reduce_bucket_size": 500000000,
    "contiguous_gradients": true,
    "cpu_offload": false
  },

  # batch size (trained on 32 gpus)
  "train_micro_batch_size_per_gpu": 32,
  "gas": 1,
  "data-impl": "mmap",
  "num_workers": 1,

  # activation checkpointing
  "checkpoint-activations": true,
  "checkpoint-num-layers": 1,
  "partition-activations": true,
  "synchronize-each-layer": true,

  # regularization
  "gradient_clipping": 1.0,
  "weight-decay": 0.1,
  "hidden-dropout": 0,
  "attention-dropout": 0,

  # precision settings
  "fp16": {
    "fp16": true,
    "enabled": true,
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "initial_scale_power": 12,
    "hysteresis": 2,
    "min_loss_scale": 1
  },

  "train-iters": 143000,
  "lr-decay-iters": 143000,
  "distributed-backend": "nccl",
  "lr-decay-style": "cosine",
  "warmup": 0.01,
  "checkpoint-factor": 1000,
  "extra-save-iters": [0,1,2,4,8,16,32,64,128,256,512],
  "eval-interval": 40000,
  "eval-iters": 10,

  "log-interval": 10,
  "steps_per_print": 10,
  "wall_clock_breakdown": true,

  "train-data-paths": ["data/pile_train_text_document"],
  "valid-data-paths": ["data/pile_val_text_document"],
  "test-data-paths": ["data/pile_test_text_document"],
  "vocab-file": "data/20B_tokenizer.json",
  "save": "checkpoints",
  "load": "checkpoints",
  "tensorboard-dir": "tensorboard",
  "log-dir": "logs",
  "use_wandb": false,
  "wandb_host": "https://api.wandb.ai",
  "launcher": "pdsh",
  "deepspeed_mpi": false,

  "tokenizer-type": "HFTokenizer",
}
"""

PYTHIA_IGNORED = [
    "output_layer_parallelism",
    "scaled_upper_triang_masked_softmax_fusion",
    "partition_activations",
    "synchronize_each_layer",
    "distributed_backend",
    "steps_per_print",
    "wall_clock_breakdown",
    "log_dir",
    "deepspeed_mpi",
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(*paths: Path, overrides: tuple[str, ...] = (), warnings: list[str] | None = None):
    sink: list[str] = [] if warnings is None else warnings
    return load_config([str(p) for p in paths], overrides, warn=sink.append)


def error_of(*paths: Path, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*paths, overrides=overrides)
    return info.value


# --------------------------------------------------------------------------- loading and merging


def test_flat_and_nested_files_load_the_same(tmp_path: Path) -> None:
    flat = write(
        tmp_path, "flat.yml", "num_layers: 3\nhidden_size: 64\nseed: 7\nzero_optimization: {stage: 2}\n"
    )
    nested = write(
        tmp_path,
        "nested.yml",
        "model:\n  num_layers: 3\n  hidden_size: 64\ntrain:\n  seed: 7\nparallel:\n  zero_optimization: {stage: 2}\n",
    )
    a, b = load(flat), load(nested)
    assert a.model_dump() == b.model_dump()
    assert (a.model.num_layers, a.model.hidden_size, a.train.seed) == (3, 64, 7)
    assert a.parallel.zero_optimization == {"stage": 2}


def test_hyphenated_and_mixed_keys(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, "c.yml", "num-layers: 5\nmodel:\n  hidden-size: 96\n  num-attention-heads: 3\n")
    )
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (5, 96, 3)


def test_same_key_twice_in_one_file_is_an_error(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "c.yml", "hidden-size: 64\nhidden_size: 128\n"))
    assert "'hidden_size' is given twice in" in err.message and "c.yml" in err.message


def test_files_merge_left_to_right(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yml",
        "model: {num_layers: 2, hidden_size: 64}\nseed: 1\n"
        "zero_optimization: {stage: 1, overlap_comm: true}\n"
        "optimizer: {type: Adam, params: {lr: 0.001, betas: [0.9, 0.99]}}\n",
    )
    b = write(
        tmp_path,
        "b.yml",
        "model: {num_layers: 4}\nseed: 2\nzero_optimization: {stage: 2}\noptimizer: {type: SGD, params: {lr: 0.1}}\n",
    )
    cfg = load(a, b)
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == 64  # sections merge key by key
    assert cfg.train.seed == 2
    assert cfg.parallel.zero_optimization == {"stage": 2}  # dict values are replaced whole
    assert cfg.train.optimizer.type == "SGD" and cfg.train.optimizer.params == {"lr": 0.1}
    assert cfg.sources == (str(a), str(b))


def test_set_overrides(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "zero_optimization: {stage: 1, overlap_comm: true}\nnum_layers: 2\n")
    cfg = load(
        a,
        overrides=(
            "hidden_size=256",  # flat
            "model.num_attention_heads=8",  # section-qualified
            "zero_optimization.stage=2",  # inside a dict value: the rest stays
            "train.optimizer.params.lr=3e-4",
            "no-weight-tying=true",
            "train_data_paths=[a, b]",
            "min_lr=1e-5",
            "save=",
            "num_layers=6",
        ),
    )
    assert cfg.model.hidden_size == 256 and cfg.model.num_attention_heads == 8
    assert cfg.parallel.zero_optimization == {"stage": 2, "overlap_comm": True}
    assert cfg.train.optimizer.params["lr"] == 3e-4 and isinstance(cfg.train.optimizer.params["lr"], float)
    assert cfg.train.optimizer.params["betas"] == [0.9, 0.95]  # default params kept
    assert cfg.model.no_weight_tying is True
    assert cfg.data.train_data_paths == ["a", "b"]
    assert cfg.train.min_lr == 1e-5
    assert cfg.checkpoint.save is None
    assert cfg.model.num_layers == 6
    assert cfg.sources == (str(a), "--set")


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "c.yml", "optimizer: {type: Adam, params: {lr: 6e-4}}\nmin_lr: 6E-5\n"))
    assert cfg.train.optimizer.params["lr"] == pytest.approx(6e-4)
    assert isinstance(cfg.train.optimizer.params["lr"], float)
    assert cfg.train.min_lr == pytest.approx(6e-5)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["hidden_size"])
    with pytest.raises(ConfigError, match="unknown key 'hiden_size' in --set") as info:
        load_config([], ["hiden_size=3"])
    assert info.value.hint == "did you mean 'hidden_size'?"
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config([], ["seed.value=1"])


def test_launcher_is_a_field_or_a_section(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "a.yml", "launcher: slurm\n"))
    assert cfg.launcher.launcher == "slurm"
    cfg = load(write(tmp_path, "b.yml", "launcher: {launcher: openmpi, num_gpus: 4}\n"))
    assert (cfg.launcher.launcher, cfg.launcher.num_gpus) == ("openmpi", 4)
    cfg = load_config([], ["launcher=pdsh", "launcher.num_nodes=2"])
    assert (cfg.launcher.launcher, cfg.launcher.num_nodes) == ("pdsh", 2)


def test_deepspeed_checkpoint_block_is_not_the_checkpoint_section(tmp_path: Path) -> None:
    warnings: list[str] = []
    cfg = load(
        write(tmp_path, "a.yml", "checkpoint: {tag_validation: Warn}\nsave: ckpt\n"), warnings=warnings
    )
    assert cfg.checkpoint.save == "ckpt"
    assert cfg.ignored_keys == {"checkpoint": {"tag_validation": "Warn"}}
    assert len(warnings) == 1


def test_single_path_and_gpt_neox_short_name(tmp_path: Path) -> None:
    write(tmp_path, "small.yml", "num_layers: 3\n")
    assert load_config(str(tmp_path / "small.yml")).model.num_layers == 3
    assert load_config([tmp_path / "small"]).model.num_layers == 3  # GPT-NeoX's `small` for `small.yml`


def test_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"num-layers": 3, "train": {"seed": 9}}))
    cfg = load(path)
    assert (cfg.model.num_layers, cfg.train.seed) == (3, 9)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "empty.yml", "# nothing\n")).model.num_layers == 2


# --------------------------------------------------------------------------- GPT-NeoX compatibility


def test_pythia_config_loads_with_one_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    cfg = load(write(tmp_path, "160M.yml", PYTHIA_160M), warnings=warnings)
    assert len(warnings) == 1
    assert warnings[0].startswith("ignoring GPT-NeoX keys neox does not act on yet: ")
    named = warnings[0].split(": ", 1)[1].split(", ")
    assert named == PYTHIA_IGNORED
    assert list(cfg.ignored_keys) == PYTHIA_IGNORED
    assert cfg.ignored_keys["distributed_backend"] == "nccl"

    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length) == (12, 768, 12, 2048)
    assert (m.pos_emb, m.rotary_pct, m.gpt_j_residual, m.no_weight_tying) == ("rotary", 0.25, True, True)
    assert (m.init_method, m.output_layer_init_method, m.bias_gelu_fusion) == (
        "small_init",
        "wang_init",
        True,
    )
    t = cfg.train
    assert t.optimizer.type == "Adam" and t.optimizer.lr == 0.0006 and t.min_lr == 0.00006
    assert t.precision == "fp16"  # implied by the fp16 block
    assert t.gradient_accumulation_steps == 1  # from `gas`
    assert (t.train_iters, t.lr_decay_style, t.weight_decay) == (143000, "cosine", 0.1)
    assert cfg.parallel.zero_optimization["stage"] == 1 and cfg.parallel.pipe_parallel_size == 1
    assert (
        cfg.tokenizer.tokenizer_type == "HFTokenizer"
        and cfg.tokenizer.vocab_file == "data/20B_tokenizer.json"
    )
    assert cfg.data.train_data_paths == ["data/pile_train_text_document"]
    assert cfg.checkpoint.checkpoint_factor == 1000 and cfg.checkpoint.extra_save_iters[-1] == 512
    assert cfg.launcher.launcher == "pdsh"

    d = resolve(cfg, world_size=32, vocab_size=50277)
    assert (d.data_parallel_size, d.micro_batch, d.gradient_accumulation_steps, d.train_batch_size) == (
        32,
        32,
        1,
        1024,
    )
    assert (d.lr_decay_iters, d.warmup_iters, d.precision, d.zero_stage) == (143000, 1430.0, "fp16", 1)
    assert d.padded_vocab_size == 50304


def test_saved_config_loads_back_equal(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "160M.yml", PYTHIA_160M))
    for flat in (False, True):
        warnings: list[str] = []
        again = load(write(tmp_path, f"run-{flat}.yml", dump_config(cfg, flat=flat)), warnings=warnings)
        assert again.model_dump() == cfg.model_dump()
        assert warnings == []


def test_known_gpt_neox_names() -> None:
    for name in (
        "attention_config",
        "zero_optimization",
        "train_micro_batch_size_per_gpu",
        "hostfile",
        "gas",
    ):
        assert name in GPT_NEOX_KEYS
    assert all("-" not in name for name in GPT_NEOX_KEYS)
    # every neox field that GPT-NeoX also has keeps GPT-NeoX's spelling
    assert {"hidden_size", "num_layers", "seq_length", "pos_emb", "rotary_pct"} <= set(field_index())


def test_aliases_yield_to_the_real_key(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, "a.yml", "gradient_accumulation_steps: 4\ngas: 2\nclip_grad: 0.5\nbatch_size: 3\n")
    )
    assert cfg.train.gradient_accumulation_steps == 4
    assert cfg.train.gradient_clipping == 0.5 and cfg.train.train_micro_batch_size_per_gpu == 3
    cfg = load_config([], ["lr=1e-3", "zero_stage=3"])
    assert cfg.train.optimizer.lr == 1e-3 and cfg.parallel.zero_optimization["stage"] == 3


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("norm: te_rmsnorm\n", "norm", "rmsnorm"),
        ("norm: te_layernorm\n", "norm", "layernorm"),
        ("activation: swiglu\n", "activation", "swiglu"),
        ("activation: silu\n", "activation", "silu"),
        ("pos_emb: alibi\n", "pos_emb", "alibi"),
    ],
)
def test_value_translations(tmp_path: Path, text: str, field: str, expected: str) -> None:
    assert getattr(load(write(tmp_path, "a.yml", text)).model, field) == expected


def test_data_impl_infer_means_mmap(tmp_path: Path) -> None:
    assert load(write(tmp_path, "a.yml", "data_impl: infer\n")).data.data_impl == "mmap"
    assert "not supported" in error_of(write(tmp_path, "b.yml", "data_impl: cached\n")).message


def test_llama_mlp_type(tmp_path: Path) -> None:
    warnings: list[str] = []
    text = "mlp_type: llama\nactivation: silu\nhidden_size: 4096\nnum_attention_heads: 32\n"
    cfg = load(write(tmp_path, "a.yml", text), warnings=warnings)
    assert (cfg.model.activation, cfg.model.intermediate_size, cfg.model.use_bias_in_mlp) == (
        "swiglu",
        3 * 11008,  # the older Llama MLP's branch of 11008, in today's sizing rule
        False,
    )
    from neoxcli.model import mlp_width

    assert mlp_width(cfg.model) == 11008
    assert warnings == [] and "mlp_type" not in cfg.ignored_keys


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pos-emb: rpe\n", "model.pos_emb: 'rpe'"),
        ("activation: mish\n", "model.activation: 'mish' is not supported"),
        ("activation: softsign\n", "model.activation: 'softsign' is not supported"),
        ("norm: scalenorm\n", "model.norm: 'scalenorm' is not supported"),
        ("precision: fp8\n", "'fp8' is not supported"),
    ],
)
def test_unsupported_gpt_neox_values(tmp_path: Path, text: str, fragment: str) -> None:
    err = error_of(write(tmp_path, "a.yml", text))
    assert fragment in err.message and "(in " in err.message and err.hint


@pytest.mark.parametrize(
    ("text", "precision"),
    [
        ("fp16: {enabled: true}\n", "fp16"),
        ("bf16: {enabled: true}\n", "bfloat16"),
        ("fp16: {type: bfloat16, enabled: true}\n", "bfloat16"),
        ("fp16: {enabled: false}\n", "auto"),
        ("precision: bfloat16\nbf16: {enabled: true}\n", "bfloat16"),
        ("precision: bf16\nbf16: {enabled: true}\n", "bf16"),
    ],
)
def test_precision_blocks(tmp_path: Path, text: str, precision: str) -> None:
    assert load(write(tmp_path, "a.yml", text)).train.precision == precision


def test_precision_conflicts(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "a.yml", "precision: fp32\nfp16: {enabled: true}\n"))
    assert "train.precision is 'fp32' but the fp16 block enables fp16" in err.message
    err = error_of(write(tmp_path, "b.yml", "fp16: {enabled: true}\nbf16: {enabled: true}\n"))
    assert "both the fp16 and the bf16 block" in err.message


def test_default_warning_goes_to_stderr_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_config([write(tmp_path, "a.yml", "steps_per_print: 10\nwall-clock-breakdown: true\n")])
    err = capsys.readouterr().err
    assert (
        err
        == "warning: ignoring GPT-NeoX keys neox does not act on yet: steps_per_print, wall_clock_breakdown\n"
    )


# --------------------------------------------------------------------------- errors


def test_typo_names_the_file_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "cfg.yml", "hiden_size: 3\n")
    err = error_of(path)
    assert err.message == f"unknown key 'hiden_size' in {path}"
    assert err.hint == "did you mean 'hidden_size'?"


def test_typo_inside_a_section(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "cfg.yml", "model:\n  num_layer: 3\n"))
    assert "unknown key 'model.num_layer'" in err.message and err.hint == "did you mean 'num_layers'?"
    err = error_of(write(tmp_path, "cfg2.yml", "model:\n  seed: 3\n"))
    assert "seed is a train setting, not a model one" in err.message


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "cfg.yml", "zzzqqq: 1\n"))
    assert "unknown key 'zzzqqq'" in err.message and err.hint


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yml", "train_iters: ten\n")
    assert error_of(path).message == f"train.train_iters: expected an integer, got 'ten' (in {path})"


def test_wrong_literal_and_nested_unknown(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "a.yml", "lr_decay_style: cosin\n"))
    assert err.message.startswith("train.lr_decay_style: expected one of") and "got 'cosin'" in err.message
    err = error_of(write(tmp_path, "b.yml", "optimizer: {type: Adam, parms: {}}\n"))
    assert (
        err.message.startswith("train.optimizer.parms: unknown key") and err.hint == "did you mean 'params'?"
    )


def test_hidden_size_not_divisible_by_heads_names_both_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "hidden_size: 100\n")
    b = write(tmp_path, "b.yml", "num_attention_heads: 3\n")
    assert error_of(a, b).message == (
        f"model.hidden_size: hidden_size (100) must be divisible by num_attention_heads (3) (from {a}, {b})"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rotary_pct: 1.5\n", "model.rotary_pct: rotary_pct must be in (0, 1], got 1.5"),
        ("rotary_pct: 0\n", "model.rotary_pct: rotary_pct must be in (0, 1], got 0"),
        (
            "seq_length: 4096\nmax_position_embeddings: 2048\n",
            "model.max_position_embeddings: max_position_embeddings",
        ),
        ("min_lr: 0.01\nlr: 0.001\n", "train.min_lr: min_lr (0.01) must be <= the optimizer lr (0.001)"),
        ("num_layers: 0\n", "model.num_layers: must be >= 1, got 0"),
        (
            "num_attention_heads: 6\nmodel_parallel_size: 4\nhidden_size: 96\n",
            "divisible by model_parallel_size",
        ),
        ("zero_optimization: {stage: 4}\n", "zero_optimization.stage: expected 0, 1, 2 or 3"),
        ("train_data_paths: [a, b]\ntrain_data_weights: [1]\n", "train_data_weights has 1 entries"),
        ("model: 3\n", "must be a mapping of model settings"),
    ],
)
def test_value_checks(tmp_path: Path, text: str, fragment: str) -> None:
    err = error_of(write(tmp_path, "a.yml", text))
    assert fragment in err.message
    assert "\n" not in err.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("lr: null\n", "train.optimizer: optimizer.params.lr must be a number >= 0, got None"),
        ("lr: [1]\n", "optimizer.params.lr must be a number"),
        ("lr: fast\n", "optimizer.params.lr must be a number"),
        ("optimizer: {type: Adam, params: {lr: 0.001, eps: x}}\n", "optimizer.params.eps must be"),
        ("optimizer: {type: Adam, params: {lr: 0.001, betas: 0.9}}\n", "optimizer.params.betas must be"),
        ("optimizer: {type: Adam, params: {lr: 0.001, betas: [0.9]}}\n", "optimizer.params.betas must be"),
        ("attention_config: [3]\n", "model.attention_config: attention_config entries must be"),
        ("attention_config: [[[global]]]\n", "model.attention_config: attention_config entries must be"),
        ("attention_config: [[[global], two]]\n", "model.attention_config: attention_config entries must be"),
    ],
)
def test_values_the_trainer_reads_late_are_checked_on_load(tmp_path: Path, text: str, fragment: str) -> None:
    """Optimizer params and attention_config were tracebacks, or passed validation and failed in training."""
    path = write(tmp_path, "a.yml", text)
    err = error_of(path)
    assert fragment in err.message and err.message.endswith(f"(in {path})")


def test_quoted_learning_rate_still_reads_as_a_number(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "a.yml", 'lr: "6e-4"\nattention_config: [[[global], 2]]\n'))
    assert cfg.train.optimizer.lr == 6e-4 and cfg.model.attention_types == ["global", "global"]


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yml", "model:\n  num_layers: 2\n   hidden_size: 3\n")
    err = error_of(path)
    assert err.message.startswith(f"invalid YAML in {path} at line 3:")


def test_missing_file_and_bad_top_level(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert error_of(missing).message == f"config file not found: {missing}"
    assert "top level" in error_of(write(tmp_path, "list.yml", "- 1\n- 2\n")).message
    assert "directory" in error_of(tmp_path).message


# --------------------------------------------------------------------------- derived values


def cfg_with(*overrides: str):
    return load_config([], overrides, warn=lambda _: None)


@pytest.mark.parametrize(
    ("given", "world", "expected"),
    [
        # (train_batch_size, micro, accum), world size -> (train, micro, accum, dp)
        ((None, 4, None), 1, (4, 4, 1, 1)),
        ((None, 4, None), 8, (32, 4, 1, 8)),
        ((None, 4, 2), 8, (64, 4, 2, 8)),
        ((64, 4, None), 8, (64, 4, 2, 8)),
        ((64, None, 2), 8, (64, 4, 2, 8)),
        ((64, None, None), 8, (64, 8, 1, 8)),
        ((64, 4, 2), 8, (64, 4, 2, 8)),
    ],
)
def test_batch_triplet(given: tuple, world: int, expected: tuple) -> None:
    names = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    cfg = cfg_with(*(f"{n}={v}" for n, v in zip(names, given, strict=True) if v is not None))
    d = resolve(cfg, world_size=world)
    assert (d.train_batch_size, d.micro_batch, d.gradient_accumulation_steps, d.dp_size) == expected


@pytest.mark.parametrize(
    ("overrides", "world", "fragment"),
    [
        (
            ("train_batch_size=64", "train_micro_batch_size_per_gpu=4", "gradient_accumulation_steps=4"),
            8,
            "must equal",
        ),
        (("train_batch_size=60", "train_micro_batch_size_per_gpu=8"), 1, "is not divisible"),
        (("train_batch_size=10",), 4, "is not divisible"),
        (("gradient_accumulation_steps=4",), 1, "no batch size"),
        ((), 1, "no batch size"),
    ],
)
def test_batch_triplet_errors(overrides: tuple[str, ...], world: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        resolve(cfg_with(*overrides), world_size=world)
    assert info.value.hint


def test_data_parallel_size_and_world_size() -> None:
    cfg = cfg_with("train_micro_batch_size_per_gpu=2", "model_parallel_size=2", "pipe_parallel_size=2")
    assert resolve(cfg, world_size=8).data_parallel_size == 2
    with pytest.raises(ConfigError, match="not divisible by model_parallel_size"):
        resolve(cfg, world_size=6)
    cfg = cfg_with("train_micro_batch_size_per_gpu=2", "num_gpus=4", "num_nodes=2")
    assert resolve(cfg).world_size == 8 and resolve(cfg).data_parallel_size == 8
    assert resolve(cfg_with("train_micro_batch_size_per_gpu=2")).world_size == 1
    assert (
        resolve(cfg_with("train_micro_batch_size_per_gpu=2", "pipe_parallel_size=1"), 4).is_pipe_parallel
        is False
    )


def test_padded_vocab() -> None:
    assert padded_vocab_size(50277, 128, 1) == 50304
    assert padded_vocab_size(50277, 128, 2) == 50432
    assert padded_vocab_size(50304, 128, 1) == 50304
    cfg = cfg_with("train_micro_batch_size_per_gpu=2", "model_parallel_size=2")
    assert resolve(cfg, world_size=2, vocab_size=50277).padded_vocab_size == 50432
    assert resolve(cfg, world_size=2).padded_vocab_size is None


def test_lr_schedule_lengths() -> None:
    d = resolve(cfg_with("train_micro_batch_size_per_gpu=1", "train_iters=1000", "warmup=0.015"))
    assert (d.lr_decay_iters, d.warmup_iters) == (1000, 15.0)
    d = resolve(
        cfg_with("train_micro_batch_size_per_gpu=1", "train_iters=1000", "lr_decay_iters=800", "warmup=0.01")
    )
    assert (d.lr_decay_iters, d.warmup_iters) == (800, 8.0)
    d = resolve(cfg_with("train_micro_batch_size_per_gpu=1", "train_iters=1001", "lr_decay_fraction=0.5"))
    assert d.lr_decay_iters == 500
    assert resolve(cfg_with("train_micro_batch_size_per_gpu=1", "train_iters=0")).lr_decay_iters == 1


@pytest.mark.parametrize(
    ("precision", "bf16_ok", "expected"),
    [("auto", True, "bf16"), ("auto", False, "fp32"), ("bfloat16", False, "bf16"), ("fp16", True, "fp16")],
)
def test_precision_resolution(precision: str, bf16_ok: bool, expected: str) -> None:
    cfg = cfg_with("train_micro_batch_size_per_gpu=1", f"precision={precision}")
    assert resolve(cfg, bf16_supported=bf16_ok).precision == expected


def test_precision_of_configs_built_in_code() -> None:
    from neoxcli.config import NeoXConfig

    base = {"train_micro_batch_size_per_gpu": 1}
    cfg = NeoXConfig.model_validate({"train": {**base, "fp16": {"enabled": True}}})
    assert resolve(cfg, bf16_supported=True).precision == "fp16"
    cfg = NeoXConfig.model_validate({"train": {**base, "bf16": {"enabled": True}}})
    assert resolve(cfg).precision == "bf16"


def test_numbers_are_accepted_for_text_fields() -> None:
    cfg = cfg_with("wandb_group=2024", "launcher_env.OMP_NUM_THREADS=4")
    assert cfg.logging.wandb_group == "2024" and cfg.launcher.launcher_env == {"OMP_NUM_THREADS": "4"}


def test_vocab_size_from_tokenizer_json(tmp_path: Path) -> None:
    tok = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}},
        "added_tokens": [{"id": 3, "content": "<|endoftext|>"}, {"id": 1, "content": "b"}],
    }
    assert vocab_size_from_file(write(tmp_path, "tokenizer.json", json.dumps(tok))) == 4
    assert vocab_size_from_file(write(tmp_path, "vocab.json", json.dumps({"x": 0, "y": 1}))) == 2
    assert vocab_size_from_file(tmp_path / "missing.json") is None
    assert vocab_size_from_file(write(tmp_path, "bad.json", "{not json")) is None
