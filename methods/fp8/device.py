"""Where a tensor's values can be read for free on the host, and what code does when they cannot.

Some numerics take a host-side shortcut on the CPU: read a scale or an amax as a Python float and skip
work (a delayed scale that cannot saturate needs no clamp), or pick the dequantize-then-fp32 GEMM that
is fastest on a CPU. On a GPU the same reads would stall the stream, so the device path computes on
tensors instead. Under ``FakeTensorMode`` (``methods.memory_trace``) values do not exist at all: a fake
CPU tensor takes the *device* path, so a traced step allocates what a GPU step would, not what the CPU
shortcut would.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake


def host_readable(t: torch.Tensor) -> bool:
    """True for a real CPU tensor: reading its values costs no device sync and is possible at all."""
    return t.device.type == "cpu" and not is_fake(t)


def host_float(t: torch.Tensor | float, fake: float = float("nan")) -> float:
    """``float(t)``, or ``fake`` where ``t`` has no values (a fake tensor in a memory trace). Used for the
    host reads of a training step (loss, grad norm, step counters) that only steer logging, clipping and
    skipping: in a trace, ``fake=0.0`` for a norm means "finite, below the clip threshold"."""
    if isinstance(t, torch.Tensor) and is_fake(t):
        return fake
    return float(t)
