"""Where `neox generate` samples: ``--dtype`` (auto, fp32, bf16, fp16) and the tensor-parallel default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neoxcli.checkpoint import write_checkpoint
from neoxcli.cli import main
from neoxcli.config.schema import ModelConfig, NeoXConfig, TokenizerConfig
from neoxcli.data.tokenizer import build_tokenizer
from neoxcli.errors import NeoxError
from neoxcli.generation.placement import (
    choose_dtype,
    choose_tensor_parallel,
    run_model_parallel_size,
)
from neoxcli.generation.session import SamplingOptions, load_model, sample_prompts
from neoxcli.model import GPTModel

PROMPTS = ["the quick brown", "jumps over", "how"]


def _checkpoint(root: Path) -> GPTModel:
    """A one-process neox checkpoint of a small rotary model with its biases off their defaults."""
    tok = build_tokenizer("CharLevelTokenizer")
    cfg = NeoXConfig(
        model=ModelConfig(
            num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, pos_emb="rotary"
        ),
        tokenizer=TokenizerConfig(tokenizer_type="CharLevelTokenizer"),
    )
    step = cfg.model.make_vocab_size_divisible_by
    torch.manual_seed(0)
    model = GPTModel(cfg.model, -(-tok.vocab_size // step) * step).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    write_checkpoint(root, cfg, model.state_dict())
    return model


def _generate(tmp_path: Path, ckpt: Path, *extra: str) -> tuple[int, list[dict], Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples.jsonl"
    argv = ["generate", "-c", str(ckpt), "--input-file", str(prompts), "--output-file", str(out)]
    code = main([*argv, "--greedy", "--max-new-tokens", "10", "--batch-size", "3", *extra])
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    return code, records, out


def _reference(model: GPTModel, dtype: torch.dtype) -> list[str]:
    """The same prompts sampled eagerly in this process from the model cast to ``dtype``."""
    tok = build_tokenizer("CharLevelTokenizer")
    cast = GPTModel(model.cfg, model.embedding.word_embeddings.weight.shape[0]).eval()
    cast.load_state_dict(model.state_dict())
    cast.to(dtype=dtype)
    options = SamplingOptions(max_new_tokens=10, greedy=True, batch_size=3)
    return [r["text"] for r in sample_prompts(cast, tok, PROMPTS, options, stream=False)]


@pytest.mark.parametrize(("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_loader_keeps_the_asked_dtype(tmp_path: Path, name: str, dtype: torch.dtype) -> None:
    _checkpoint(tmp_path / "run")
    model, _tok = load_model(tmp_path / "run", None, dtype=name)
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_bf16_greedy_text_equals_the_bf16_eager_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _checkpoint(tmp_path / "run")
    code, records, _out = _generate(tmp_path, tmp_path / "run", "--dtype", "bf16")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sampling in bf16 on cpu (--dtype bf16)" in err
    texts = [r["text"] for r in records]
    assert texts == _reference(model, torch.bfloat16)
    assert all(r["length"] == 10 for r in records)


@pytest.mark.parametrize(("env", "name"), [("1", "bf16"), ("0", "fp32")])
def test_auto_follows_the_cpu_bf16_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: str, name: str
) -> None:
    monkeypatch.setenv("NEOX_CPU_BF16", env)
    assert choose_dtype("auto", "cpu").name == name
    model = _checkpoint(tmp_path / "run")
    code, records, _out = _generate(tmp_path, tmp_path / "run")  # --dtype defaults to auto
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"sampling in {name} on cpu (auto: NEOX_CPU_BF16={env})" in err
    dtype = torch.bfloat16 if name == "bf16" else torch.float32
    assert [r["text"] for r in records] == _reference(model, dtype)


def test_fp16_on_the_cpu_is_one_error_line_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _checkpoint(tmp_path / "run")
    code, records, out = _generate(tmp_path, tmp_path / "run", "--dtype", "fp16")
    err = capsys.readouterr().err
    assert code == 2 and records == [] and not out.exists()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: --dtype fp16 needs a GPU; this run samples on cpu"], err
    assert "Traceback" not in err and "sampling in" not in err
    with pytest.raises(NeoxError, match="unknown --dtype 'fp8'"):
        choose_dtype("fp8", "cpu")
    assert choose_dtype("fp16", "cuda").name == "fp16"  # a GPU may: the choice itself needs no device


def test_the_generation_file_sets_the_dtype_and_the_flag_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _checkpoint(tmp_path / "run")
    gen = tmp_path / "text_generation.yml"
    gen.write_text("text_gen_type: unconditional\ndtype: bf16\nmaximum_tokens: 10\ntemperature: 0.0\n")
    code, records, _out = _generate(tmp_path, tmp_path / "run", str(gen))
    assert code == 0 and "sampling in bf16 on cpu" in capsys.readouterr().err
    assert [r["text"] for r in records] == _reference(model, torch.bfloat16)
    code, _records, _out = _generate(tmp_path, tmp_path / "run", str(gen), "--dtype", "fp32")
    assert code == 0 and "sampling in fp32 on cpu (--dtype fp32)" in capsys.readouterr().err
    gen.write_text("dtype: half\n")
    code, _records, _out = _generate(tmp_path, tmp_path / "run", str(gen))
    err = capsys.readouterr().err
    assert code == 2 and "dtype: 'half' is not one of auto, fp32, bf16, fp16" in err


def test_tensor_parallel_choice() -> None:
    # An explicit --tensor-parallel always wins, on either device.
    assert choose_tensor_parallel(2, 1, "cpu", 0) == (2, None)
    assert choose_tensor_parallel(1, 4, "cuda", 8) == (1, None)
    assert choose_tensor_parallel(3, 4, "cuda", 1) == (3, None)
    # A one-process run needs no note.
    assert choose_tensor_parallel(None, 1, "cuda", 8) == (1, None)
    assert choose_tensor_parallel(None, 1, "cpu", 0) == (1, None)
    # The CPU samples in one process and says why the run's layout is not used.
    ranks, note = choose_tensor_parallel(None, 4, "cpu", 0)
    assert ranks == 1 and "model_parallel_size 4" in note and "--tensor-parallel 4" in note
    # GPUs follow the run when enough are visible ...
    ranks, note = choose_tensor_parallel(None, 4, "cuda:0", 8)
    assert ranks == 4 and "model_parallel_size" in note
    # ... else the largest divisor of the run's size that fits, and a note that says so.
    for run, gpus, want in [(4, 3, 2), (4, 2, 2), (4, 1, 1), (6, 4, 3), (8, 7, 4), (3, 2, 1), (4, 0, 1)]:
        ranks, note = choose_tensor_parallel(None, run, "cuda", gpus)
        assert ranks == want, (run, gpus)
        assert f"model_parallel_size {run} but only {gpus} GPU" in note and f"on {want} tensor" in note
    # An option that needs one process keeps the default at 1 instead of refusing it.
    ranks, note = choose_tensor_parallel(None, 2, "cuda", 2, one_process="--interactive")
    assert ranks == 1 and note.startswith("--interactive runs in one process")


def test_a_sharded_runs_default_on_the_cpu_is_one_process_with_the_merged_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_generation_parallel import write_tp2_checkpoint

    model_cfg = ModelConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, pos_emb="rotary"
    )
    full = write_tp2_checkpoint(tmp_path / "run", model_cfg)
    assert run_model_parallel_size(tmp_path / "run") == 2
    assert run_model_parallel_size(tmp_path / "run", "global_step5") == 2
    code, records, out = _generate(tmp_path, tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: the run has model_parallel_size 2; on the CPU one process samples the merged model" in err
    assert [r["text"] for r in records] == _reference(full, torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "run", "samples.jsonl"]


def test_the_run_size_of_a_missing_checkpoint_is_the_loaders_error(tmp_path: Path) -> None:
    with pytest.raises(NeoxError, match="checkpoint not found"):
        run_model_parallel_size(tmp_path / "nowhere")
