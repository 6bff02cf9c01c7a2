"""Packed-document training: eod_mask_loss, reset_position_ids and reset_attention_mask.

Unit checks of the position and document ids against a loop over the tokens
(Megatron-LM's definition), the model on a packed sample against each document
run alone (dense attention and flex attention), the trained loss against the
masked mean computed by hand, and one tiny run with all three keys through
``neox train`` in this process, matched by pipeline- and tensor-parallel runs
over 2 processes (one launch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from conftest import tiny_model_config, tiny_train_config  # noqa: E402

from neoxcli.errors import ConfigError  # noqa: E402
from neoxcli.kernels import attn as attn_mod  # noqa: E402
from neoxcli.model import GPTModel  # noqa: E402
from neoxcli.training.documents import (  # noqa: E402
    DocumentMasks,
    document_ids,
    document_masks,
    document_positions,
)

EOD = 0
KEYS = {"eod_mask_loss": True, "reset_position_ids": True, "reset_attention_mask": True}
TOL = 1e-5  # fp32: the bound the parallel-layout tests hold every layout to


def _reference(tokens: list[int], eod: int) -> tuple[list[int], list[int]]:
    """Positions and documents by walking the tokens: a new document starts after each EOD."""
    positions, documents, pos, doc = [], [], 0, 0
    for t in tokens:
        positions.append(pos)
        documents.append(doc)
        pos, doc = (0, doc + 1) if t == eod else (pos + 1, doc)
    return positions, documents


def test_positions_and_documents_restart_after_each_eod() -> None:
    rows = [[5, 6, 0, 7, 8, 9, 0, 0, 3], [0, 4, 4, 4, 4, 4, 4, 0, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    x = torch.tensor(rows)
    for row, pos, doc in zip(rows, document_positions(x, EOD), document_ids(x, EOD), strict=True):
        assert (pos.tolist(), doc.tolist()) == _reference(row, EOD)
    # The EOD keeps its document's position and id: it ends that document.
    assert document_positions(x, EOD)[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 0]
    assert document_ids(x, EOD)[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 3]


def test_apply_masks_labels_at_eod_inputs_and_builds_the_model_inputs() -> None:
    x = torch.tensor([[5, 0, 7, 8, 0, 9]])
    y = torch.tensor([[0, 7, 8, 0, 9, 4]])
    same_x, labels = DocumentMasks(EOD, mask_loss=True).apply(x, y)
    assert same_x is x and labels.tolist() == [[0, -100, 8, 0, -100, 4]]
    (tokens, positions), labels = DocumentMasks(EOD, reset_positions=True).apply(x, y)
    assert tokens is x and positions.tolist() == [[0, 1, 0, 1, 2, 0]] and labels is y
    # Documents without reset positions: positions stay 0..T-1, one row per sample.
    (_, positions, docs), _ = DocumentMasks(EOD, reset_attention=True).apply(x.expand(2, -1), y.expand(2, -1))
    assert positions.tolist() == [list(range(6))] * 2 and docs.tolist() == [[0, 0, 1, 1, 1, 2]] * 2


def test_a_cut_batch_keeps_the_prefix_of_its_ids() -> None:
    """A sequence-length curriculum cuts batches: the ids of the cut equal those of the cut tokens."""
    from neoxcli.training.trainer import _cut

    docs = DocumentMasks(EOD, mask_loss=True, reset_positions=True, reset_attention=True)
    x = torch.randint(0, 4, (3, 24))
    full = _cut(docs.apply(x, torch.roll(x, -1, 1)), 10)
    short = docs.apply(x[:, :10], torch.roll(x, -1, 1)[:, :10])
    for a, b in zip([*full[0], full[1]], [*short[0], short[1]], strict=True):
        assert torch.equal(a, b)


def _flat(batch: Any) -> list[Any]:
    """The tensors of a batch, in order."""
    from neoxcli.training.documents import map_batch

    tensors: list[Any] = []
    map_batch(batch, tensors.append)
    return tensors


def test_sampler_batches_carry_the_ids_and_the_prefetcher_keeps_them() -> None:
    from neoxcli.training.batches import BatchSampler, Prefetcher

    rng = np.random.RandomState(0)
    data = [rng.randint(0, 4, 17) for _ in range(40)]
    docs = DocumentMasks(EOD, mask_loss=True, reset_positions=True, reset_attention=True)
    plain = BatchSampler(data, micro=3, dp_size=1, dp_rank=0)
    packed = BatchSampler(data, micro=3, dp_size=1, dp_rank=0, documents=docs)
    ahead = Prefetcher(BatchSampler(data, 3, 1, 0, documents=docs), 2, 6, workers=2)
    try:
        for consumed, m in [(0, 0), (0, 1), (6, 0), (30, 1)]:
            want = docs.apply(*plain.batch(consumed, m))
            for got in (packed.batch(consumed, m), ahead.batch(consumed, m)):
                assert len(_flat(got)) == 4 and all(map(torch.equal, _flat(want), _flat(got)))
    finally:
        ahead.close()


def test_pipeline_stages_pass_the_ids_on() -> None:
    """The pipeline's layers, run in a row on ``(ids, positions, documents)``, give the model's logits."""
    pytest.importorskip("deepspeed")
    from neoxcli.parallel.pipeline import pipeline_layers

    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(no_weight_tying=True), 96).eval()
    x, _ = _packed([7, 12, 5, 10])
    (tokens, positions, docs), _ = DocumentMasks(EOD, reset_positions=True, reset_attention=True).apply(x, x)
    with torch.no_grad():
        out: Any = (tokens, positions, docs)
        for layer in pipeline_layers(model):
            out = layer(out)
        want = model(tokens, position_ids=positions, document_ids=docs)
        assert torch.equal(out, want)
        out = x
        for layer in pipeline_layers(model):  # a plain batch: hidden states only, as before
            out = layer(out)
        assert torch.equal(out, model(x))


def _packed(lengths: list[int], rows: int = 2, vocab: int = 96) -> tuple[Any, list[list[tuple[int, int]]]]:
    """``rows`` samples of documents ending in EOD (the last one cut off), in another order per row."""
    g = torch.Generator().manual_seed(0)
    samples, spans = [], []
    for r in range(rows):
        order = lengths[r:] + lengths[:r]
        parts, row_spans, start = [], [], 0
        for n in order:
            doc = torch.randint(1, vocab, (n,), generator=g)
            doc[-1] = EOD
            parts.append(doc)
            row_spans.append((start, start + n))
            start += n
        samples.append(torch.cat(parts)[:-2])  # the last document runs past the window
        row_spans[-1] = (row_spans[-1][0], start - 2)
        spans.append(row_spans)
    return torch.stack(samples), spans


def _per_document_error(model: Any, x: Any, spans: list[list[tuple[int, int]]]) -> float:
    (tokens, positions, docs), _ = DocumentMasks(EOD, reset_positions=True, reset_attention=True).apply(x, x)
    with torch.no_grad():
        packed = model(tokens, position_ids=positions, document_ids=docs)
        worst = 0.0
        for r, row in enumerate(spans):
            for s, e in row:
                alone = model(x[r : r + 1, s:e])[0]
                worst = max(worst, (packed[r, s:e] - alone).abs().max().item())
    return worst


POS_EMBS = [dict(pos_emb="rotary"), dict(pos_emb="learned"), dict(pos_emb="alibi", num_kv_heads=2)]


@pytest.mark.parametrize("over", POS_EMBS, ids=lambda o: o["pos_emb"])
def test_packed_documents_match_each_document_alone_dense(over: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(**over), 96).eval()
    x, spans = _packed([7, 12, 5, 10])
    assert _per_document_error(model, x, spans) <= TOL


@pytest.mark.skipif(not attn_mod.flex_available(), reason="this torch has no flex_attention")
@pytest.mark.parametrize("over", POS_EMBS[::2], ids=lambda o: o["pos_emb"])
def test_packed_documents_match_each_document_alone_flex(
    over: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flex block mask (GPUs, long sequences), here uncompiled on CPU: forward only, as on CPU."""
    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(**over), 96).eval()
    x, spans = _packed([7, 12, 5, 10])
    monkeypatch.setattr(attn_mod, "CPU_FLEX_MIN_KEYS", x.shape[1])  # the packed sample only
    calls: list[int] = []

    def eager_counted() -> Any:
        eager = attn_mod._eager_flex()
        return lambda *a, **kw: calls.append(a[0].shape[2]) or eager(*a, **kw)

    monkeypatch.setattr(attn_mod, "_compiled_flex", eager_counted)
    assert _per_document_error(model, x, spans) <= TOL
    assert calls == [x.shape[1]] * len(model.blocks)  # the packed forward ran flex in every layer


