"""Unit tier for neoxcli.checkpoint.reshard: shard names, cut and merge round trips, checkpoint files.

No processes: tensor-parallel shards are checked against ``apply_tensor_parallel``
on a copy of the model; pipeline names against DeepSpeed's own partitioning
code (the engine tier checks them against files a real pipeline wrote).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from neoxcli.checkpoint.portable import portable_name, write_layout  # noqa: E402
from neoxcli.checkpoint.reshard import (  # noqa: E402
    full_name,
    merge_module_files,
    merge_portable,
    merge_shards,
    model_specs,
    reshard_portable,
    shard_names,
    split_shard,
)
from neoxcli.config.schema import ModelConfig  # noqa: E402
from neoxcli.errors import NeoxError  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402
from neoxcli.parallel.grid import Layout  # noqa: E402
from neoxcli.parallel.tensor import apply_tensor_parallel  # noqa: E402

VOCAB = 64
METHOD = "type:transformer|mlp"
VARIANTS: dict[str, dict[str, Any]] = {
    # GQA fused QKV, SwiGLU (glu-split MLP input), rotary, tied head.
    "tied-swiglu": {"activation": "swiglu", "num_kv_heads": 2, "pos_emb": "rotary", "mlp_multiple_of": 8},
    # Learned positions (replicated), untied head with a vocab-parallel bias.
    "untied-gelu": {"no_weight_tying": True, "use_bias_in_output_layer": True},
}


def _model(variant: str) -> GPTModel:
    torch.manual_seed(0)
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, **VARIANTS[variant])
    return GPTModel(cfg, VOCAB)


def _full_state(model: GPTModel) -> dict[str, dict[str, Any]]:
    """fp32 weights plus distinct random 'moments', so a mixed-up slice cannot pass."""
    g = torch.Generator().manual_seed(1)
    return {
        n: {
            "fp32": p.detach().clone(),
            "exp_avg": torch.randn(p.shape, generator=g),
            "exp_avg_sq": torch.rand(p.shape, generator=g),
        }
        for n, p in model.named_parameters()
    }


def _cut(model: GPTModel, tp: int, pp: int, method: str = METHOD) -> dict[tuple[int, int], dict[str, Any]]:
    full, specs, cfg = _full_state(model), model_specs(model.cfg), model.cfg
    return {
        (s, r): split_shard(full, shard_names(cfg, VOCAB, tp, pp, method, s), specs, r, tp, cfg.num_layers)
        for s in range(pp)
        for r in range(tp)
    }


def _assert_same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert set(a[name]) == set(b[name]), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_cut_then_merge_is_the_identity(variant: str, tp: int, pp: int) -> None:
    model = _model(variant)
    shards = _cut(model, tp, pp)
    _assert_same(merge_shards(shards, model_specs(model.cfg), model.cfg.num_layers), _full_state(model))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tensor_shards_match_the_sharded_modules(variant: str) -> None:
    model = _model(variant)
    shards = _cut(model, 2, 1)
    for rank in range(2):
        sharded = apply_tensor_parallel(copy.deepcopy(model), None, rank, 2)
        params = dict(sharded.named_parameters())
        assert set(params) == set(shards[(0, rank)])
        for name, p in params.items():
            assert torch.equal(shards[(0, rank)][name]["fp32"], p.detach()), name


def test_pipeline_names_follow_the_layer_list() -> None:
    tied, untied = _model("tied-swiglu").cfg, _model("untied-gelu").cfg
    first, last = (shard_names(tied, VOCAB, 1, 2, METHOD, s) for s in range(2))
    # Blocks split one per stage; the tied embedding lives on both ends.
    assert "tied_modules.embed.embedding.word_embeddings.weight" in first
    assert "tied_modules.embed.embedding.word_embeddings.weight" in last
    assert "1.block.attention.query_key_value.weight" in first and "2.block.mlp.dense_4h_to_h.weight" in last
    assert "3.norm.weight" in last and not any(n.startswith(("2.", "3.")) for n in first)
    first, last = (shard_names(untied, VOCAB, 2, 2, "parameters", s) for s in range(2))
    assert "0.embedding.position_embeddings.weight" in first and "4.final_linear.bias" in last
    assert set(first).isdisjoint(last)


def test_full_names() -> None:
    assert full_name("layers.3.norm.weight", 2) == "layers.3.norm.weight"
    assert full_name("0.embedding.word_embeddings.weight", 2) == "layers.0.word_embeddings.weight"
    assert (
        full_name("tied_modules.embed.embedding.word_embeddings.weight", 2)
        == "layers.0.word_embeddings.weight"
    )
    assert full_name("2.block.mlp.dense_h_to_4h.weight", 2) == "layers.2.mlp.dense_h_to_4h.weight"
    assert full_name("4.final_linear.weight", 2) == "layers.4.final_linear.weight"
    with pytest.raises(NeoxError, match="unexpected parameter name"):
        full_name("module.weight", 2)


def test_tied_embedding_comes_from_the_first_stage() -> None:
    """The last stage's copy of the embedding layer (its position table is dead there) is ignored."""
    model = _model("tied-swiglu")
    shards = _cut(model, 2, 2)
    for r in range(2):
        shards[(1, r)]["tied_modules.embed.embedding.word_embeddings.weight"]["fp32"].add_(1.0)
    merged = merge_shards(shards, model_specs(model.cfg), model.cfg.num_layers)
    assert torch.equal(
        merged["layers.0.word_embeddings.weight"]["fp32"], model.embedding.word_embeddings.weight
    )


