"""The optimizer a run trains with, built from ``optimizer`` and ``weight_decay``."""

from __future__ import annotations

from typing import Any

from neoxcli.config.schema import OPTIMIZER_TYPES, NeoXConfig
from neoxcli.errors import NeoxError


def build_optimizer(cfg: NeoXConfig, model: Any, device_type: str) -> Any:
    import torch

    opt = cfg.train.optimizer
    kind = opt.type.lower()
    lr, eps = float(opt.setting("lr")), float(opt.setting("eps"))
    betas = tuple(opt.setting("betas"))
    from neoxcli.model.mup import param_groups

    groups = param_groups(model, cfg.train.weight_decay)
    if kind != "sgd" and kind in OPTIMIZER_TYPES:
        # Fused AdamW runs on CPU and GPU; DeepSpeed's own Adam variants need JIT-built ops.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(opt.setting("momentum")))
    raise NeoxError(
        f"optimizer.type {opt.type!r} is not supported",
        hint="use Adam, AdamW or SGD",
    )