def test_a_key_without_an_eod_token_is_a_config_error() -> None:
    from neoxcli.config.schema import DataConfig

    assert document_masks(DataConfig(), None, "HFTokenizer") is None
    with pytest.raises(ConfigError, match=r"data.reset_attention_mask: the tokenizer HFTokenizer has no"):
        document_masks(DataConfig(reset_attention_mask=True), None, "HFTokenizer")


def test_config_accepts_the_keys_and_shows_them(tmp_path: Path) -> None:
    from neoxcli.config import load_config
    from neoxcli.config.report import show_config

    flat = tmp_path / "flat.yml"
    flat.write_text(
        "eod-mask-loss: true\nreset_position_ids: true\nreset-attention-mask: true\nbatch_size: 4\n"
    )
    warnings: list[str] = []
    cfg = load_config([flat], warn=warnings.append)
    assert (cfg.data.eod_mask_loss, cfg.data.reset_position_ids, cfg.data.reset_attention_mask) == (
        True,
        True,
        True,
    )
    assert warnings == [] and "eod_mask_loss" not in cfg.ignored_keys
    cfg = load_config([], ["data.eod_mask_loss=true"])
    assert cfg.data.eod_mask_loss and not cfg.data.reset_position_ids
    shown = yaml.safe_load(show_config([flat]).text.split("\nderived:")[0])
    assert {k: shown["data"][k] for k in KEYS} == KEYS


