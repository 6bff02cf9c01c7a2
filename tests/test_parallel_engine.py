"""Engine tier for parallel training: real 2-process runs through DeepSpeed over gloo.

Two launches of 2 ranks and one of 4, each running several layouts one after
another in the same processes (a launch costs ~10 s here, a layout ~2 s):

* launch A trains 10 steps under ZeRO-1, ZeRO-2, ZeRO-3 (data parallel 2),
  tensor parallel 2 and pipeline parallel 2, saving at step 5;
* launch B resumes each of them from step 5 under the same layout, and
  re-splits checkpoints for another layout: the 1-process ZeRO-0 one under
  ZeRO-3 with data parallel 2, tensor parallel 2 and pipeline parallel 2, and
  the tensor-parallel one under pipeline parallel 2;
* launch C (4 ranks) trains the combinations TP2xPP2, TP2xDP2 and PP2xDP2
  and re-splits the 1-process checkpoint for TP2xPP2.

A 1-process reference run (in this process) gives the golden losses, and
more 1-process resumes cover ZeRO-stage and data-parallel-size changes and
tensor/pipeline-parallel checkpoints continued by one process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from procs import run_ranks

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "pack my box with five dozen liquor jugs. "
    "how vexingly quick daft zebras jump! "
)
TOL = 1e-5  # fp32 parallel-equivalence bound from the issue
LAYOUTS: dict[str, dict[str, Any]] = {
    "zero1": {"zero_optimization": {"stage": 1}},
    "zero2": {"zero_optimization": {"stage": 2}},
    "zero3": {"zero_optimization": {"stage": 3}},
    "tp2": {"model_parallel_size": 2},
    "pp2": {"pipe_parallel_size": 2, "zero_optimization": {"stage": 0}},
    # DeepSpeed's own files instead of the layout-free ones: they resume under the same layout.
    "tp2-ds": {"model_parallel_size": 2, "portable_checkpoint": False},
    "pp2-ds": {"pipe_parallel_size": 2, "zero_optimization": {"stage": 0}, "portable_checkpoint": False},
}

# Resumes from step 5 under another tensor/pipeline layout: name -> (source run, overrides).
RESPLIT_2: dict[str, tuple[str, dict[str, Any]]] = {
    "ref-to-tp2": ("ref", {"model_parallel_size": 2, "sample_at_end": True}),
    "ref-to-pp2": ("ref", {"pipe_parallel_size": 2}),
    "tp2-to-pp2": ("tp2", {"model_parallel_size": 1, "pipe_parallel_size": 2}),
}
RESPLIT_1: dict[str, tuple[str, dict[str, Any]]] = {
    "tp2-to-tp1": ("tp2", {"model_parallel_size": 1}),
    "pp2-to-pp1": ("pp2", {"pipe_parallel_size": 1}),
    "tp2pp2-to-1": ("tp2pp2", {"model_parallel_size": 1, "pipe_parallel_size": 1}),
}
# Combinations that need 4 processes (two on each of this machine's cores).
LAYOUTS_4: dict[str, dict[str, Any]] = {
    "tp2pp2": {"model_parallel_size": 2, "pipe_parallel_size": 2, "zero_optimization": {"stage": 0}},
    "tp2dp2": {"model_parallel_size": 2, "zero_optimization": {"stage": 1}},
    "pp2dp2": {"pipe_parallel_size": 2, "zero_optimization": {"stage": 1}},
}
RESPLIT_4: dict[str, tuple[str, dict[str, Any]]] = {
    "ref-to-tp2pp2": ("ref", {"model_parallel_size": 2, "pipe_parallel_size": 2}),
}


def _write_corpus(prefix: Path) -> None:
    from neoxcli.data.indexed import IndexedDatasetWriter
    from neoxcli.data.tokenizer import build_tokenizer

    tok = build_tokenizer("CharLevelTokenizer")
    rng = np.random.RandomState(0)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(120):
            start = rng.randint(0, len(TEXT) - 40)
            w.add_document(tok.encode((TEXT * 3)[start : start + 60 + rng.randint(0, 60)]) + [tok.eod_id])


def _config(root: Path, name: str, **over: Any) -> Path:
    """A tiny model touching every sharded path: GQA fused QKV, SwiGLU, biases, tied head, rotary."""
    cfg: dict[str, Any] = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_kv_heads": 2,
        "seq_length": 32,
        "pos_emb": "rotary",
        "activation": "swiglu",
        "intermediate_size": 384,  # a branch of 128 (GPT-NeoX sizing), which TP=2 divides
        "tokenizer_type": "CharLevelTokenizer",
        "data_path": str(root / "data" / "tiny_text_document"),
        "data_cache_dir": str(root / "cache"),
        "split": "90,10,0",
        "optimizer": {"type": "Adam", "params": {"lr": 2e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
        # A fixed global batch: data-parallel size only changes how it is split.
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 4,
        "train_iters": 10,
        "lr_decay_style": "cosine",
        "warmup": 0.2,
        "gradient_clipping": 0.5,  # small enough to clip, so the distributed norm is exercised
        "eval_interval": 1000,
        "eval_iters": 1,
        "checkpoint_factor": 5,
        "seed": 1234,
        "sample_at_end": False,
        "save": str(root / "runs" / name),
        "load": str(root / "runs" / name),
    }
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _resume_config(root: Path, source: str, name: str, **over: Any) -> Path:
    """A run directory holding only ``source``'s step-5 checkpoint, and a config that resumes it."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    shutil.copytree(root / "runs" / source / "global_step5", run / "global_step5")
    (run / "latest").write_text("global_step5")
    cfg = yaml.safe_load((root / f"{source}.yml").read_text())
    cfg.update(save=str(run), load=str(run), **over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(root: Path, configs: list[Path], label: str, nproc: int = 2) -> dict[str, Any]:
    """Start ``nproc`` worker processes with torch-style variables; each trains ``configs`` in turn."""
    out = root / f"{label}.json"
    run_ranks([__file__, str(out), *map(str, configs)], root, ranks=nproc, label=f"{label}-")
    return json.loads(out.read_text())


def _train_here(config: Path) -> dict[str, Any]:
    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    result = train(load_config([config]))
    losses = {str(r["iteration"]): r["loss"] for r in result.history}
    return {"losses": losses, "valid": result.valid_loss, "sample": result.sample}


def _worker(out: Path, configs: list[str]) -> None:
    """Worker entry: train each config in this rank; rank 0 records the losses."""
    results = {Path(c).stem: _train_here(Path(c)) for c in configs}
    if os.environ.get("RANK") == "0":
        out.write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("parallel")
    (root / "data").mkdir()
    _write_corpus(root / "data" / "tiny_text_document")
    results: dict[str, Any] = {"ref": _train_here(_config(root, "ref", zero_optimization={"stage": 0}))}
    first = _launch(root, [_config(root, name, **over) for name, over in LAYOUTS.items()], "launch-a")
    resumes = [_resume_config(root, name, f"{name}-resumed") for name in LAYOUTS]
    resumes.append(_resume_config(root, "ref", "ref-to-zero3-dp2", zero_optimization={"stage": 3}))
    resumes += [_resume_config(root, source, name, **over) for name, (source, over) in RESPLIT_2.items()]
    second = _launch(root, resumes, "launch-b")
    combos = [_config(root, name, **over) for name, over in LAYOUTS_4.items()]
    combos += [_resume_config(root, source, name, **over) for name, (source, over) in RESPLIT_4.items()]
    results.update(_launch(root, combos, "launch-c", nproc=4))
    for source, name, over in (
        ("zero1", "zero1-to-zero2-dp1", {"zero_optimization": {"stage": 2}}),
        ("zero3", "zero3-to-zero0-dp1", {"zero_optimization": {"stage": 0}}),
        *((source, name, over) for name, (source, over) in RESPLIT_1.items()),
    ):
        results[name] = _train_here(_resume_config(root, source, name, **over))
    results.update(first)
    results.update(second)
    results["root"] = root
    return results


def _max_diff(a: dict[Any, float], b: dict[Any, float]) -> float:
    keys = sorted(set(a) & set(b), key=int)
    assert keys, (a, b)
    return max(abs(a[k] - b[k]) for k in keys)


@pytest.mark.parametrize("layout", [*LAYOUTS, *LAYOUTS_4])
def test_layout_matches_one_process(runs: dict[str, Any], layout: str) -> None:
    ref, got = runs["ref"], runs[layout]
    assert sorted(map(int, got["losses"])) == list(range(1, 11))
    diff = _max_diff(ref["losses"], got["losses"])
    assert diff <= TOL, f"{layout}: max |dloss| {diff:.2e} over 10 steps"
    assert abs(ref["valid"] - got["valid"]) <= TOL
    # Losses actually moved, so agreeing is not trivial.
    assert got["losses"]["10"] < got["losses"]["1"] - 0.5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_same_layout_is_bitwise(runs: dict[str, Any], layout: str) -> None:
    first, again = runs[layout]["losses"], runs[f"{layout}-resumed"]["losses"]
    assert sorted(map(int, again)) == list(range(6, 11))
    assert all(again[k] == first[k] for k in again), (first, again)
    assert runs[f"{layout}-resumed"]["valid"] == runs[layout]["valid"]


@pytest.mark.parametrize(
    ("name", "source"),
    [("ref-to-zero3-dp2", "ref"), ("zero1-to-zero2-dp1", "zero1"), ("zero3-to-zero0-dp1", "zero3")],
)
def test_resume_across_zero_stage_and_dp_size(runs: dict[str, Any], name: str, source: str) -> None:
    """Weights, Adam moments, step and schedule carry over; only the all-reduce order changes."""
    resumed = runs[name]["losses"]
    assert sorted(int(k) for k in resumed) == list(range(6, 11))
    original = {str(k): v for k, v in runs[source]["losses"].items()}
    assert _max_diff(original, {str(k): v for k, v in resumed.items()}) <= TOL


def test_checkpoint_files_follow_the_layout(runs: dict[str, Any]) -> None:
    """One layout-free file per (stage, tensor rank) and none of DeepSpeed's: each tensor is saved once."""
    root: Path = runs["root"]
    expected = {
        "tp2": {"portable_pp00_tp00.pt", "portable_pp00_tp01.pt"},
        "pp2": {"portable_pp00_tp00.pt", "portable_pp01_tp00.pt"},
        "tp2pp2": {f"portable_pp{stage:02d}_tp{tp:02d}.pt" for stage in range(2) for tp in range(2)},
        "zero3": {"portable_pp00_tp00.pt"},
    }
    for name, files in expected.items():
        tag = root / "runs" / name / "global_step5"
        assert {p.name for p in tag.glob("*.pt")} == files, name
    tp = root / "runs" / "tp2-ds" / "global_step5"
    assert {p.name for p in tp.glob("*.pt")} == {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"}
    pp = root / "runs" / "pp2-ds" / "global_step5"
    assert (pp / "layer_00-model_00-model_states.pt").is_file() and not list(pp.glob("portable_*"))
    z3 = root / "runs" / "zero3" / "global_step5"
    assert json.loads((z3 / "layout.json").read_text()) == {"tp": 1, "pp": 1, "dp": 2, "zero_stage": 3}


@pytest.mark.parametrize("name", [*RESPLIT_2, *RESPLIT_1, *RESPLIT_4])
def test_resume_across_tensor_and_pipeline_sizes(runs: dict[str, Any], name: str) -> None:
    """Weights and Adam moments re-split for the new layout: steps 6..10 follow the 1-process run."""
    source = (RESPLIT_2 | RESPLIT_1 | RESPLIT_4)[name][0]
    resumed = runs[name]["losses"]
    assert sorted(int(k) for k in resumed) == list(range(6, 11))
    assert _max_diff(runs["ref"]["losses"], resumed) <= TOL
    assert _max_diff(runs[source]["losses"], resumed) <= TOL
    assert abs(runs[name]["valid"] - runs["ref"]["valid"]) <= TOL


def test_sharded_run_samples_at_the_end(runs: dict[str, Any]) -> None:
    sample = runs["ref-to-tp2"]["sample"]
    assert isinstance(sample, str) and sample


def test_layout_change_without_portable_files_is_refused(runs: dict[str, Any]) -> None:
    from neoxcli.errors import NeoxError

    root: Path = runs["root"]
    config = _resume_config(root, "tp2-ds", "tp2-no-portable", model_parallel_size=1)
    with pytest.raises(
        NeoxError, match=r"tp2-no-portable/global_step5 was saved with model_parallel_size 2"
    ) as err:
        _train_here(config)
    assert "model_parallel_size: 2" in (err.value.hint or "")


def test_pipeline_names_match_a_real_pipeline(runs: dict[str, Any]) -> None:
    """``shard_names`` (used to re-split offline) names exactly what DeepSpeed's stages saved."""
    from neoxcli.checkpoint.reshard import shard_names
    from neoxcli.config import load_config

    root: Path = runs["root"]
    cfg = load_config([root / "pp2.yml"])
    tag = root / "runs" / "pp2" / "global_step5"
    for stage in range(2):
        saved = torch.load(tag / f"portable_pp{stage:02d}_tp00.pt", weights_only=False)["params"]
        method = cfg.parallel.pipe_partition_method
        assert sorted(shard_names(cfg.model, 512, 1, 2, method, stage)) == sorted(saved)


def test_sharded_checkpoints_load_for_inference(runs: dict[str, Any], tmp_path: Path) -> None:
    """Merged TP/PP checkpoints give the 1-process model's logits and greedy text, both ways of merging agree."""
    from neoxcli.checkpoint import load_for_inference, load_module_state
    from neoxcli.checkpoint.reshard import merge_module_files
    from neoxcli.cli import main

    root: Path = runs["root"] / "runs"
    ref, tokenizer, _ = load_for_inference(root / "ref")
    x = torch.tensor([tokenizer.encode("the quick brown fox jumps over")])
    with torch.no_grad():
        expected = ref(x)
    texts = {}
    for name in ("ref", "tp2", "pp2", "tp2pp2", "tp2-to-tp1"):
        model, _, cfg = load_for_inference(root / name)
        with torch.no_grad():
            diff = (model(x) - expected).abs().max().item()
        assert diff <= 1e-4, f"{name}: max |dlogit| {diff:.2e}"
        tag = root / name / "global_step10"
        if name in ("tp2", "pp2"):
            # The same run saved as DeepSpeed's per-rank module files (fp32 here) merges to the same weights.
            ds_tag = root / f"{name}-ds" / "global_step10"
            portable, deepspeed_files = (
                load_module_state(tag, cfg.model),
                merge_module_files(ds_tag, cfg.model),
            )
            assert set(portable) == set(deepspeed_files)
            assert all(torch.equal(portable[k], deepspeed_files[k]) for k in portable)
            assert all(torch.equal(v, deepspeed_files[k]) for k, v in load_module_state(ds_tag).items())
        out = tmp_path / f"{name}.jsonl"
        args = [
            "generate",
            "-c",
            str(root / name),
            "--greedy",
            "--prompt",
            "the quick",
            "--output-file",
            str(out),
        ]
        assert main([*args, "--max-new-tokens", "24"]) == 0
        texts[name] = json.loads(out.read_text())["text"]
    assert len(set(texts.values())) == 1, texts


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])


def test_damaged_shard_is_one_error(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated layout-free shard of a TP checkpoint is named in one error line, for generate and for resume."""
    from neoxcli.cli import main

    root: Path = runs["root"]
    run = tmp_path / "tp2-damaged"
    shutil.copytree(root / "runs" / "tp2", run)
    shard = run / "global_step10" / "portable_pp00_tp01.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["generate", "-c", str(run), "--prompt", "the", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: cannot read {shard}: damaged or not a PyTorch checkpoint" in err and "Traceback" not in err
    )
    config = _resume_config(root, "tp2", "tp2-damaged-resume", model_parallel_size=1)
    (root / "runs" / "tp2-damaged-resume" / "global_step5" / "portable_pp00_tp01.pt").write_bytes(b"")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "portable_pp00_tp01.pt: damaged or not a PyTorch checkpoint" in err and "Traceback" not in err
