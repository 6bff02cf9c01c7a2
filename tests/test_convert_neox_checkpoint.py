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
    loaded = GPTModel(CFG, 64)
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