# --------------------------------------------------------------------------- training


def _write_short_docs(prefix: Path) -> None:
    """Character-level documents of 3-15 characters: a 32-token sample holds several of them."""
    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.data.tokenizer import build_tokenizer

    tok = build_tokenizer("CharLevelTokenizer")
    words = "the quick brown fox jumps over the lazy dog pack my box with five dozen liquor jugs".split()
    rng = np.random.RandomState(0)
    prefix.parent.mkdir(parents=True)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(400):
            text = " ".join(rng.choice(words, rng.randint(1, 4)))[:15]
            w.add_document(tok.encode(text) + [tok.eod_id])


def _config(root: Path, name: str, **over: Any) -> Path:
    """3 steps (2 micro batches of 4) of conftest's tiny run on short documents, all three keys on."""
    if not (root / "data").exists():
        _write_short_docs(root / "data" / "tiny_text_document")
    run = root / "runs" / name
    keys = {k.replace("_", "-"): v for k, v in KEYS.items()}
    settings: dict[str, Any] = {
        "train-iters": 3,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "eval-interval": 1000,
        "eval-iters": 1,
        "checkpoint-factor": 1000,
        "num-kv-heads": 2,
        "data-cache-dir": str(root / "cache"),
        "sample_at_end": False,
        "save": str(run),
        "load": str(run),
    }
    cfg = yaml.safe_load(tiny_train_config(root, **keys, **settings).read_text())
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_trained_loss_is_the_masked_mean_by_hand(tmp_path: Path) -> None:
    """The first step's loss, at the initial weights, against positions, documents and mask made by hand."""
    import torch.nn.functional as F

    from neoxcli.config import load_config
    from neoxcli.parallel.distributed import detect
    from neoxcli.training.batches import BatchSampler
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run
    from neoxcli.training.trainer import train_step

    cfg = load_config([_config(tmp_path, "by-hand", save=None, load=None)])
    run = build_run(cfg, detect(), NullReporter())
    raw = BatchSampler(run.train_ds, run.plan.micro_batch, 1, 0)  # the same samples, no keys applied
    try:
        model, losses, masked = run.engine.module, [], 0
        for m in range(run.plan.gradient_accumulation_steps):
            x, y = raw.batch(0, m)
            refs = [_reference(row, EOD) for row in x.tolist()]
            positions = torch.tensor([p for p, _ in refs])
            docs = torch.tensor([d for _, d in refs])
            assert int(docs.max()) >= 2  # the samples really are packed
            with torch.no_grad():
                out = model(x, position_ids=positions, document_ids=docs)
            logits = out if isinstance(out, torch.Tensor) else F.linear(out.hidden, out.weight, out.bias)
            keep = x != EOD
            masked += int((~keep).sum())
            losses.append(float(F.cross_entropy(logits[keep].float(), y[keep])))
        assert masked > 0
        assert abs(train_step(run) - sum(losses) / len(losses)) <= 1e-6
    finally:
        run.sampler.close()


