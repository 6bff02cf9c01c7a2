"""Layout-free state to and from a live DeepSpeed engine (the files are ``neoxcli.checkpoint.portable``).

Gathering a shard's full fp32 weights and Adam moments is collective under
ZeRO (every rank of the shard's data-parallel group calls it); setting them
works on a freshly built engine of any ZeRO stage. DeepSpeed is imported only
when one of these functions runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from neoxcli.checkpoint.portable import portable_name

_MOMENTS = ("exp_avg", "exp_avg_sq")


def _base_optimizer(engine: Any) -> Any:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16), or the engine's own."""
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _zero12_state(engine: Any, param: Any, key: str) -> torch.Tensor:
    """Full Adam state ``key`` of a ZeRO-1/2 (or bf16) parameter, summed from each rank's fragment.

    Reads the base optimizer's state of the flat partition directly: DeepSpeed's
    fragment links are set up lazily and can miss a partition.
    """
    import torch.distributed as dist

    mapping = param._hp_mapping
    out = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
    if mapping is not None:
        flat = engine.optimizer.single_partition_of_fp32_groups[mapping.param_group_index]
        hp, lp = mapping.get_hp_fragment_address(), mapping.lp_fragment_address
        saved = _base_optimizer(engine).state.get(flat, {}).get(key)
        if saved is not None:
            out.narrow(0, lp.start, lp.numel).copy_(saved.narrow(0, hp.start, hp.numel))
    dist.all_reduce(out, group=param._dp_group)
    return out.view(param.shape)


def _full(engine: Any, param: Any, key: str | None) -> torch.Tensor | None:
    """Full fp32 value (``key`` None) or optimizer state of ``param``; collective under ZeRO."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if hasattr(param, "ds_id"):
        value = safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
    elif hasattr(param, "_hp_mapping"):
        if key is None:
            value = safe_get_full_fp32_param(param)
        elif hasattr(engine.optimizer, "single_partition_of_fp32_groups"):
            value = _zero12_state(engine, param, key)
        else:
            value = safe_get_full_optimizer_state(param, key)
    else:
        return None
    return None if value is None else value.detach().float().cpu().clone()


def portable_moments(optimizer: Any) -> tuple[str, ...]:
    """Which of Adam's moments ``optimizer`` holds as plain tensors, the ones the layout-free files carry.

    Adam creates its moments at the first step: a step-0 checkpoint (extra_save_iters: [0])
    has none to gather, and every rank steps together, so all of them agree on this. Lion
    has ``exp_avg`` only; quantized (8-bit) or factored states are none of these, and a
    checkpoint of such an optimizer resumes under its own layout only.
    """
    states = list(optimizer.state.values())
    if any(type(s.get(k)) not in (type(None), torch.Tensor) for s in states for k in _MOMENTS):
        return ()
    return tuple(k for k in _MOMENTS if any(k in s for s in states))


def gather_state(engine: Any, keep: bool = True) -> dict[str, Any]:
    """Per-parameter fp32 weights and Adam moments of this rank's shard (every rank must call).

    Ranks that will not write pass ``keep=False``: they join each collective but
    drop the gathered tensors at once, so only the writer ever holds a full shard.
    """
    base = _base_optimizer(engine)
    moments = portable_moments(base)
    params: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in engine.module.named_parameters():
        entry: dict[str, torch.Tensor] = {}
        fp32 = _full(engine, p, None)
        entry["fp32"] = fp32 if fp32 is not None else p.detach().float().cpu().clone()
        plain = base.state.get(p, {}) if fp32 is None else {}
        for key in moments:
            value = _full(engine, p, key) if fp32 is not None else plain.get(key)
            if value is not None and keep:
                entry[key] = value.detach().float().cpu().clone()
        if keep:
            params[name] = entry
    steps = [float(s["step"]) for s in base.state.values() if "step" in s]
    return {"params": params, "step": max(steps) if steps else 0.0}


def save_portable(
    engine: Any, tag_dir: Path, stage: int, tp_rank: int, write: bool, extra: dict[str, Any]
) -> None:
    """Gather (collectively) and, where ``write``, store this shard's portable state."""
    state = gather_state(engine, keep=write)
    if not write:
        return
    state.update(extra)
    path = tag_dir / portable_name(stage, tp_rank)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_optimizer_state(engine: Any, state: dict[str, Any]) -> None:
    """Set fp32 master weights, Adam moments and step counts in a freshly built engine."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    base = _base_optimizer(engine)
    step = float(state["step"])
    flats = getattr(engine.optimizer, "single_partition_of_fp32_groups", None)
    for flat in getattr(engine.optimizer, "fp32_partitioned_groups_flat", []):
        # ZeRO-3 writes moments into existing state, which Adam only creates at its first step.
        slot = base.state[flat]
        for key in _MOMENTS:
            slot.setdefault(key, torch.zeros_like(flat))
        slot.setdefault("step", torch.tensor(step, dtype=torch.float32))
    for name, p in engine.module.named_parameters():
        saved = state["params"][name]
        if flats is not None and hasattr(p, "_hp_mapping"):
            # ZeRO-1/2: Adam's state lives on flat partitions and is created at the first step;
            # create it now and fill in this rank's fragment of each parameter.
            safe_set_full_fp32_param(p, saved["fp32"].to(p.device))
            mapping = p._hp_mapping
            if mapping is None:
                continue
            flat = flats[mapping.param_group_index]
            slot = base.state[flat]
            hp, lp = mapping.get_hp_fragment_address(), mapping.lp_fragment_address
            for key in _MOMENTS:
                if key in saved:
                    if key not in slot:
                        slot[key] = torch.zeros_like(flat)
                    src = saved[key].to(flat.device, flat.dtype).reshape(-1).narrow(0, lp.start, lp.numel)
                    slot[key].narrow(0, hp.start, hp.numel).copy_(src)
            slot.setdefault("step", torch.tensor(step, dtype=torch.float32))
        elif hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, saved["fp32"].to(p.device))
            for key in _MOMENTS:
                if key in saved:
                    safe_set_full_optimizer_state(p, saved[key].to(p.device), key)
        elif any(k in saved for k in _MOMENTS):
            base.state[p] = {
                "step": torch.tensor(step, dtype=torch.float32),
                **{k: saved[k].to(p.device, p.dtype).clone() for k in _MOMENTS if k in saved},
            }
    for entry in base.state.values():
        if "step" in entry:
            old = entry["step"]
            entry["step"] = (
                torch.tensor(step, dtype=old.dtype, device=old.device) if torch.is_tensor(old) else step
            )
