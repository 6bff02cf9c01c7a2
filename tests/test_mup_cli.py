"""`neox config mup` (the Cerebras-GPT muP numbers) and `neox mup coord-check`."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml

from neoxcli.cli import main
from neoxcli.config import load_config
from neoxcli.model.coord_check import coord_check, format_table

STANDARD = """\
# a standard-parametrisation model
num-layers: 2
hidden_size: 128
num_attention_heads: 4
seq_length: 64
pos_emb: rotary
train_micro_batch_size_per_gpu: 4
optimizer:
  type: Adam
  params: {lr: 0.001, betas: [0.9, 0.95], eps: 1.0e-8}
min_lr: 0.0001
"""


def write(tmp_path: Path, text: str, name: str = "std.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_mup_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path, STANDARD)
    out = tmp_path / "mup.yml"
    code = main(["config", "mup", str(src), "-o", str(out), "--base-width", "32"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "width multiplier 4" in err
    cfg = load_config([out])
    m = cfg.model
    assert (m.use_mup, m.mup_width_scale, m.mup_embedding_mult) == (True, 4.0, 10.0)
    assert (m.init_method, m.output_layer_init_method, m.init_method_std) == ("normal", "scaled_normal", 0.08)
    assert cfg.train.optimizer.lr == 6e-3
    assert cfg.train.min_lr == pytest.approx(6e-4)  # min_lr keeps its 1:10 ratio to lr
    assert cfg.train.optimizer.params["betas"] == [0.9, 0.95]  # the rest of the block is kept
    assert (m.num_layers, m.hidden_size, m.pos_emb) == (2, 128, "rotary")
    raw = yaml.safe_load(out.read_text())
    assert "num-layers" in raw and "num_layers" not in raw  # the user's spelling survives

    # what the model makes of it: the Cerebras-GPT muP table
    import torch

    from neoxcli.model import GPTModel, param_groups

    torch.manual_seed(0)
    model = GPTModel(m, 512)
    assert model.layers[1].attention.scale == pytest.approx(1 / 32)  # 1 / d_head
    assert model.head.logit_scale == pytest.approx(1 / 4)
    qkv = model.layers[1].attention.query_key_value.weight.std().item()
    assert qkv == pytest.approx(0.08 / math.sqrt(4), rel=0.05)
    assert model.embedding.word_embeddings.weight.std().item() == pytest.approx(0.08, rel=0.05)
    scales = {g["lr_scale"] for g in param_groups(model, 0.0)}
    assert scales == {1.0, 0.25}


def test_config_mup_options_sectioned_input_and_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(
        tmp_path,
        "model:\n  hidden_size: 1024\n  num_attention_heads: 8\n  num_layers: 2\n"
        "train:\n  min_lr: 0.0\n  optimizer:\n    type: Adam\n    params: {lr: 0.0003}\n",
        "sec.yml",
    )
    args = ["--base-width", "256", "--base-lr", "0.01", "--base-init-std", "0.05", "--m-embed", "5"]
    code = main(["config", "mup", str(src), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = tmp_path / "printed.yml"
    printed.write_text(out)
    cfg = load_config([printed])
    assert (cfg.model.mup_width_scale, cfg.model.mup_embedding_mult, cfg.model.init_method_std) == (
        4.0,
        5.0,
        0.05,
    )
    assert (cfg.train.optimizer.lr, cfg.train.min_lr) == (0.01, 0.0)
    assert "mup_width_scale" in yaml.safe_load(out)["model"]


def test_config_mup_accepts_a_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpt3.yml"
    assert main(["config", "mup", "cerebras-gpt-111m", "-o", str(out)]) == 0
    capsys.readouterr()
    cfg = load_config([out])
    assert cfg.model.mup_width_scale == 3.0  # 768 / 256
    assert cfg.train.min_lr == pytest.approx(6e-4)


def _ratio(records: list[dict], key: str, step: int) -> float:
    rows = sorted((r for r in records if r["step"] == step), key=lambda r: r["width"])
    return rows[-1][key] / rows[0][key]


def test_coord_check_mup_is_flat_and_standard_grows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path, STANDARD)
    mup_path = tmp_path / "mup.yml"
    assert main(["config", "mup", str(src), "-o", str(mup_path), "--base-width", "32"]) == 0
    capsys.readouterr()
    widths = [32, 64, 128]
    kw = dict(steps=4, lr=0.02, batch_size=4, seq_length=32, vocab_size=256)
    std = coord_check(load_config([src]).model, widths, **kw)
    mup = coord_check(load_config([mup_path]).model, widths, **kw)
    assert len(std) == len(mup) == 12
    # Ratios of the widest to the narrowest model (4x) after three Adam steps.
    # Standard parametrisation: the residual stream and the logits grow with width.
    assert _ratio(std, "block 2", 4) > 2.5
    assert _ratio(std, "logits", 4) > 1.8
    # muP: hidden activations stay put; logits do not grow (they start at O(1/sqrt(width))).
    assert 0.75 < _ratio(mup, "block 2", 4) < 1.3
    assert 0.4 < _ratio(mup, "logits", 4) < 1.1
    table = format_table(mup)
    assert table.splitlines()[0].split() == [
        "step",
        "width",
        "embedding",
        "block",
        "1",
        "block",
        "2",
        "logits",
        "loss",
    ]
    assert len(table.splitlines()) == 13


def test_coord_check_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path, STANDARD)
    code = main(["mup", "coord-check", str(src), "--widths", "32,64", "--steps", "2", "--seq-length", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "standard parametrisation" in out
    rows = [line.split() for line in out.splitlines() if line and line.strip()[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "32"), ("1", "64"), ("2", "32"), ("2", "64")]
    code = main(["mup", "coord-check", str(src), "--widths", "48"])  # not a multiple of head size 32
    assert code == 2 and "head size 32" in capsys.readouterr().err


def test_coord_check_png_or_install_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write(tmp_path, STANDARD)
    png = tmp_path / "coord.png"
    args = [
        "mup",
        "coord-check",
        str(src),
        "--widths",
        "32,64",
        "--steps",
        "2",
        "--seq-length",
        "16",
        "-o",
        str(png),
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(args) == 0, capsys.readouterr().err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "saved" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    png.unlink(missing_ok=True)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2 and "matplotlib" in err and "pip install matplotlib" in err
    assert not png.exists() and "step" not in out  # fails before training


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_coord_check_png_has_one_panel_per_step(tmp_path: Path) -> None:
    from neoxcli.model.coord_check import save_plot

    records = [
        {"width": w, "step": s, "embedding": 1.0, "block 1": 1.0 * w, "logits": 0.5, "loss": 5.0}
        for s in (1, 2)
        for w in (32, 64)
    ]
    save_plot(records, tmp_path / "p.png", "t")
    from PIL import Image

    width, height = Image.open(tmp_path / "p.png").size
    assert width > height  # two panels side by side


def test_coord_check_on_an_indexed_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from neoxcli.data.indexed import IndexedDatasetWriter

    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        for _ in range(8):
            writer.add_document(rng.integers(0, 300, 100))
    src = write(tmp_path, STANDARD)
    args = ["mup", "coord-check", str(src), "--widths", "32,64", "--steps", "1", "--seq-length", "16"]
    assert main([*args, "--data", str(tmp_path / "d")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 and all(float(r[-1]) > 0 for r in rows)
