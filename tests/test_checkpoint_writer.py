"""The checkpoint writers: a one-rank checkpoint reads back; training's extras land, then ``latest``, then pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from neoxcli.checkpoint import (  # noqa: E402
    CONFIG_NAME,
    TOKENIZER_NAME,
    finalize_tag,
    list_checkpoints,
    load_module_state,
    read_latest,
    read_layout,
    resolve_checkpoint,
    saved_model_config,
    write_checkpoint,
)
from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402
from neoxcli.parallel.grid import Layout  # noqa: E402

CFG = ModelConfig(num_layers=1, hidden_size=16, num_attention_heads=2, seq_length=8)


def test_one_rank_checkpoint_reads_back(tmp_path: Path) -> None:
    state = GPTModel(CFG, 64).state_dict()
    tag_dir = write_checkpoint(tmp_path, NeoXConfig(model=CFG), state, iteration=7, header="# made here\n")
    assert tag_dir == tmp_path / "global_step7" and read_latest(tmp_path) == "global_step7"
    assert resolve_checkpoint(tmp_path) == tag_dir
    assert read_layout(tag_dir) == Layout()
    assert (tag_dir / CONFIG_NAME).read_text().startswith("# made here\n")
    assert saved_model_config(tag_dir) == CFG
    assert not (tag_dir / TOKENIZER_NAME).exists()
    blob = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert blob["iteration"] == 7
    got = load_module_state(tag_dir)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_finalize_tag_then_latest_then_pruning(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.json"
    vocab.write_text("{}")
    save = tmp_path / "run"
    cfg = NeoXConfig(
        model=CFG, tokenizer=TokenizerConfig(tokenizer_type="HFTokenizer", vocab_file=str(vocab))
    )
    for it in (1, 2, 3):
        (save / f"global_step{it}").mkdir(parents=True)
        tag_dir = finalize_tag(save, f"global_step{it}", cfg, Layout(dp=2), keep_last=2)
        assert read_latest(save) == tag_dir.name
    assert [step for step, _ in list_checkpoints(save)] == [2, 3]
    assert read_layout(tag_dir) == Layout(dp=2)
    assert (tag_dir / TOKENIZER_NAME).read_text() == "{}"
    assert saved_model_config(tag_dir) == CFG
