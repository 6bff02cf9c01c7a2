"""Unit tier for neoxcli.parallel: rank layout, shard specs and checks, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from neoxcli.checkpoint import check_resume_layout  # noqa: E402
from neoxcli.config.derived import check_layout  # noqa: E402
from neoxcli.config.schema import ModelConfig  # noqa: E402
from neoxcli.errors import NeoxError  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402
from neoxcli.parallel.grid import Layout  # noqa: E402
from neoxcli.parallel.pipeline import check_partition_method  # noqa: E402
from neoxcli.parallel.tensor import check_divisible, merge_tensors, shard_specs, split_tensor  # noqa: E402


def test_layout_rank_order_matches_deepspeed() -> None:
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    lay = Layout(tp=2, pp=2, dp=2)
    topo = PipeModelDataParallelTopology(num_pp=2, num_mp=2, num_dp=2)
    for rank in range(8):
        c = topo.get_coord(rank)
        assert lay.coords(rank) == (c.pipe, c.data, c.model)
        assert lay.rank_of(c.pipe, c.data, c.model) == rank


@pytest.mark.parametrize("kind", ["block", "glu"])
def test_split_and_merge_are_inverse(kind: str) -> None:
    full = torch.arange(48.0).view(8, 6)
    shards = [split_tensor(full, 0, kind, r, 2) for r in range(2)]
    assert torch.equal(merge_tensors(shards, 0, kind), full)
    if kind == "glu":  # each rank holds matching gate and up rows
        assert torch.equal(shards[1], torch.cat([full[2:4], full[6:8]]))


def test_shard_specs_cover_the_sharded_weights() -> None:
    cfg = ModelConfig(num_layers=1, hidden_size=16, num_attention_heads=4, seq_length=8, activation="swiglu")
    specs = shard_specs(GPTModel(cfg, 64))
    assert specs["layers.0.word_embeddings.weight"] == (0, "block")
    assert specs["layers.1.attention.dense.weight"] == (1, "block")
    assert specs["layers.1.attention.dense.bias"] is None  # added once, after the all-reduce
    assert specs["layers.1.mlp.dense_h_to_4h.weight"] == (0, "glu")
    assert specs["layers.1.input_layernorm.weight"] is None


def test_refusals_are_clear(tmp_path: Path) -> None:
    cfg = ModelConfig(num_layers=1, hidden_size=24, num_attention_heads=3, seq_length=8)
    with pytest.raises(NeoxError, match="num_attention_heads"):
        check_divisible(GPTModel(cfg, 64), 2)
    with pytest.raises(NeoxError, match="ZeRO stage 2 cannot be combined"):
        check_layout(Layout(pp=2, zero_stage=2), "fp32")
    with pytest.raises(NeoxError, match="bf16 pipelines need ZeRO stage 1"):
        check_layout(Layout(pp=2), "bf16")
    with pytest.raises(NeoxError, match="pipe_partition_method"):
        check_partition_method("balanced")
    assert check_partition_method("type:transformer|mlp") == "type:transformer|mlp"
    from pathlib import Path

    assert (
        check_resume_layout(Layout(dp=2, zero_stage=1), Layout(dp=1, zero_stage=3), Path("x")) == "portable"
    )
    # The same layout resumes through DeepSpeed's own files where the tag has them, else the layout-free ones.
    assert check_resume_layout(Layout(tp=2), Layout(tp=2), Path("x")) == "portable"
    engine_files = tmp_path / "global_step1"
    engine_files.mkdir()
    (engine_files / "mp_rank_00_model_states.pt").touch()
    assert check_resume_layout(Layout(tp=2), Layout(tp=2), engine_files) is None
    with pytest.raises(NeoxError, match="pipe_parallel_size 2"):
        check_resume_layout(Layout(pp=2), Layout(), Path("x"))  # no layout-free files to re-split


def test_tp_shard_sizes_its_kv_cache_from_local_heads() -> None:
    """A tensor-parallel shard holds heads/tp query and kv_heads/tp key/value heads; its cache fits them."""
    import copy

    from neoxcli.parallel.tensor import apply_tensor_parallel

    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=8, num_kv_heads=4, seq_length=16)
    model = GPTModel(cfg, 64)
    shard = apply_tensor_parallel(copy.deepcopy(model), None, 1, 2)
    cache = shard.make_kv_cache(batch_size=3, max_len=16)
    assert cache.keys[0].shape == (3, 2, 16, 8)
    assert shard.blocks[0].attention.num_heads == 4
    assert model.make_kv_cache(batch_size=3, max_len=16).keys[0].shape == (3, 4, 16, 8)
