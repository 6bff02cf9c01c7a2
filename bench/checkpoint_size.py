"""Bytes on disk of one checkpoint: neox's layout-free files against DeepSpeed's own, for the same run.

Trains a config (default: the quickstart, one rank) for a few iterations twice
in one process, once with the default lean format and once with
``portable_checkpoint: false`` (DeepSpeed's files), and prints each
checkpoint's size against the state it must hold: the fp32 weights plus the
optimizer's state tensors, counted from the live optimizer. The format before
lean checkpoints wrote both sets of files, so its size is the sum of the two.

    python bench/checkpoint_size.py                        # the quickstart (prepares its data in --workdir)
    python bench/checkpoint_size.py --config my.yml --iters 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any


def _state_bytes(engine: Any) -> tuple[int, int]:
    """(fp32 weights, optimizer state) bytes of one rank's model, from the tensors themselves."""
    import torch

    weights = sum(p.numel() * 4 for p in engine.module.parameters())
    opt = engine.optimizer
    base = getattr(opt, "optimizer", opt)
    state = sum(
        v.numel() * v.element_size()
        for s in base.state.values()
        for k, v in s.items()
        if k != "step" and torch.is_tensor(v)
    )
    return weights, state


def _tag_bytes(tag: Path) -> int:
    return sum(p.stat().st_size for p in tag.iterdir() if p.is_file())


def _train(config: str, save: Path, iters: int, extra: list[str]) -> tuple[Path, tuple[int, int]]:
    """Train ``iters`` steps of ``config`` and save once; returns the tag and the live state's sizes."""
    from neoxcli.config import load_config
    from neoxcli.parallel.distributed import detect
    from neoxcli.training.report import NullReporter
    from neoxcli.training.run import build_run
    from neoxcli.training.trainer import save as save_run
    from neoxcli.training.trainer import train_step

    sets = [f"save={save}", f"load={save}", "sample_at_end=false", *extra]
    run = build_run(load_config([config], sets), detect(), NullReporter())
    try:
        for _ in range(iters):
            train_step(run)
        tag = save_run(run, NullReporter())
    finally:
        run.sampler.close()
    assert tag is not None
    return tag, _state_bytes(run.engine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument(
        "--workdir", default=None, help="where the runs (and a preset's data) go (default: a temp dir)"
    )
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="neox-ckpt-size-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)

    lean_tag, (weights, state) = _train(args.config, work / "lean", args.iters, [])
    ds_tag, _ = _train(args.config, work / "deepspeed", args.iters, ["portable_checkpoint=false"])
    need = weights + state
    lean, ds = _tag_bytes(lean_tag), _tag_bytes(ds_tag)
    mib = 2**20
    print(
        f"fp32 weights {weights / mib:.1f} MiB + optimizer state {state / mib:.1f} MiB = {need / mib:.1f} MiB"
    )
    print(f"lean (layout-free files only)      {lean / mib:7.1f} MiB  ratio {lean / need:.3f}")
    print(f"DeepSpeed's files only             {ds / mib:7.1f} MiB  ratio {ds / need:.3f}")
    print(f"both (the format before)           {(lean + ds) / mib:7.1f} MiB  ratio {(lean + ds) / need:.3f}")
    print(f"lean / before: {lean / (lean + ds):.3f}")


if __name__ == "__main__":
    main()
