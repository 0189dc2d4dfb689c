"""Persistent memory by component, measured from the tensors that exist (not from formulas).

Components:
- ``weights``: the model's parameters as stored (an FP8 parameter counts its bytes and scale);
- ``master``: high-precision copies an optimiser keeps of low-precision weights
  (convention: ``optimizer.state[p]["master"]``);
- ``grads``: ``p.grad`` tensors alive at the moment of measuring;
- ``optim``: every other tensor in the optimiser state (moments, FP8 codes, their scales, step);
- ``meta``: persistent module buffers: FP8 scales, amax histories, cached FP8 weight copies.

Each storage is counted once even if several tensors view it.
"""
from __future__ import annotations

import torch
from torch import nn

COMPONENTS = ("weights", "master", "grads", "optim", "meta")


def tensor_bytes(t, seen: set) -> int:
    """Bytes of the storages behind ``t`` not yet in ``seen``; follows tensor subclasses down."""
    if not isinstance(t, torch.Tensor):
        return 0
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        inner_names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n), seen) for n in inner_names)
    if t.device.type == "meta":
        return 0
    st = t.untyped_storage()
    key = (t.device.type, st.data_ptr(), st.nbytes())
    if key in seen or st.nbytes() == 0:
        return 0
    seen.add(key)
    return st.nbytes()


def nested_bytes(obj, seen: set) -> int:
    if isinstance(obj, torch.Tensor):
        return tensor_bytes(obj, seen)
    if isinstance(obj, dict):
        return sum(nested_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nested_bytes(v, seen) for v in obj)
    # optimiser-state containers that are neither tensors nor dicts (e.g. quantized state objects)
    inner = getattr(obj, "__dict__", None)
    if inner:
        return sum(nested_bytes(v, seen) for v in inner.values() if isinstance(v, (torch.Tensor, dict, list, tuple)))
    return 0


def ledger(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
           extra: dict[str, list] | None = None) -> dict[str, int]:
    """Bytes per component; ``extra`` adds tensors a method keeps outside model and optimiser."""
    seen: set = set()
    out = dict.fromkeys(COMPONENTS, 0)
    params = list(model.parameters())
    for p in params:
        out["weights"] += tensor_bytes(p, seen)
    for p in params:
        if p.grad is not None:
            out["grads"] += tensor_bytes(p.grad, seen)
    if optimizer is not None:
        for state in optimizer.state.values():
            for k, v in state.items():
                out["master" if k == "master" else "optim"] += nested_bytes(v, seen)
    persistent = {n for n, _ in model.named_buffers() if _is_persistent(model, n)}
    for n, b in model.named_buffers():
        if n in persistent:
            out["meta"] += tensor_bytes(b, seen)
    for comp, tensors in (extra or {}).items():
        out[comp] += nested_bytes(tensors, seen)
    return out


def _is_persistent(model: nn.Module, name: str) -> bool:
    mod_name, _, buf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return buf not in getattr(mod, "_non_persistent_buffers_set", set())
