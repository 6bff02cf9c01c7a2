"""``neox generate --tensor-parallel 2``: two local ranks, each with its shard, write the merged model's text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neoxcli.cli import main
from neoxcli.config import padded_vocab_size
from neoxcli.config.loader import dump_config
from neoxcli.config.schema import ModelConfig, NeoXConfig, ParallelConfig, TokenizerConfig
from neoxcli.data.tokenizer import build_tokenizer
from neoxcli.generation.session import SamplingOptions, sample_prompts
from neoxcli.model import GPTModel

PROMPTS = ["the quick brown", "jumps", "pack my box with five dozen", "how"]


def write_tp2_checkpoint(save: Path, model_cfg: ModelConfig) -> GPTModel:
    """A model_parallel_size=2 run as DeepSpeed leaves it: one model-states file per tensor-parallel rank."""
    from neoxcli.checkpoint.reshard import model_specs, split_shard

    tok = build_tokenizer("CharLevelTokenizer")
    cfg = NeoXConfig(
        model=model_cfg,
        tokenizer=TokenizerConfig(tokenizer_type="CharLevelTokenizer"),
        parallel=ParallelConfig(model_parallel_size=2),
    )
    vocab = padded_vocab_size(tok.vocab_size, model_cfg.make_vocab_size_divisible_by, 2)
    torch.manual_seed(0)
    model = GPTModel(model_cfg, vocab).eval()
    with torch.no_grad():  # biases and norms off their defaults, so every shard's cut matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    tag = save / "global_step5"
    tag.mkdir(parents=True)
    full = {n: {"w": p.detach()} for n, p in model.named_parameters()}
    for rank in range(2):
        shard = split_shard(full, full, model_specs(model_cfg), rank, 2, model_cfg.num_layers)
        module = {n: e["w"] for n, e in shard.items()}
        torch.save({"module": module, "iteration": 5}, tag / f"mp_rank_{rank:02d}_model_states.pt")
    (tag / "config.yml").write_text(dump_config(cfg))
    (save / "latest").write_text("global_step5")
    return model


@pytest.mark.slow
def test_two_tensor_parallel_ranks_generate_the_merged_models_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GQA and a gated MLP: the uneven cuts (key/value groups, both GLU halves) are on the path.
    model_cfg = ModelConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_kv_heads=2,
        seq_length=64,
        pos_emb="rotary",
        activation="swiglu",
        norm="rmsnorm",
        intermediate_size=96,
        no_weight_tying=True,
    )
    full = write_tp2_checkpoint(tmp_path / "run", model_cfg)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out" / "samples.jsonl"
    out.parent.mkdir()
    argv = ["generate", "-c", str(tmp_path / "run"), "--input-file", str(prompts), "--output-file", str(out)]
    argv += ["--greedy", "--max-new-tokens", "12", "--batch-size", "3", "--tensor-parallel", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["context"] for r in records] == PROMPTS
    # The merged model in this process, same options: the same text.
    tok = build_tokenizer("CharLevelTokenizer")
    options = SamplingOptions(max_new_tokens=12, greedy=True, batch_size=3)
    alone = sample_prompts(full, tok, PROMPTS, options, stream=False)
    assert [r["text"] for r in records] == [r["text"] for r in alone]
    assert all(r["length"] == 12 for r in records)
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.jsonl"]  # only rank 0 wrote


def test_tensor_parallel_refuses_interactive_before_starting_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "-c", str(tmp_path), "--interactive", "--tensor-parallel", "2"])
    assert code == 2 and "--interactive runs in one process" in capsys.readouterr().err


def test_tensor_parallel_refuses_compile_before_starting_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "-c", str(tmp_path), "-p", "x", "--compile", "--tensor-parallel", "2"])
    assert code == 2 and "--compile is not combined with --tensor-parallel" in capsys.readouterr().err
