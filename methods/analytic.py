"""The analytic model's per-method pieces: bytes per stored dtype, the parameter tensors of a model config,
and a method's default persistent bytes from its ``stores`` and its conversion on the meta device.
``Method.analytic_bytes`` starts from :func:`default_analytic_bytes`; ``methods.memory`` builds the
tables at any size from them. Below ``methods.base``: it knows methods only through what they expose
(``stores``, ``convert_model``)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch

from methods.context import RunContext
from methods.ledger import _is_persistent
from models.config import ModelConfig
from models.llama import Transformer

#: ledger components, in ``methods.ledger`` order
COMPONENTS = ("weights", "master", "grads", "optim", "meta")
#: fp32 ``step`` counter kept per parameter tensor by torch's and our AdamW
STEP_BYTES = 4

_DTYPE_BYTES = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "e4m3": 1,
    "e5m2": 1,
    "int8": 1,
    "uint8": 1,
    "fp4": 0.5,
    "int4": 0.5,
    "nvfp4": 0.5,
    "mxfp8": 1,
}


def dtype_bytes(name: str) -> float:
    """Bytes per value of a ``Method.stores`` entry: 'fp32', 'bf16', 'fp8-e4m3 (+scales)', '-' ..."""
    s = (name or "-").strip().lower()
    if s in ("-", "", "none", "n/a"):
        return 0.0
    head = s.replace("_", "-").split()[0]
    for key in (head, head.split("-")[0], head.split("-")[-1]):
        if key in _DTYPE_BYTES:
            return float(_DTYPE_BYTES[key])
    raise ValueError(f"cannot size stored dtype {name!r}; known: {', '.join(_DTYPE_BYTES)}, '-'")


@lru_cache(maxsize=64)
def param_numels(cfg: ModelConfig) -> tuple[int, ...]:
    """Element count of every parameter tensor of ``models.llama.Transformer(cfg)``, in order.

    Read off a one-layer model built on the meta device (no memory, exact shapes); the blocks are
    identical, so the layer's tensors repeat ``n_layers`` times.
    """
    with torch.device("meta"):
        model = Transformer(replace(cfg, n_layers=1))
    names = [n for n, _ in model.named_parameters()]
    numels = [p.numel() for p in model.parameters()]
    first = next(i for i, n in enumerate(names) if n.startswith("layers."))
    last = max(i for i, n in enumerate(names) if n.startswith("layers.")) + 1
    return tuple(numels[:first] + numels[first:last] * cfg.n_layers + numels[last:])


def converted_buffer_bytes(method, cfg: ModelConfig) -> float:
    """Persistent module buffers (FP8 scales, amax histories, cached weight copies) that
    ``method.convert_model`` adds, counted on a meta-device model: exact shapes, no memory, any size.
    0 where a conversion cannot run on the meta device."""
    conv = _converted(method, cfg)
    return conv[3] if conv is not None else 0.0


def _converted(method, cfg: ModelConfig):
    """``(weight bytes, grad bytes of tracked params, numel of untracked params, persistent buffer
    bytes)`` of the model after ``method.convert_model``; None if the conversion cannot run on the meta
    device. Converted at 1 and 2 layers and extrapolated linearly to ``n_layers`` (blocks are identical),
    so a 175B row costs what a 2-layer one does."""
    one, two = _converted_at(method, replace(cfg, n_layers=1)), _converted_at(method, replace(cfg, n_layers=2))
    if one is None or two is None:
        return None
    return tuple(a + (b - a) * (cfg.n_layers - 1) for a, b in zip(one, two))


@lru_cache(maxsize=256)
def _converted_at(method, cfg: ModelConfig):
    try:
        with torch.device("meta"):
            model = Transformer(cfg)
            model = method.convert_model(model, RunContext(device=torch.device("meta"), seed=0))
    except Exception:  # noqa: BLE001 - a conversion that needs real tensors: fall back to `stores`
        return None
    ps = list(model.parameters())
    weights = float(sum(p.numel() * p.element_size() for p in ps))
    tracked_grads = float(sum(p.numel() * p.element_size() for p in ps if p.requires_grad))
    untracked = float(sum(p.numel() for p in ps if not p.requires_grad))
    buffers = float(sum(b.numel() * b.element_size() for n, b in model.named_buffers() if _is_persistent(model, n)))
    return weights, tracked_grads, untracked, buffers


def default_analytic_bytes(method, cfg: ModelConfig) -> dict[str, float]:
    """Bytes per component for a method that keeps Adam's m and v per parameter in the dtypes its
    ``stores`` names, plus an fp32 step counter per tensor.

    Weights, their gradients and the persistent buffers are read off the model as the method converts
    it (built on the meta device): each parameter in its own dtype, its gradient in the same dtype
    (autograd's rule); a parameter autograd does not track (FP8 codes a method updates itself) has its
    gradient in ``stores["grads"]``. Where the conversion cannot run on the meta device, weights and
    grads come from ``stores`` as well.
    """
    st = method.stores
    numels = param_numels(cfg)
    n = sum(numels)
    out = dict.fromkeys(COMPONENTS, 0.0)
    conv = _converted(method, cfg)
    if conv is None:
        out["weights"] = n * dtype_bytes(st.get("weights", "fp32"))
        out["grads"] = n * dtype_bytes(st.get("grads", st.get("weights", "fp32")))
    else:
        out["weights"], tracked_grads, untracked, out["meta"] = conv
        out["grads"] = tracked_grads + untracked * dtype_bytes(st.get("grads", "-"))
    out["master"] = n * dtype_bytes(st.get("master", "-"))
    out["optim"] = n * (dtype_bytes(st.get("m", "fp32")) + dtype_bytes(st.get("v", "fp32"))) + STEP_BYTES * len(numels)
    return out
