"""Reading GPT-NeoX's own checkpoint layouts (flat and pipeline, tensor-parallel shards)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neoxcli.config.schema import ModelConfig
from neoxcli.convert.neox_checkpoint import load_gpt_neox_checkpoint
from neoxcli.model import GPTModel

CFG = ModelConfig(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    seq_length=16,
    pos_emb="rotary",
    rotary_pct=0.25,
    gpt_j_residual=True,
    no_weight_tying=True,
)
N = CFG.num_layers


def _theirs(model: GPTModel) -> dict[str, torch.Tensor]:
    """Our state dict renumbered as GPT-NeoX's ``sequential`` (with its buffers)."""
    back = {0: 0, **{i + 1: i + 2 for i in range(N)}, N + 1: N + 3, N + 2: N + 4}
    out = {}
    for key, value in model.state_dict().items():
        _, idx, rest = key.split(".", 2)
        out[f"sequential.{back[int(idx)]}.{rest}"] = value.clone()
    out["sequential.2.attention.rotary_emb.inv_freq"] = torch.ones(2)
    return out


def _shard(key: str, value: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    if (
        "layernorm" in key
        or ".norm." in key
        or key.endswith(("dense.bias", "dense_4h_to_h.bias", "inv_freq"))
    ):
        return value
    dim = 1 if key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")) else 0
    return value.chunk(tp, dim=dim)[rank].clone()


def _check(model: GPTModel, sd: dict[str, torch.Tensor]) -> None:
    assert set(sd) == set(model.state_dict())
    loaded = GPTModel(model.cfg, 64)
    loaded.load_state_dict(sd, strict=True)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_flat_single_rank(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPTModel(CFG, 64).eval()
    step = tmp_path / "global_step10"
    step.mkdir()
    torch.save({"module": _theirs(model)}, step / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("global_step10")
    _check(model, load_gpt_neox_checkpoint(tmp_path, CFG))


def test_pipeline_files_with_two_tensor_parallel_ranks(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = GPTModel(CFG, 64).eval()
    for key, value in _theirs(model).items():
        _, layer, rest = key.split(".", 2)
        for rank in range(2):
            f = tmp_path / f"layer_{int(layer):02d}-model_{rank:02d}-model_states.pt"
            blob = torch.load(f) if f.exists() else {}
            blob[rest] = _shard(key, value, rank, 2)
            torch.save(blob, f)
    _check(model, load_gpt_neox_checkpoint(tmp_path, CFG))


def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    from neoxcli.errors import NeoxError

    with pytest.raises(NeoxError):
        load_gpt_neox_checkpoint(tmp_path / "nope", CFG)


PYTHIA_STYLE_YAML = """\
# as GPT-NeoX copies it into global_stepN/configs/
{
  "num-layers": 2,
  "hidden-size": 32,
  "num-attention-heads": 4,
  "seq-length": 16,
  "max-position-embeddings": 16,
  "pos-emb": "rotary",
  "rotary-pct": 0.25,
  "no-weight-tying": true,
  "gpt-j-residual": true,
  "output-layer-parallelism": "column",
  "tokenizer-type": "HFTokenizer",
  "vocab-file": "/data/gone/20B_tokenizer.json",
  "make-vocab-size-divisible-by": 64,
  "model-parallel-size": 2,
  "train-iters": 100,
}
"""


def _write_gpt_neox_run(root: Path, model: GPTModel) -> Path:
    """A GPT-NeoX save directory: latest, flat TP=2 shards and the run's YAML under configs/."""
    step = root / "global_step10"
    (step / "configs").mkdir(parents=True)
    theirs = _theirs(model)
    for rank in range(2):
        shard = {k: _shard(k, v, rank, 2) for k, v in theirs.items()}
        torch.save({"module": shard}, step / f"mp_rank_{rank:02d}_model_states.pt")
    (step / "configs" / "pythia-tiny.yml").write_text(PYTHIA_STYLE_YAML)
    (root / "latest").write_text("global_step10")
    return step


def test_neox_convert_from_gpt_neox_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GPT-NeoX run -> `neox convert --from neox` -> our checkpoint: identical logits in one process."""
    from neoxcli.checkpoint import load_for_inference
    from neoxcli.cli import main
    from neoxcli.data.tokenizer import train_bpe_tokenizer

    tok = tmp_path / "tok.json"
    train_bpe_tokenizer(["def f(x):\n    return x + 1\n"] * 20, vocab_size=300, out_path=tok, min_frequency=1)
    torch.manual_seed(3)
    model = GPTModel(CFG, 320).eval()  # 300 tokens padded to a multiple of 64
    src = tmp_path / "neox-run"
    _write_gpt_neox_run(src, model)
    out = tmp_path / "imported"

    # The run's tokenizer path is not on this machine: one clear error, nothing written.
    assert main(["convert", str(src), "--from", "neox", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "/data/gone/20B_tokenizer.json" in err and "--vocab-file" in err
    assert not out.exists()

    assert main(["convert", str(src), "--from", "neox", str(out), "--vocab-file", str(tok)]) == 0
    assert "neox checkpoint" in capsys.readouterr().out
    assert (out / "latest").read_text() == "global_step10"
    loaded, tokenizer, cfg = load_for_inference(out)
    assert cfg.parallel.model_parallel_size == 1 and cfg.model.num_layers == 2
    ids = torch.randint(0, tokenizer.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))

    # A config that does not describe the weights is refused, naming the mismatch.
    bad = tmp_path / "bad.yml"
    bad.write_text(PYTHIA_STYLE_YAML.replace('"hidden-size": 32', '"hidden-size": 64'))
    code = main(
        [
            "convert",
            str(src),
            "--from",
            "neox",
            str(tmp_path / "x"),
            "--config",
            str(bad),
            "--vocab-file",
            str(tok),
        ]
    )
    assert code == 2 and not (tmp_path / "x").exists()
    assert "error:" in capsys.readouterr().err


GATED = CFG.model_copy(update={"activation": "swiglu", "intermediate_size": 3 * 48, "gpt_j_residual": False})


def _theirs_gated(model: GPTModel, tp: int, layout: str) -> list[dict[str, torch.Tensor]]:
    """Per-rank GPT-NeoX state of a gated model: fused ``linear1`` rows [value; gate] per rank, or w1/w2/w3."""
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for key, value in _theirs(model).items():
        if "dense_h_to_4h" in key:
            gate, up = value.chunk(2, dim=0)
            for r in range(tp):
                if layout == "fused":
                    name = key.replace("dense_h_to_4h", "linear1")
                    ranks[r][name] = torch.cat([up.chunk(tp)[r], gate.chunk(tp)[r]]).clone()
                else:
                    ranks[r][key.replace("dense_h_to_4h", "w1")] = gate.chunk(tp)[r].clone()
                    ranks[r][key.replace("dense_h_to_4h", "w3")] = up.chunk(tp)[r].clone()
        elif "dense_4h_to_h.weight" in key:
            for r in range(tp):
                name = key.replace("dense_4h_to_h", "linear2" if layout == "fused" else "w2")
                ranks[r][name] = value.chunk(tp, dim=1)[r].clone()
        else:
            for r in range(tp):
                ranks[r][key] = _shard(key, value, r, tp)
    return ranks


@pytest.mark.parametrize(("layout", "tp"), [("fused", 1), ("fused", 2), ("llama", 2)])
def test_gated_mlp_layouts(tmp_path: Path, layout: str, tp: int) -> None:
    """GPT-NeoX's fused SwiGLU input (each rank [value; gate]) and the older w1/w2/w3 form, under TP too."""
    cfg = GATED if layout == "fused" else GATED.model_copy(update={"use_bias_in_mlp": False})
    torch.manual_seed(2)
    model = GPTModel(cfg, 64).eval()
    for r, state in enumerate(_theirs_gated(model, tp, layout)):
        torch.save({"module": state}, tmp_path / f"mp_rank_{r:02d}_model_states.pt")
    _check(model, load_gpt_neox_checkpoint(tmp_path, cfg))


GQA = CFG.model_copy(update={"num_attention_heads": 8, "num_kv_heads": 2, "hidden_size": 64})


def _gpt_neox_gqa_rows(ours: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """Our grouped QKV rows ([kv, q_per_kv + 2, head_dim]) as GPT-NeoX's rank shard: [Q; K; V] of its heads."""
    kv, hd = GQA.kv_heads, GQA.head_dim
    groups = ours.reshape(kv, -1, hd, *ours.shape[1:]).chunk(tp)[rank]
    q, k, v = groups[:, :-2], groups[:, -2], groups[:, -1]
    return torch.cat([t.reshape(-1, *ours.shape[1:]) for t in (q, k, v)]).clone()


@pytest.mark.parametrize("tp", [1, 2])
def test_grouped_query_attention(tmp_path: Path, tp: int) -> None:
    """GPT-NeoX keeps a GQA rank's queries, keys and values as three blocks; ours groups them per KV head."""
    torch.manual_seed(4)
    model = GPTModel(GQA, 64).eval()
    for r in range(tp):
        state = {}
        for key, value in _theirs(model).items():
            if ".attention.query_key_value." in key:
                state[key] = _gpt_neox_gqa_rows(value, tp, r)
            else:
                state[key] = _shard(key, value, r, tp)
        torch.save({"module": state}, tmp_path / f"mp_rank_{r:02d}_model_states.pt")
    _check(model, load_gpt_neox_checkpoint(tmp_path, GQA))


def test_generate_reads_a_gpt_neox_checkpoint_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`neox generate -c GPT_NEOX_RUN` merges its shards in memory and samples what the imported copy samples."""
    from neoxcli.cli import main
    from neoxcli.data.tokenizer import train_bpe_tokenizer

    tok = tmp_path / "tok.json"
    train_bpe_tokenizer(["def f(x):\n    return x + 1\n"] * 20, vocab_size=300, out_path=tok, min_frequency=1)
    torch.manual_seed(3)
    src = tmp_path / "neox-run"
    step = _write_gpt_neox_run(src, GPTModel(CFG, 320).eval())
    yml = step / "configs" / "pythia-tiny.yml"
    yml.write_text(yml.read_text().replace("/data/gone/20B_tokenizer.json", str(tok)))
    assert main(["convert", str(src), "--from", "neox", str(tmp_path / "imported")]) == 0
    capsys.readouterr()
    texts = []
    for source in (src, tmp_path / "imported"):
        assert main(["generate", "-c", str(source), "-p", "def f(", "--greedy", "--max-new-tokens", "6"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("def f(")
