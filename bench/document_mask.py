"""What packed-document training costs per step: plain causal batches against the three keys.

One process, one model, the same packed batches; each round runs both in turn
(forward + backward of ``GPTModel`` and the loss, the step's compute), then
prints the median times and the ratio (keys / plain: above 1 is what the keys
cost). Plain batches use SDPA's own causal path; ``reset_attention_mask``
needs a per-row document mask (dense on CPU, flex attention's block mask on
GPUs from 512 tokens on). Building the labels and ids (the batch sampler's
share, off the step when ``num_workers`` > 0) is timed on its own.

    python bench/document_mask.py                         # CPU: T = 512, a 4-layer 128-wide model
    python bench/document_mask.py --seq 2048 --hidden 512 --layers 8 --batch 8   # a GPU run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from neoxcli.config.schema import ModelConfig
from neoxcli.model import GPTModel
from neoxcli.training.documents import DocumentMasks

EOD = 0


def _step(model: GPTModel, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> None:
    logits = model(x, **kwargs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--doc-len", type=int, default=64, help="mean document length in tokens")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        seq_length=args.seq,
        pos_emb="rotary",
    )
    torch.manual_seed(0)
    model = GPTModel(cfg, 512).to(device)
    tokens = torch.randint(1, 512, (args.batch, args.seq + 1), device=device)
    tokens[torch.rand(tokens.shape, device=device) < 1.0 / args.doc_len] = EOD
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    docs = DocumentMasks(EOD, mask_loss=True, reset_positions=True, reset_attention=True)
    (_, positions, ids), labels = docs.apply(x, y)
    keyed = {"position_ids": positions, "document_ids": ids}
    plain_s, keys_s, build_s = [], [], []
    for r in range(args.rounds + 1):  # round 0 warms both up
        a = _time(lambda: _step(model, x, y, {}), device)
        b = _time(lambda: _step(model, x, labels, keyed), device)
        c = _time(lambda: docs.apply(x, y), device)
        model.zero_grad(set_to_none=True)
        if r:
            plain_s.append(a)
            keys_s.append(b)
            build_s.append(c)
    plain, keys, build = (statistics.median(v) for v in (plain_s, keys_s, build_s))
    print(
        f"{device.type}: batch {args.batch} x {args.seq} tokens, {args.layers} layers x {args.hidden}, "
        f"{int((x == EOD).sum())} EOD tokens"
    )
    print(f"plain causal      {plain * 1e3:8.1f} ms/step")
    print(f"all three keys    {keys * 1e3:8.1f} ms/step   ratio keys/plain {keys / plain:.2f}")
    print(f"labels + ids      {build * 1e3:8.2f} ms/batch (the sampler's share)")


if __name__ == "__main__":
    main()
