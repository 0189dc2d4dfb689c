"""Where a tensor's values can be read for free on the host, and what code does when they cannot.

Some numerics take a host-side shortcut on the CPU: read a scale or an amax as a Python float and skip
work (a delayed scale that cannot saturate needs no clamp), or pick the dequantize-then-fp32 GEMM that
is fastest on a CPU. On a GPU the same reads would stall the stream, so the device path computes on
tensors instead. Under ``FakeTensorMode`` (``methods.memory_trace``) values do not exist at all: a fake
CPU tensor takes the *device* path, so a traced step allocates what a GPU step would, not what the CPU
shortcut would.

Under ``torch.compile`` (``train.compile``) the code is traced once for all later values: nothing can be
read on the host while tracing (a read is a graph break, and Dynamo will not trace into the fake-tensor
module at all), so compiled code takes the device path as well, on tensors.
"""

from __future__ import annotations

import contextlib
import sys

import torch

# Not imported here: torch._subclasses.fake_tensor pulls in triton, which then reads TRITON_INTERPRET once
# and for all, before a test (or a user) can set it. No tensor can be fake until that module is loaded.
_FAKE_MODULE = "torch._subclasses.fake_tensor"


def is_fake(t) -> bool:
    if torch.compiler.is_compiling():  # Dynamo's tracing tensors are not a memory trace's: real values follow
        return False
    ft = sys.modules.get(_FAKE_MODULE)
    return ft is not None and ft.is_fake(t)


def real_tensors():
    """A context in which new tensors are real even inside a memory trace (for caches that outlive it)."""
    ft = sys.modules.get(_FAKE_MODULE)
    return ft.unset_fake_temporarily() if ft is not None else contextlib.nullcontext()


def host_readable(t: torch.Tensor) -> bool:
    """True for a real CPU tensor: reading its values costs no device sync and is possible at all."""
    if torch.compiler.is_compiling():  # no values while tracing: the device path (see above)
        return False
    return not is_fake(t) and t.device.type == "cpu"  # is_fake first: a fake tensor's .device is dispatched


def host_float(t: torch.Tensor | float, fake: float = float("nan")) -> float:
    """``float(t)``, or ``fake`` where ``t`` has no values (a fake tensor in a memory trace). Used for the
    host reads of a training step (loss, grad norm, step counters) that only steer logging, clipping and
    skipping: in a trace, ``fake=0.0`` for a norm means "finite, below the clip threshold"."""
    if isinstance(t, torch.Tensor) and is_fake(t):
        return fake
    return float(t)
