"""Layout-free state to and from a live DeepSpeed engine (the files are ``neoxcli.checkpoint.portable``).

Gathering a shard's full fp32 weights and optimizer state is collective under
ZeRO (every rank of the shard's data-parallel group calls it); setting them
works on a freshly built engine of any ZeRO stage. The optimizer state is not
tied to Adam: every tensor the optimizer keeps per parameter (Adam's
``exp_avg``/``exp_avg_sq``, an 8-bit optimizer's quantized states) is saved
under its own key, in its own dtype, and restored through the optimizer's own
``load_state_dict`` where DeepSpeed leaves the optimizer unwrapped. Under
ZeRO 1-3 the state lives on flat partitions, so only element-wise states
(one value per weight) can be cut per parameter; anything else is refused
with one line. DeepSpeed is imported only when one of these functions runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from neoxcli.checkpoint.portable import portable_name, weights_only_error
from neoxcli.errors import NeoxError

#: DeepSpeed's dynamic loss scaler's counters (fp16): a resume continues its schedule.
_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def _base_optimizer(engine: Any) -> Any:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16), or the engine's own."""
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _state_keys(base: Any) -> list[str]:
    """The optimizer's tensor states besides ``step`` (Adam: ``exp_avg``, ``exp_avg_sq``), in a fixed order.

    Empty before the first step (Adam creates its state then): every rank
    steps together, so all of them agree on the list.
    """
    keys = {k for s in base.state.values() for k, v in s.items() if k != "step" and torch.is_tensor(v)}
    return sorted(keys)


def _zero12_state(engine: Any, param: Any, key: str) -> torch.Tensor:
    """Full optimizer state ``key`` of a ZeRO-1/2 (or bf16) parameter, summed from each rank's fragment.

    Reads the base optimizer's state of the flat partition directly: DeepSpeed's
    fragment links are set up lazily and can miss a partition.
    """
    import torch.distributed as dist

    mapping = param._hp_mapping
    flats = engine.optimizer.single_partition_of_fp32_groups
    group = mapping.param_group_index if mapping is not None else 0
    saved = _base_optimizer(engine).state.get(flats[group], {}).get(key)
    if saved is not None and saved.numel() != flats[group].numel():
        raise NeoxError(
            f"the optimizer's state {key!r} is not one value per weight, so it cannot be saved per parameter "
            "under ZeRO stage 1 or 2",
            hint="train this optimizer with zero_optimization: {stage: 0}",
        )
    dtype = saved.dtype if saved is not None else torch.float32
    out = torch.zeros(param.numel(), dtype=dtype, device=param.device)
    if mapping is not None and saved is not None:
        hp, lp = mapping.get_hp_fragment_address(), mapping.lp_fragment_address
        out.narrow(0, lp.start, lp.numel).copy_(saved.narrow(0, hp.start, hp.numel))
    dist.all_reduce(out, group=param._dp_group)
    return out.view(param.shape)


def _full(engine: Any, param: Any, key: str | None) -> torch.Tensor | None:
    """Full fp32 value (``key`` None) or optimizer state of ``param``; collective under ZeRO.

    None for a parameter DeepSpeed does not wrap (ZeRO 0 in fp32: the optimizer holds it directly).
    """
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
    if value is None:
        return None
    value = value.detach()
    return (value.float() if key is None else value).cpu().clone()


def engine_state(engine: Any) -> dict[str, Any]:
    """The engine's own counters a resume needs besides the optimizer: skipped steps, the loss scaler."""
    out: dict[str, Any] = {"skipped_steps": int(getattr(engine, "skipped_steps", 0) or 0)}
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if scaler is not None:
        fields = {k: getattr(scaler, k) for k in _SCALER_FIELDS if hasattr(scaler, k)}
        out["loss_scaler"] = {k: v.item() if torch.is_tensor(v) else v for k, v in fields.items()}
    return out


def gather_state(engine: Any, keep: bool = True, optimizer: bool = True) -> dict[str, Any]:
    """Per-parameter fp32 weights and (``optimizer``) optimizer state of this rank's shard.

    Every rank must call. Ranks that will not write pass ``keep=False``: they
    join each collective but drop the gathered tensors at once, so only the
    writer ever holds a full shard. ``optimizer=False`` gathers the weights only.
    """
    base = _base_optimizer(engine)
    keys = _state_keys(base) if optimizer else []
    params: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in engine.module.named_parameters():
        entry: dict[str, torch.Tensor] = {}
        fp32 = _full(engine, p, None)
        entry["fp32"] = fp32 if fp32 is not None else p.detach().float().cpu().clone()
        if fp32 is None:
            # The optimizer holds this parameter itself: its state is saved as it is (any shape, any dtype).
            plain = base.state.get(p, {}) if optimizer else {}
            for key in keys:
                value = plain.get(key)
                if torch.is_tensor(value) and keep:
                    entry[key] = value.detach().cpu().clone()
        else:
            for key in keys:
                value = _full(engine, p, key)
                if value is not None and keep:
                    entry[key] = value
        if keep:
            params[name] = entry
    steps = [s["step"] for s in base.state.values() if "step" in s]
    return {
        "params": params,
        "step": max(float(s) for s in steps) if steps else 0.0,
        "step_is_tensor": all(torch.is_tensor(s) for s in steps),
        "optimizer": optimizer,
        "engine": engine_state(engine),
    }


