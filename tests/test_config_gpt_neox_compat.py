"""GPT-NeoX config forms: keys and values its own config files use, and the ones neox refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from neoxcli.config import default_world_size, load_config, resolve
from neoxcli.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "a.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config([path], warn=lambda _: None)
    return info.value


def test_save_interval_of_older_releases_is_checkpoint_factor(tmp_path: Path) -> None:
    # GPT-NeoX's 2-7B, 6-7B, 13B, 20B and XL files still write save-interval.
    cfg = load_config([write(tmp_path, '{\n  "save-interval": 500,\n}\n')], warn=lambda _: None)
    assert cfg.checkpoint.checkpoint_factor == 500
    both = write(tmp_path, "save_interval: 500\ncheckpoint_factor: 250\n", "b.yml")
    assert load_config([both]).checkpoint.checkpoint_factor == 250


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('"moe_num_experts": 8,\n', "moe_num_experts: mixture-of-experts"),
        ('"num-unique-layers": 2,\n', "num_unique_layers: sharing weights"),
        ('"use_qk_layernorm": true,\n', "use_qk_layernorm:"),
        ('"opt_pos_emb_offset": 2,\n', "opt_pos_emb_offset:"),
        ('"soft_prompt_tuning": {"num_tokens": 10},\n', "soft_prompt_tuning:"),
        ('"train_impl": "dpo",\n', "train_impl: training objectives"),
        ('"use_mup": true,\n"mup_attn_temp": 2.0,\n', "mup_attn_temp:"),
    ],
)
def test_keys_that_change_the_model_are_refused(tmp_path: Path, text: str, key: str) -> None:
    err = error_of(write(tmp_path, "{\n" + text + "}\n"))
    assert err.message.startswith(key) and "not supported by neox" in err.message
    assert "(in " in err.message and err.hint and "drop" in err.hint


@pytest.mark.parametrize(
    "text",
    [
        "moe_num_experts: 1\n",
        "use_qk_layernorm: false\n",
        "soft_prompt_tuning: {enabled: false}\n",
        "train_impl: normal\n",
        "mup_attn_temp: 2.0\n",  # inert without use_mup, as in GPT-NeoX
    ],
)
def test_their_defaults_are_only_noted(tmp_path: Path, text: str) -> None:
    warnings: list[str] = []
    load_config([write(tmp_path, text)], warn=warnings.append)
    assert len(warnings) == 1


def test_expansion_factor_sizes_the_mlp(tmp_path: Path) -> None:
    from neoxcli.model import mlp_width

    warnings: list[str] = []
    cfg = load_config([write(tmp_path, "hidden_size: 256\nexpansion_factor: 8\n")], warn=warnings.append)
    assert cfg.model.intermediate_size == 2048 and mlp_width(cfg.model) == 2048 and warnings == []
    err = error_of(write(tmp_path, "expansion_factor: 8\nintermediate_size: 512\n", "b.yml"))
    assert "not both" in err.message
    # Gated: 8h scaled by 2/3 and split between gate and value, as GPT-NeoX sizes it.
    gated = load_config(
        [write(tmp_path, "hidden_size: 256\nexpansion_factor: 8\nactivation: swiglu\n", "c.yml")]
    )
    assert mlp_width(gated.model) == int(2048 * 2 / 3) // 2 == 682


def test_gpt_neox_gated_intermediate_size_builds_their_width(tmp_path: Path) -> None:
    """GPT-NeoX's Llama-2-7B file writes 32768 (gate and value, before 2/3) for a branch of 11008."""
    from neoxcli.model import mlp_width

    text = '{\n  "hidden_size": 4096,\n  "intermediate_size": 32768,\n  "activation": "swiglu",\n  "mlp_multiple_of": 256,\n}\n'
    cfg = load_config([write(tmp_path, text)])
    assert mlp_width(cfg.model) == 11008
    cfg.train.train_micro_batch_size_per_gpu = 1
    assert resolve(cfg, world_size=1).mlp_width == 11008  # what `neox config show` prints under derived
    # Without intermediate_size a gated branch is a third of 4h (rounded), not Llama's 8h/3.
    plain = "hidden_size: 4096\nactivation: swiglu\nmlp_multiple_of: 256\n"
    assert mlp_width(load_config([write(tmp_path, plain, "b.yml")]).model) == 5632
    # The older mlp_type: llama form keeps its Llama width.
    old = "hidden_size: 4096\nmlp_type: llama\nactivation: silu\n"
    assert mlp_width(load_config([write(tmp_path, old, "c.yml")]).model) == 11008


def test_unsupported_optimizer_type_fails_on_load(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, 'optimizer: {type: "sm3", params: {lr: 1.0e-4}}\n'))
    assert "optimizer.type 'sm3' is not supported" in err.message
    cfg = load_config([write(tmp_path, "optimizer: {type: cpu_adam, params: {lr: 1.0e-4}}\n", "b.yml")])
    assert cfg.train.optimizer.type == "cpu_adam"


def test_without_num_gpus_the_job_is_one_model_replica(tmp_path: Path) -> None:
    # GPT-NeoX's pythia/6-9B.yml: model-parallel 2, no GPU count anywhere.
    text = "model-parallel-size: 2\npipe-parallel-size: 1\ntrain_micro_batch_size_per_gpu: 8\n"
    cfg = load_config([write(tmp_path, text)])
    assert default_world_size(cfg) == 2 and resolve(cfg).data_parallel_size == 1
    cfg = load_config([write(tmp_path, "pipe-parallel-size: 4\nmodel-parallel-size: 2\n", "b.yml")])
    assert default_world_size(cfg) == 8


def test_optimizer_params_neox_does_not_read_are_named(tmp_path: Path) -> None:
    warnings: list[str] = []
    text = "optimizer: {type: Adam, params: {lr: 1.0e-4, amsgrad: true, eps: 1.0e-8}}\n"
    load_config([write(tmp_path, text)], warn=warnings.append)
    assert warnings == ["ignoring GPT-NeoX key neox does not act on yet: optimizer.params.amsgrad"]
    err = error_of(
        write(tmp_path, "optimizer: {type: Adam, params: {lr: 1.0e-4, weight_decay: 0.1}}\n", "b.yml")
    )
    assert err.message.startswith(
        "optimizer.params.weight_decay: weight decay is the top-level weight_decay key"
    )
    assert err.hint == "move it: weight_decay: 0.1"
