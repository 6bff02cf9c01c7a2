"""Tensor-parallel sampling: one ``neox generate`` session over N local ranks, each holding its shard.

``launch`` writes the checked request to a private file and starts
``python -m neoxcli.generation.tp_worker --request FILE`` on N local ranks
through the local launcher and its supervisor (rendezvous on a free loopback
port, one failed rank stops the rest). Every rank loads the model, keeps its
shard (``neoxcli.parallel.tensor.apply_tensor_parallel``: local heads, local
MLP columns, a vocabulary block of the head, gathered into full logits) and
runs the very same session: the all-reduced activations and gathered logits
are identical on every rank, so every rank draws the same tokens and takes
the same path through the decode loop (the collectives stay in step). Rank 0
alone prints and writes the output file.

Plain ``torch.distributed`` (gloo on CPU, NCCL on GPUs) serves here: sampling
needs no DeepSpeed engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neoxcli.errors import NeoxError
from neoxcli.generation.session import SamplingOptions, SessionRequest, load_model, serve
from neoxcli.launchers.local import LocalLauncher

WORKER = "neoxcli.generation.tp_worker"


class _SamplingLauncher(LocalLauncher):
    """The local launcher, starting the sampling worker instead of the training worker."""

    def worker_argv(self, run_config_path: Path) -> list[str]:
        return [self.python, "-m", WORKER, "--request", str(run_config_path)]


def write_request(request: SessionRequest, path: Path) -> None:
    body = dataclasses.asdict(request)
    body["output_file"] = str(request.output_file) if request.output_file is not None else None
    path.write_text(json.dumps(body), encoding="utf-8")


def read_request(path: Path) -> SessionRequest:
    body = json.loads(path.read_text(encoding="utf-8"))
    options = dict(body.pop("options"))
    options["stop"] = tuple(options["stop"])
    out = body.pop("output_file")
    return SessionRequest(
        options=SamplingOptions(**options), output_file=Path(out) if out is not None else None, **body
    )


def launch(request: SessionRequest, ranks: int, env: Mapping[str, str] | None = None) -> int:
    """Run ``request`` on ``ranks`` local tensor-parallel ranks; returns the job's exit code."""
    from neoxcli.config.schema import NeoXConfig

    if request.interactive:
        raise NeoxError("--interactive runs in one process", hint="drop --tensor-parallel")
    if request.options.compile:
        raise NeoxError("--compile is not combined with --tensor-parallel", hint="drop one of them")
    launcher = _SamplingLauncher()
    cfg = NeoXConfig.model_validate({"launcher": {"launcher": "local", "num_gpus": ranks}})
    environ = dict(os.environ if env is None else env)
    hosts = launcher.resolve_hosts(cfg, environ)
    with tempfile.TemporaryDirectory(prefix="neox-generate-") as tmp:
        path = Path(tmp) / "request.json"
        write_request(request, path)
        plan = launcher.build(cfg, hosts, path, environ)
        return launcher.run(plan)


def shard(model: Any, rank: int, world: int) -> Any:
    """This rank's tensor-parallel shard of the full ``model``, returning full (gathered) logits."""
    import torch

    from neoxcli.parallel.tensor import apply_tensor_parallel

    apply_tensor_parallel(model, torch.distributed.group.WORLD, rank, world)
    model.head.gather_output = True
    return model.eval()


def run_rank(request: SessionRequest, request_path: Path) -> None:
    """One rank's part: rendezvous, load, keep the shard, run the session (only rank 0 is seen)."""
    import contextlib
    import datetime

    import torch

    from neoxcli.parallel.distributed import collective_timeout_s, detect

    dist = detect()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    torch.distributed.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://{dist.master_addr}:{dist.master_port}",
        rank=dist.rank,
        world_size=dist.world_size,
        timeout=datetime.timedelta(seconds=collective_timeout_s(None, cuda)),
    )
    try:
        device = f"cuda:{dist.local_rank}" if cuda else "cpu"
        model, tokenizer = load_model(request.checkpoint, request.tag, device=device, dtype=request.dtype)
        model = shard(model, dist.rank, dist.world_size)
        if dist.is_main:
            serve(request, model, tokenizer)
            return
        # The other ranks run the same session unseen: same calls, same collectives, their own scratch file.
        if request.output_file is not None:
            scratch = request_path.parent / f"rank-{dist.rank}-{request.output_file.name}"
            request = dataclasses.replace(request, output_file=scratch)
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
            contextlib.redirect_stderr(null),
        ):
            serve(request, model, tokenizer)
    finally:
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER}")
    parser.add_argument(
        "--request", required=True, type=Path, help="the checked request `neox generate` wrote"
    )
    args = parser.parse_args(argv)
    try:
        run_rank(read_request(args.request), args.request)
    except NeoxError as exc:
        if os.environ.get("NEOX_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: [rank {os.environ.get('RANK', '?')}] {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
