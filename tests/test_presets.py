"""Presets in templates/presets: every one loads and validates, and sizes match the released models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neoxcli.cli import main
from neoxcli.config import dump_config, load_config, padded_vocab_size, resolve
from neoxcli.config.params import count_parameters
from neoxcli.config.presets import preset_dir, preset_names, resolve_config_path

# Released Hugging Face parameter counts (Pythia: ../shared/formats.md) and padded vocabularies.
PYTHIA = {
    "pythia-70m": (70_426_624, 50304),
    "pythia-160m": (162_322_944, 50304),
    "pythia-410m": (405_334_016, 50304),
    "pythia-1b": (1_011_781_632, 50304),
    "pythia-1.4b": (1_414_647_808, 50304),
    "pythia-2.8b": (2_775_208_960, 50304),
    "pythia-6.9b": (6_857_302_016, 50432),
    "pythia-12b": (11_846_072_320, 50688),
}
OTHERS = {
    "gpt-neox-20b": 20_554_567_680,
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "gpt-j-6b": 6_050_882_784,  # Transformers' GPTJForCausalLM with vocab_size 50400
}
EXPECTED_PRESETS = {
    *(f"pythia-{s}" for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")),
    "gpt-j-6b",
    "gpt-neox-20b",
    *(f"gpt2-{s}" for s in ("small", "medium", "large", "xl")),
    *(f"gpt3-{s}" for s in ("125m", "350m", "760m", "1.3b", "2.7b", "6.7b", "13b", "20b")),
    *(f"cerebras-gpt-{s}" for s in ("111m", "256m", "590m", "1.3b", "2.7b", "6.7b", "13b")),
    "llama-7b",
    "llama-13b",
    "llama2-7b",
    "llama2-13b",
    "gptstar-6l-1024",
}


def params(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, int]:
    code = main(["config", "show", *args, "--params"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return yaml.safe_load(out)["parameters"]


def test_all_expected_presets_exist() -> None:
    assert EXPECTED_PRESETS <= set(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_loads_validates_and_names_its_source(name: str) -> None:
    path = preset_dir() / f"{name}.yml"
    header = path.read_text().split("\n\n")[0].splitlines()
    assert all(line.startswith("#") for line in header)
    assert any("Hugging Face:" in line for line in header)
    warnings: list[str] = []
    cfg = load_config([path], warn=warnings.append)
    assert not warnings, warnings
    par = cfg.parallel
    resolve(cfg, world_size=par.model_parallel_size * max(par.pipe_parallel_size, 1))
    assert cfg.model.num_layers >= 1 and cfg.model.hidden_size % cfg.model.num_attention_heads == 0


@pytest.mark.parametrize("name", sorted(PYTHIA))
def test_pythia_presets_give_the_released_counts(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    total, padded = PYTHIA[name]
    got = params(capsys, name)
    assert (got["total"], got["padded_vocab_size"], got["vocab_size"]) == (total, padded, 50277)


def test_vocab_padding_rule_of_the_model_parallel_pythias() -> None:
    # 50,277 tokens: a multiple of 128 x mp 1 is 50304, of 128 x 2 is 50432, of 128 x 4 is 50688.
    assert [padded_vocab_size(50277, 128, mp) for mp in (1, 2, 4)] == [50304, 50432, 50688]
    for name, mp in (("pythia-6.9b", 2), ("pythia-12b", 4), ("gpt-neox-20b", 2)):
        cfg = load_config([preset_dir() / f"{name}.yml"])
        assert (cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size) == (128, mp)


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_released_counts(name: str) -> None:
    cfg = load_config([preset_dir() / f"{name}.yml"])
    vocab = {"gpt": 50257, "lla": 32000}.get(name[:3], 50277)
    padded = padded_vocab_size(
        vocab, cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size
    )
    assert count_parameters(cfg.model, padded)[0] == OTHERS[name]


def test_params_output_and_vocab_option(capsys: pytest.CaptureFixture[str]) -> None:
    got = params(capsys, "pythia-70m")
    assert got["non_embedding"] == 18_915_328  # 6 x (12h^2 + 13h) + 2h, h = 512
    got = params(capsys, "pythia-70m", "--vocab-size", "1000")
    assert got["padded_vocab_size"] == 1024 and got["total"] == 18_915_328 + 2 * 1024 * 512
    # tied embeddings count once, and the learned positions are embeddings too
    got = params(capsys, "gpt2-small")
    assert got["total"] - got["non_embedding"] == (50257 + 1024) * 768


def test_params_needs_no_memory_for_20b(capsys: pytest.CaptureFixture[str]) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert params(capsys, "gpt-neox-20b")["total"] == 20_554_567_680
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: far below 80 GB


def test_preset_names_resolve_but_files_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_config_path("pythia-70m") == str(preset_dir() / "pythia-70m.yml")
    assert resolve_config_path("pythia-70m.yml") == str(preset_dir() / "pythia-70m.yml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pythia-70m.yml").write_text("num_layers: 1\n")
    assert resolve_config_path("pythia-70m") == "pythia-70m"
    assert resolve_config_path("no-such-preset") == "no-such-preset"


def test_presets_command_lists_hf_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "presets"]) == 0
    out = capsys.readouterr().out
    assert "EleutherAI/pythia-160m" in out and "meta-llama/Llama-2-7b-hf" in out
    assert len(out.splitlines()) == len(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_carries_its_hf_id_as_a_key(name: str) -> None:
    import re

    text = (preset_dir() / f"{name}.yml").read_text()
    assert "hf_id" in yaml.safe_load(text)
    named = re.search(r"Hugging Face: ([\w.-]+/[\w.-]+)$", text.splitlines()[0])
    cfg = load_config([name], warn=pytest.fail)
    assert cfg.hf_id == (named.group(1) if named else None)
    assert "hf_id" not in dump_config(cfg)  # it describes the file; the model and run config ignore it


def test_hf_id_must_be_an_id(tmp_path: Path) -> None:
    from neoxcli.errors import ConfigError

    (tmp_path / "a.yml").write_text("hf_id: 3\n")
    with pytest.raises(ConfigError, match="hf_id"):
        load_config([tmp_path / "a.yml"])
    (tmp_path / "b.yml").write_text("hf_id: EleutherAI/pythia-14m\nnum_layers: 2\n")
    assert load_config([tmp_path / "b.yml"], ["hf_id=me/model"]).hf_id == "me/model"


def test_every_command_takes_a_preset_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "pythia-14m", "--dry-run"]) == 0
    assert "config from" in (out := capsys.readouterr().out) and out.rstrip().endswith(
        "presets/pythia-14m.yml"
    )
    assert main(["config", "validate", "quickstart"]) == 0
    assert load_config(["quickstart"]).sources == (str(preset_dir().parent / "quickstart.yml"),)
    # only a bare name is a preset: with a directory part it is a path, and it is missing
    assert main(["train", "presets/pythia-14m", "--dry-run"]) == 2
    assert "config file not found: presets/pythia-14m" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
