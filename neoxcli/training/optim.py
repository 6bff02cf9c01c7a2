"""The optimizer a run trains with, built from ``optimizer``, ``use_bnb_optimizer`` and ``weight_decay``.

``optimizer.type`` chooses (lower-cased):

* ``adam``/``adamw`` and DeepSpeed's Adam names: torch's fused AdamW (8 bytes of fp32
  state per parameter); with ``use_bnb_optimizer: true`` (GPT-NeoX's key) bitsandbytes'
  8-bit AdamW instead;
* ``adamw8bit``: bitsandbytes' 8-bit AdamW (blockwise-quantized moments, ~2 bytes per
  parameter; under ZeRO 0 tensors under 4096 elements keep fp32 moments, as bitsandbytes
  does, and from ZeRO 1 on each rank's flat partition is quantized whole);
* ``torchao_adamw8bit``: torchao's 8-bit AdamW (the same budget; it compiles its step per
  tensor shape on the first step);
* ``lion``: Lion (Chen et al. 2023; GPT-NeoX's ``lion``), one fp32 moment: 4 bytes;
* ``adafactor``: torch's Adafactor, factored second moments (row and column statistics);
* ``sgd``: SGD with ``momentum``.

Every one is a plain ``torch.optim.Optimizer`` that DeepSpeed drives as a client
optimizer, and whose ``state_dict`` holds only tensors and numbers, so DeepSpeed's
checkpoint files restore it exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from neoxcli.config.schema import ADAM_TYPES, NeoXConfig
from neoxcli.errors import NeoxError

#: Optimizers whose state is not Adam's fp32 ``exp_avg``/``exp_avg_sq`` per parameter, so the
#: layout-free checkpoint files cannot carry it to another layout.
LAYOUT_BOUND = ("adamw8bit", "torchao_adamw8bit", "adafactor")


def optimizer_kind(cfg: NeoXConfig) -> str:
    """The optimizer ``cfg`` trains with, one of the names in the module docstring."""
    kind = cfg.train.optimizer.type.lower()
    if kind in ADAM_TYPES:
        return "adamw8bit" if cfg.train.use_bnb_optimizer else "adamw"
    return kind


def _require(module: str, kind: str, extra: str = "optim") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise NeoxError(
            f"optimizer {kind} needs the {module.split('.')[0]} package, which is not installed",
            hint=f"pip install 'neox[{extra}]' (or choose optimizer.type: AdamW)",
        ) from None


def build_optimizer(cfg: NeoXConfig, model: Any, device_type: str) -> Any:
    from neoxcli.model.mup import param_groups

    opt = cfg.train.optimizer
    kind = optimizer_kind(cfg)
    lr, eps = float(opt.setting("lr")), float(opt.setting("eps"))
    betas = tuple(float(b) for b in opt.setting("betas"))
    groups = param_groups(model, cfg.train.weight_decay)
    if kind == "adamw":
        # Fused AdamW runs on CPU and GPU; DeepSpeed's own Adam variants need JIT-built ops.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(opt.setting("momentum")))
    if kind == "adamw8bit":
        bnb = _require("bitsandbytes", kind)
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps)
    if kind == "torchao_adamw8bit":
        ao = _require("torchao.optim", kind)
        # torchao reads the learning rate as a tensor (its compiled step takes it as an input);
        # AnnealingLR fills that tensor in place.
        for g in groups:
            g["lr"] = torch.tensor(lr)
        return ao.AdamW8bit(groups, lr=torch.tensor(lr), betas=betas, eps=eps)
    if kind == "lion":
        return Lion(groups, lr=lr, betas=betas)
    if kind == "adafactor":
        # Adafactor's own epsilons and decay rate: Adam's eps means something else there.
        return torch.optim.Adafactor(groups, lr=lr)
    raise NeoxError(  # pragma: no cover - the schema restricts optimizer.type
        f"optimizer.type {opt.type!r} is not supported",
        hint="use Adam, AdamW, SGD, adamw8bit, torchao_adamw8bit, lion or adafactor",
    )


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): the update is the sign of an interpolation of momentum and gradient.

    Decoupled weight decay as in AdamW; one fp32 moment (``exp_avg``) per parameter,
    so the layout-free checkpoint files carry it like Adam's first moment.
    """

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99)) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, g = state["exp_avg"], p.grad
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.sign(m * beta1 + g * (1 - beta1)), alpha=-lr)
                m.lerp_(g, 1 - beta2)
        return loss


def state_bytes(optimizer: Any) -> int:
    """Bytes the optimizer's per-parameter state holds, counted from the state tensors themselves.

    Quantized states (torchao's tensor subclasses) count their inner tensors (codes and
    scales); bitsandbytes keeps its codes, block maxima and quantization maps as plain
    tensors in the state. Step counters are counted too (a few bytes per tensor).
    """
    seen: set[int] = set()

    def size(t: Any) -> int:
        if not torch.is_tensor(t) or id(t) in seen:
            return 0
        seen.add(id(t))
        flatten = getattr(t, "__tensor_flatten__", None)
        if flatten is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            names, _ = flatten()
            return sum(size(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    def walk(v: Any) -> int:
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(walk(x) for x in v)
        return size(v)

    return sum(walk(s) for s in optimizer.state.values())
