"""Checkpoints saved under tensor and pipeline parallelism evaluate to the numbers of their one-rank original.

A one-rank checkpoint is cut with the resharding code (``split_shard`` and
``shard_names``, the tables the trainer's own saves follow) into the files
DeepSpeed writes for model_parallel_size 2 (``mp_rank_XX``), for 2 pipeline
stages (``layer_LL-model_RR``) and for both; ``neox eval`` merges them back.
Perplexity rows and every lm-eval log-likelihood must agree within fp32 noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")
pytest.importorskip("deepspeed")  # the pipeline stage tables

from eval_tasks import DOCS_TEXT, write_checkpoint, write_tasks  # noqa: E402

LAYOUTS = [(2, 1), (1, 2), (2, 2)]  # (tp, pp)
pytestmark = pytest.mark.slow


def reshard(one: Path, save: Path, tp: int, pp: int) -> Path:
    """``one``'s weights saved as DeepSpeed's per-rank module files of a (tp, pp) job, with its config."""
    import torch

    from neoxcli.checkpoint import finalize_tag, load_module_state
    from neoxcli.checkpoint.reshard import model_specs, shard_names, split_shard
    from neoxcli.config import load_config, padded_vocab_size
    from neoxcli.parallel.grid import Layout

    src = one / "global_step1"
    cfg = load_config([src / "config.yml"])
    cfg.parallel.model_parallel_size, cfg.parallel.pipe_parallel_size = tp, pp
    if tp > 1:  # GPT-NeoX pads the vocabulary to a multiple of divisible_by * tp: keep the same rows
        cfg.model.make_vocab_size_divisible_by //= tp
    state = load_module_state(src)
    rows = state["layers.0.word_embeddings.weight"].shape[0]
    assert padded_vocab_size(300, cfg.model.make_vocab_size_divisible_by, tp) == rows
    full = {name: {"w": t} for name, t in state.items()}
    specs, layers = model_specs(cfg.model), cfg.model.num_layers
    tag = save / "global_step1"
    tag.mkdir(parents=True)
    for rank in range(tp):
        if pp == 1:
            shard = split_shard(full, full, specs, rank, tp, layers)
            module = {n: e["w"].clone() for n, e in shard.items()}
            torch.save({"module": module, "iteration": 1}, tag / f"mp_rank_{rank:02d}_model_states.pt")
            continue
        per_layer: dict[int, dict[str, Any]] = {}
        for stage in range(pp):
            names = shard_names(cfg.model, rows, tp, pp, cfg.parallel.pipe_partition_method, stage)
            for name, entry in split_shard(full, names, specs, rank, tp, layers).items():
                if name.startswith("tied_modules.embed."):  # written once, by the first layer's file
                    layer, key = "0", name.removeprefix("tied_modules.embed.")
                else:
                    layer, key = name.split(".", 1)
                per_layer.setdefault(int(layer), {})[key] = entry["w"].clone()
        for layer, module in per_layer.items():
            torch.save(module, tag / f"layer_{layer:02d}-model_{rank:02d}-model_states.pt")
    finalize_tag(save, "global_step1", cfg, Layout(tp=tp, pp=pp))
    return save


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("layouts")
    one = write_checkpoint(root / "one", no_weight_tying=False)  # tied: the embedding serves both ends
    saved = {(1, 1): one}
    for tp, pp in LAYOUTS:
        saved[(tp, pp)] = reshard(one, root / f"tp{tp}pp{pp}", tp, pp)
    text = root / "valid.txt"
    text.write_text(DOCS_TEXT)
    return {"root": root, "saved": saved, "text": text, "tasks": write_tasks(root / "tasks", docs=6)}


def evaluate(run: Path, env: dict[str, Any], name: str) -> tuple[dict[str, Any], list[Any]]:
    from neoxcli.evaluation.results import samples_path
    from neoxcli.evaluation.run import EvalOptions, run_evaluation

    out = env["root"] / "results" / f"{name}.json"
    opts = EvalOptions(
        checkpoint=run,
        tasks=[str(env["tasks"]["tiny_mc"])],
        texts=[str(env["text"])],
        context_lengths=[16, 64],
        stride=8,
        batch_size=4,
        bootstrap_iters=0,
        log_samples=True,
        output_path=out,
        device="cpu",
    )
    doc, _ = run_evaluation(opts)
    samples = [json.loads(line) for line in samples_path(out).read_text().splitlines()]
    responses = sorted((s["task"], s["doc_id"], s["resps"]) for s in samples)
    return doc, responses


def test_sharded_layouts_score_like_one_rank(runs: dict[str, Any]) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tp2 = runs["saved"][(2, 1)] / "global_step1"
        assert sorted(p.name for p in tp2.glob("*_model_states.pt")) == [
            "mp_rank_00_model_states.pt",
            "mp_rank_01_model_states.pt",
        ]
        assert list((runs["saved"][(2, 2)] / "global_step1").glob("layer_*-model_01-model_states.pt"))
        ref_doc, ref = evaluate(runs["saved"][(1, 1)], runs, "one")
        assert len(ref) == 6 and len(ref_doc["perplexity"]) == 2  # one sample per document
        for tp, pp in LAYOUTS:
            doc, got = evaluate(runs["saved"][(tp, pp)], runs, f"tp{tp}pp{pp}")
            assert doc["config"]["tag"] == "global_step1"
            for mine, theirs in zip(doc["perplexity"], ref_doc["perplexity"], strict=True):
                for key in ("tokens", "bytes", "words", "windows"):
                    assert mine[key] == theirs[key]
                for key in ("nll", "token_perplexity", "bits_per_byte", "word_perplexity"):
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-6), (tp, pp, key)
            assert [r[:2] for r in got] == [r[:2] for r in ref]
            for (task, doc_id, mine), (_, _, theirs) in zip(got, ref, strict=True):
                flat_mine, flat_theirs = _numbers(mine), _numbers(theirs)
                assert flat_mine == pytest.approx(flat_theirs, rel=1e-6, abs=1e-6), (tp, pp, task, doc_id)
    finally:
        torch.set_num_threads(threads)


def _numbers(resps: Any) -> list[float]:
    """Every number in an lm-eval response list (log-likelihoods; greedy flags as 0/1)."""
    if isinstance(resps, (list, tuple)):
        return [x for r in resps for x in _numbers(r)]
    return [float(resps)]