def test_missing_and_foreign_parameters_are_refused() -> None:
    model = _model("untied-gelu")
    shards = _cut(model, 2, 1)
    specs, layers = model_specs(model.cfg), model.cfg.num_layers
    del shards[(0, 1)]
    with pytest.raises(NeoxError, match="tensor rank 1"):
        merge_shards(shards, specs, layers, tp=2)
    shards = _cut(model, 1, 1)
    shards[(0, 0)].pop("layers.1.input_layernorm.weight")
    with pytest.raises(NeoxError, match="lacks 1 of the model's parameters"):
        merge_shards(shards, specs, layers)
    shards[(0, 0)]["layers.9.norm.weight"] = {"fp32": torch.zeros(1)}
    with pytest.raises(NeoxError, match="does not have"):
        merge_shards(shards, specs, layers)


def _write_portable(tag_dir: Path, shards: dict[tuple[int, int], dict[str, Any]], layout: Layout) -> None:
    tag_dir.mkdir(parents=True)
    for (stage, rank), params in shards.items():
        client = {"iteration": 5, "consumed_samples": 80}
        state = {"params": params, "step": 5.0, "lr_scheduler": {"n": 5}, "client": client}
        torch.save(state, tag_dir / portable_name(stage, rank))
    write_layout(tag_dir, layout)


def test_portable_files_reshard_for_another_layout(tmp_path: Path) -> None:
    from neoxcli.checkpoint import load_module_state

    model = _model("tied-swiglu")
    tag = tmp_path / "global_step5"
    _write_portable(tag, _cut(model, 1, 2), Layout(pp=2))
    merged = merge_portable(tag, model.cfg)
    assert merged["step"] == 5.0 and merged["client"]["consumed_samples"] == 80
    _assert_same(merged["params"], _full_state(model))
    weights = load_module_state(tag, model.cfg)
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    # Into tensor parallel 2, rank 1: exactly the slices its module holds, moments included.
    target = apply_tensor_parallel(copy.deepcopy(model), None, 1, 2)
    state = reshard_portable(tag, target, model.cfg, VOCAB, 2, 1)
    _assert_same(state["params"], _cut(model, 2, 1)[(0, 1)])
    assert state["lr_scheduler"] == {"n": 5}
    # Another padded vocabulary cannot be re-split; the hint names a divisor that keeps it.
    with pytest.raises(NeoxError, match="64 embedding rows") as err:
        reshard_portable(tag, target, model.cfg, 128, 2, 1)
    assert "make_vocab_size_divisible_by: 32" in (err.value.hint or "")


def test_deepspeed_module_files_merge(tmp_path: Path) -> None:
    """Without portable files: per-rank mp_rank files (TP) and per-layer files (PP) as DeepSpeed writes them."""
    from neoxcli.checkpoint import load_module_state

    model = _model("untied-gelu")
    weights = {n: p.detach() for n, p in model.named_parameters()}
    tp_dir = tmp_path / "tp"
    tp_dir.mkdir()
    for (_, rank), params in _cut(model, 2, 1).items():
        module = {n: e["fp32"] for n, e in params.items()}
        torch.save({"module": module}, tp_dir / f"mp_rank_{rank:02d}_model_states.pt")
    got = load_module_state(tp_dir, model.cfg)
    assert set(got) == set(weights) and all(torch.equal(got[n], weights[n]) for n in weights)

    pp_dir = tmp_path / "pp"
    pp_dir.mkdir()
    torch.save({"module": None}, pp_dir / "mp_rank_00_model_states.pt")
    for (_, rank), params in _cut(model, 2, 2).items():
        layers: dict[int, dict[str, Any]] = {}
        for name, entry in params.items():
            index, _, rest = name.partition(".")
            layers.setdefault(int(index), {})[rest] = entry["fp32"]
        for index, state in layers.items():
            torch.save(state, pp_dir / f"layer_{index:02d}-model_{rank:02d}-model_states.pt")
    got = merge_module_files(pp_dir, model.cfg)
    assert set(got) == set(weights) and all(torch.equal(got[n], weights[n]) for n in weights)


def test_resume_modes(tmp_path: Path) -> None:
    from neoxcli.checkpoint import check_resume_layout

    lean = tmp_path / "global_step4"
    lean.mkdir()
    # The layout-free files alone: every resume, the same layout included, restores from them.
    assert check_resume_layout(Layout(tp=2), Layout(tp=2), lean) == "portable"
    tag = tmp_path / "global_step5"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").touch()  # DeepSpeed's files: its own loader, same layout only
    assert check_resume_layout(Layout(tp=2), Layout(tp=2), tag) is None
    assert check_resume_layout(Layout(dp=2, zero_stage=1), Layout(zero_stage=3), tag) == "portable"
    with pytest.raises(NeoxError, match=r"global_step5 was saved with model_parallel_size 2") as err:
        check_resume_layout(Layout(tp=2), Layout(), tag)
    assert "model_parallel_size: 2" in (err.value.hint or "")
    for stage in range(2):
        (tag / portable_name(stage, 0)).touch()
    assert check_resume_layout(Layout(pp=2), Layout(tp=2), tag) == "reshard"
    assert check_resume_layout(Layout(pp=2), Layout(pp=2), tag, "uniform", "parameters") == "reshard"
    assert check_resume_layout(Layout(pp=2), Layout(pp=2), tag, "uniform", " Uniform") is None
