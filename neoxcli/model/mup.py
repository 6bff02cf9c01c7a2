"""Optimizer parameter groups: weight decay only on matrices, muP learning-rate scaling.

Under muP (Yang et al. 2022; the Cerebras-GPT recipe) with Adam, the hidden
matrices, whose fan-in grows with width, learn at ``lr / width_multiplier``;
embeddings, the output matrix, norms and biases keep the base rate. Groups
carry an ``lr_scale`` so that a scheduler sets ``lr = schedule(step) * lr_scale``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from neoxcli.model.gpt import EmbeddingLayer, GPTModel, Head


def param_groups(model: GPTModel, weight_decay: float) -> list[dict[str, Any]]:
    """Groups for ``torch.optim.AdamW(groups, lr=...)``; each has ``lr_scale`` (1.0 unless muP).

    Biases and norm weights get no weight decay (GPT-NeoX's convention).
    """
    cfg = model.cfg
    hidden_lr = 1.0 / cfg.mup_width_scale if cfg.use_mup else 1.0
    embedding_like: set[int] = set()
    for module in model.modules():
        if isinstance(module, (EmbeddingLayer, Head)):
            embedding_like.update(id(p) for p in module.parameters())
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay if p.dim() >= 2 else 0.0
        scale = hidden_lr if p.dim() >= 2 and id(p) not in embedding_like else 1.0
        buckets.setdefault((decay, scale), []).append(p)
    return [
        {"params": params, "weight_decay": decay, "lr_scale": scale}
        for (decay, scale), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))
    ]
