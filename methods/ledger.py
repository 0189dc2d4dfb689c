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
        try:
            inners = [getattr(t, n) for n in t.__tensor_flatten__()[0]]
        except RuntimeError:
            # a flatten that reads values fails on fake tensors (a memory trace): torchao's
            # WeightWithDynamicFloat8CastTensor tests ``if self._precomputed_scale``. Its tensor
            # attributes are the same inner tensors.
            inners = [v for v in vars(t).values() if isinstance(v, torch.Tensor)]
        return sum(tensor_bytes(x, seen) for x in inners)
    if t.device.type == "meta":
        return 0
    st = t.untyped_storage()
    key = storage_key(st)
    if key in seen or st.nbytes() == 0:
        return 0
    seen.add(key)
    return st.nbytes()


def storage_key(st: torch.UntypedStorage) -> int:
    """Identity of the storage behind a tensor: the address of its StorageImpl, which every view shares.
    Not ``data_ptr()``: a fake tensor (``methods.memory_trace``) has no data, and all of them read 0."""
    return st._cdata


class _Owners(set):
    """The ``seen`` set of one ledger walk that also remembers which component counted each storage,
    so that a memory trace can label the storages it tracks the way the ledger does."""

    def __init__(self, into: dict):
        super().__init__()
        self.into, self.component = into, None

    def add(self, key) -> None:
        super().add(key)
        self.into[key] = self.component


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


def ledger(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, list] | None = None,
    owners: dict | None = None,
) -> dict[str, int]:
    """Bytes per component; ``extra`` adds tensors a method keeps outside model and optimiser.
    ``owners``, if given, is filled with storage key (:func:`storage_key`) → component."""
    seen = _Owners(owners) if owners is not None else set()
    out = dict.fromkeys(COMPONENTS, 0)

    def count(comp: str, obj) -> None:
        if owners is not None:
            seen.component = comp
        out[comp] += nested_bytes(obj, seen)

    params = list(model.parameters())
    for p in params:
        count("weights", p)
    for p in params:
        if p.grad is not None:
            count("grads", p.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for k, v in state.items():
                count("master" if k == "master" else "optim", v)
    persistent = {n for n, _ in model.named_buffers() if _is_persistent(model, n)}
    for n, b in model.named_buffers():
        if n in persistent:
            count("meta", b)
    for comp, tensors in (extra or {}).items():
        count(comp, tensors)
    return out


def _is_persistent(model: nn.Module, name: str) -> bool:
    mod_name, _, buf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return buf not in getattr(mod, "_non_persistent_buffers_set", set())