def save_portable(
    engine: Any,
    tag_dir: Path,
    stage: int,
    tp_rank: int,
    write: bool,
    extra: dict[str, Any],
    optimizer: bool = True,
) -> Path | None:
    """Gather (collectively) and, where ``write``, store this shard's portable state; returns the file written."""
    state = gather_state(engine, keep=write, optimizer=optimizer)
    if not write:
        return None
    state.update(extra)
    tag_dir.mkdir(parents=True, exist_ok=True)
    path = tag_dir / portable_name(stage, tp_rank)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _step_value(step: float, like: Any, as_tensor: bool) -> Any:
    if not as_tensor:
        return int(step) if float(step).is_integer() else step
    if torch.is_tensor(like):
        return torch.tensor(step, dtype=like.dtype, device=like.device)
    return torch.tensor(step, dtype=torch.float32)


def _load_plain(base: Any, named: dict[str, Any], state: dict[str, Any], step: Any) -> None:
    """Optimizer state of parameters the optimizer holds itself, through its own ``load_state_dict``.

    The optimizer's loader applies its own placement rules (a fused Adam's
    ``step`` on the parameter's device, an 8-bit state kept in uint8).
    """
    index = {id(p): i for i, p in enumerate(p for group in base.param_groups for p in group["params"])}
    slots = {}
    for name, p in named.items():
        saved = {k: v for k, v in state["params"][name].items() if k != "fp32"}
        if saved and id(p) in index:
            slots[index[id(p)]] = {"step": step, **saved}
    if slots:
        base.load_state_dict({"state": slots, "param_groups": base.state_dict()["param_groups"]})


def set_engine_state(engine: Any, saved: dict[str, Any]) -> None:
    """Put ``engine_state``'s counters back into a freshly built engine."""
    if "skipped_steps" in saved and hasattr(engine, "skipped_steps"):
        engine.skipped_steps = int(saved["skipped_steps"])
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    for key, value in (saved.get("loss_scaler") or {}).items():
        if scaler is not None and hasattr(scaler, key):
            old = getattr(scaler, key)
            setattr(
                scaler,
                key,
                torch.tensor(value, dtype=old.dtype, device=old.device) if torch.is_tensor(old) else value,
            )


def load_optimizer_state(engine: Any, state: dict[str, Any], where: Path | str = "the checkpoint") -> None:
    """Set fp32 master weights, optimizer state and step counts in a freshly built engine.

    A weights-only checkpoint (``save_optimizer: false``) is refused: resuming
    it would silently restart the optimizer.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if state.get("optimizer") is False:
        raise weights_only_error(where)
    base = _base_optimizer(engine)
    step = float(state["step"])
    as_tensor = bool(state.get("step_is_tensor", True))
    named = dict(engine.module.named_parameters())
    keys = sorted({k for entry in state["params"].values() for k in entry if k != "fp32"})
    flats = getattr(engine.optimizer, "single_partition_of_fp32_groups", None)
    for flat in getattr(engine.optimizer, "fp32_partitioned_groups_flat", []):
        # ZeRO-3 writes states into existing slots, which the optimizer only creates at its first step.
        slot = base.state[flat]
        for key in keys:
            slot.setdefault(key, torch.zeros_like(flat))
        slot.setdefault("step", _step_value(step, None, as_tensor))
    plain: dict[str, Any] = {}
    for name, p in named.items():
        saved = state["params"][name]
        if flats is not None and hasattr(p, "_hp_mapping"):
            # ZeRO-1/2: the state lives on flat partitions and is created at the first step;
            # create it now and fill in this rank's fragment of each parameter.
            safe_set_full_fp32_param(p, saved["fp32"].to(p.device))
            mapping = p._hp_mapping
            if mapping is None:
                continue
            flat = flats[mapping.param_group_index]
            slot = base.state[flat]
            hp, lp = mapping.get_hp_fragment_address(), mapping.lp_fragment_address
            for key in keys:
                if key in saved:
                    if key not in slot:
                        slot[key] = torch.zeros_like(flat, dtype=saved[key].dtype)
                    src = (
                        saved[key].to(flat.device, slot[key].dtype).reshape(-1).narrow(0, lp.start, lp.numel)
                    )
                    slot[key].narrow(0, hp.start, hp.numel).copy_(src)
            slot.setdefault("step", _step_value(step, None, as_tensor))
        elif hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, saved["fp32"].to(p.device))
            for key in keys:
                if key in saved:
                    safe_set_full_optimizer_state(p, saved[key].to(p.device), key)
        elif any(k in saved for k in keys):
            plain[name] = p
    if plain:
        _load_plain(base, plain, state, _step_value(step, None, as_tensor))
    for entry in base.state.values():
        if "step" in entry:
            entry["step"] = _step_value(step, entry["step"], torch.is_tensor(entry["step"]))
    set_engine_state(engine, state.get("engine") or {})
