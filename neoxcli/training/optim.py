"""The optimizer a run trains with, built from ``optimizer`` and ``weight_decay``."""

from __future__ import annotations

from typing import Any

from neoxcli.config.schema import OPTIMIZER_TYPES, NeoXConfig
from neoxcli.errors import NeoxError


def build_optimizer(cfg: NeoXConfig, model: Any, device_type: str) -> Any:
    import torch

    opt = cfg.train.optimizer
    kind = opt.type.lower()
    params = dict(opt.params)
    lr = float(params.pop("lr", 6e-4))
    # Unset betas are the optimizer's own default, as GPT-NeoX's (Fused)Adam leaves them:
    # (0.9, 0.999), not the (0.9, 0.95) that neox's default config spells out.
    betas = tuple(params.pop("betas", (0.9, 0.999)))
    eps = float(params.pop("eps", 1e-8))
    from neoxcli.model.mup import param_groups

    groups = param_groups(model, cfg.train.weight_decay)
    if kind != "sgd" and kind in OPTIMIZER_TYPES:
        # Fused AdamW runs on CPU and GPU; DeepSpeed's own Adam variants need JIT-built ops.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(params.pop("momentum", 0.0)))
    raise NeoxError(
        f"optimizer.type {opt.type!r} is not supported",
        hint="use Adam, AdamW or SGD",
    )
