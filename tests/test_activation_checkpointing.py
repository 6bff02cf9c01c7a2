"""Activation checkpointing: the same gradients with less kept, in one process and through a pipeline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_model_config, write_char_corpus
from procs import run_ranks

from neoxcli.model import GPTModel

V = 96


def _grads_and_saved(granularity: str | None, num_layers: int = 1, **over: Any) -> tuple[dict, int]:
    """Gradients of one training step, and the bytes autograd kept for the backward pass."""
    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=4, hidden_dropout=0.1, attention_dropout=0.1, **over)
    model = GPTModel(cfg, V).train()
    model.set_activation_checkpointing(granularity, num_layers)
    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    torch.manual_seed(2)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}, saved


@pytest.mark.parametrize(
    "granularity,num_layers",
    [("full", 1), ("full", 3), ("selective", 1)],
    ids=["full-1", "full-3", "selective"],
)
@pytest.mark.parametrize("over", [{}, {"pos_emb": "alibi"}], ids=["rotary", "alibi"])
def test_gradients_identical_and_less_kept(granularity: str, num_layers: int, over: dict) -> None:
    ref, kept = _grads_and_saved(None, **over)
    got, kept_ckpt = _grads_and_saved(granularity, num_layers, **over)
    for name, g in ref.items():
        assert torch.equal(g, got[name]), name  # dropout replays its masks: bit-identical
    assert kept_ckpt < kept
    if granularity == "full":
        assert kept_ckpt < kept / 2


def test_off_in_eval_and_decode() -> None:
    """Checkpointing is for training: eval forwards and KV-cache decoding run the blocks directly."""
    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(), V).eval()
    ids = torch.randint(0, V, (1, 10))
    with torch.no_grad():
        plain = model(ids)
        model.set_activation_checkpointing("full", 2)
        cache = model.make_kv_cache(1, 12)
        assert torch.equal(model(ids), plain)
        steps = [
            model(ids[:, :6], kv_cache=cache),
            *(model(ids[:, t : t + 1], kv_cache=cache, start_pos=t) for t in range(6, 10)),
        ]
    assert (torch.cat(steps, 1) - plain).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="granularity"):
        model.set_activation_checkpointing("some")


def test_config_keys_reach_the_model(tmp_path: Path) -> None:
    """GPT-NeoX's keys turn it on through ``parallelize``; they are no longer ignored with a warning."""
    from neoxcli.config import load_config
    from neoxcli.parallel.grid import Layout
    from neoxcli.parallel.plan import make_loss_fn, parallelize

    path = tmp_path / "c.yml"
    path.write_text(
        yaml.safe_dump({"checkpoint-activations": True, "checkpoint-num-layers": 2, "num-layers": 4})
    )
    cfg = load_config([path])
    assert cfg.train.checkpoint_activations and cfg.train.checkpoint_num_layers == 2
    model = GPTModel(cfg.model, V)
    out = parallelize(model, Layout(), None, cfg, make_loss_fn())
    assert out.checkpoint_every == 2
    assert not any(b.attention.recompute_core for b in out.blocks)


# --------------------------------------------------------------------------- under a pipeline


def _config(root: Path, name: str, **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "num_layers": 4,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "seq_length": 32,
        "pos_emb": "rotary",
        "hidden_dropout": 0.1,
        "tokenizer_type": "CharLevelTokenizer",
        "data_path": str(root / "data" / "tiny_text_document"),
        "data_cache_dir": str(root / "cache"),
        "split": "90,10,0",
        "optimizer": {"type": "Adam", "params": {"lr": 2e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "train_iters": 4,
        "eval_interval": 1000,
        "eval_iters": 0,
        "seed": 1234,
        "sample_at_end": False,
        "pipe_parallel_size": 2,
        "save": str(root / "runs" / name),
    }
    cfg.update(over)
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _worker(out: Path, configs: list[str]) -> None:
    """Train each config; rank 0 records the losses and how many checkpointed regions ran."""
    import time

    import torch.utils.checkpoint as torch_ckpt
    from deepspeed.runtime.activation_checkpointing import checkpointing as ds_ckpt

    from neoxcli.config import load_config
    from neoxcli.training.trainer import train

    calls = {"deepspeed": 0, "torch": 0}
    ds_checkpoint, torch_checkpoint = ds_ckpt.CheckpointFunction.apply, torch_ckpt.checkpoint

    def count_ds(*args: Any) -> Any:
        calls["deepspeed"] += 1
        return ds_checkpoint(*args)

    def count_torch(*args: Any, **kwargs: Any) -> Any:
        calls["torch"] += 1
        return torch_checkpoint(*args, **kwargs)

    ds_ckpt.CheckpointFunction.apply = count_ds
    torch_ckpt.checkpoint = count_torch
    results = {}
    for c in configs:
        calls.update(deepspeed=0, torch=0)
        start = time.perf_counter()
        result = train(load_config([Path(c)]))
        results[Path(c).stem] = {
            "losses": [r["loss"] for r in result.history],
            "calls": dict(calls),
            "seconds": time.perf_counter() - start,
        }
    if os.environ.get("RANK") == "0":
        out.write_text(json.dumps(results))


@pytest.mark.slow
def test_pipeline_losses_identical_with_checkpointing(tmp_path: Path) -> None:
    """PP=2 over 2 processes: DeepSpeed's interval checkpointing and selective recompute change no loss bit."""
    pytest.importorskip("deepspeed")
    (tmp_path / "data").mkdir()
    write_char_corpus(tmp_path / "data" / "tiny_text_document")
    configs = [
        _config(tmp_path, "plain"),
        _config(tmp_path, "full2", checkpoint_activations=True, checkpoint_num_layers=2),
        _config(tmp_path, "selective", checkpoint_activations=True, recompute_granularity="selective"),
    ]
    out = tmp_path / "out.json"
    run_ranks([__file__, str(out), *map(str, configs)], tmp_path)
    runs = json.loads(out.read_text())
    print({name: round(run["seconds"], 1) for name, run in runs.items()})
    plain = runs["plain"]["losses"]
    assert len(plain) == 4
    assert runs["full2"]["losses"] == plain
    assert runs["selective"]["losses"] == plain
    # Rank 0 holds 2 of the 4 blocks: one DeepSpeed checkpoint of 2 blocks per micro-batch; none without.
    assert runs["plain"]["calls"] == {"deepspeed": 0, "torch": 0}
    assert runs["full2"]["calls"]["deepspeed"] > 0 and runs["full2"]["calls"]["torch"] == 0
    assert runs["selective"]["calls"]["torch"] > 0 and runs["selective"]["calls"]["deepspeed"] == 0


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2:])