def _losses(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {str(r["iteration"]): r["loss"] for r in rows}


def _train_here(config: Path) -> dict[str, Any]:
    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    result = train(load_config([config]))
    return {"losses": {str(r["iteration"]): r["loss"] for r in result.history}, "valid": result.valid_loss}


def _worker(out: Path, configs: list[str]) -> None:
    """Worker entry of the 2-process launch: train each config in turn; rank 0 records the losses."""
    results = {Path(c).stem: _train_here(Path(c)) for c in configs}
    if os.environ.get("RANK") == "0":
        out.write_text(json.dumps(results))


LAYOUTS: dict[str, dict[str, Any]] = {
    "pp2": {"pipe_parallel_size": 2},
    # DeepSpeed's own activation checkpointing between the stages, over the same tuples
    "pp2-recompute": {"pipe_parallel_size": 2, "checkpoint_activations": True},
    "tp2": {"model_parallel_size": 2},
}


@pytest.mark.slow
def test_neox_train_with_the_keys_and_parallel_layouts_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("deepspeed")
    from procs import run_ranks

    from neoxcli.cli import main

    assert main(["train", str(_config(tmp_path, "one"))]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "packed documents: eod_mask_loss, reset_position_ids, reset_attention_mask at the EOD token (id 0)"
        in out
    )
    ref = _losses(tmp_path / "runs" / "one")
    ref_valid = json.loads((tmp_path / "runs" / "one" / "metrics.jsonl").read_text().splitlines()[-1])[
        "valid_loss"
    ]
    assert sorted(map(int, ref)) == [1, 2, 3] and all(np.isfinite(list(ref.values())))
    # Without the keys the same run trains on other numbers: the keys reach the loss.
    plain = _config(tmp_path, "plain", **{k.replace("_", "-"): False for k in KEYS})
    assert main(["train", str(plain), "--set", "train_iters=1"]) == 0
    assert abs(_losses(tmp_path / "runs" / "plain")["1"] - ref["1"]) > 1e-3

    configs = [_config(tmp_path, name, **over) for name, over in LAYOUTS.items()]
    result = tmp_path / "layouts.json"
    run_ranks([__file__, str(result), *map(str, configs)], tmp_path, label="layouts-")
    got = json.loads(result.read_text())
    for name in LAYOUTS:
        diff = max(abs(got[name]["losses"][k] - ref[k]) for k in ref)
        assert diff <= TOL, f"{name}: max |dloss| {diff:.2e}"
        assert abs(got[name]["valid"] - ref_valid) <= TOL, name


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])
