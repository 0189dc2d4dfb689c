"""Inputs saved for backward in FP8 (methods/fp8/saved.py) on the model's RMSNorm and SwiGLU.

The gradients must be the module's exact gradients at the decoded inputs (checked against autograd in
float64 at those inputs), within one E4M3 rounding of the unquantized gradients, and the forward output
must be the unquantized one. What is kept for backward is measured from the autograd graph itself.
"""

from __future__ import annotations

import copy

import pytest
import torch

from methods.fp8.quantize import quantize
from methods.fp8.saved import SAVED_FORMAT, save_inputs_in_fp8, saves_inputs_in_fp8
from methods.fp8.scaling import Blocks
from models.llama import RMSNorm, SwiGLU

SHAPES = [(2, 5, 128), (3, 7, 200), (1, 4, 64)]  # last dims: a multiple of the group, not one, smaller than one
GROUP = 128


def decoded(x: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """The value backward sees: x rounded to E4M3 with one scale per 1 x group (the library's own quantizer)."""
    q = quantize(x.reshape(-1, x.shape[-1]), SAVED_FORMAT, Blocks(1, group), backend="torch")
    return q.dequantize(torch.float64).reshape(x.shape)


def make(kind: str, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "rmsnorm":
        m = RMSNorm(dim)
        with torch.no_grad():
            m.weight.copy_(1 + 0.1 * torch.randn(dim, generator=g))
        return m
    return SwiGLU()


def inputs(kind: str, shape, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1)
    n = 1 if kind == "rmsnorm" else 2
    xs = [torch.randn(shape, generator=g) * 3 for _ in range(n)]
    xs[0][..., 3] *= 50  # an outlier channel: what per-group scales are for
    return [x.to(dtype).requires_grad_() for x in xs]


@pytest.mark.parametrize("kind", ["rmsnorm", "swiglu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_are_exact_at_the_decoded_inputs(kind, shape):
    ref = make(kind, shape[-1], 0)
    fp8 = save_inputs_in_fp8(copy.deepcopy(ref), GROUP)
    assert saves_inputs_in_fp8(fp8) and not saves_inputs_in_fp8(ref)
    xs = inputs(kind, shape, 0)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    out = fp8(*xs)
    with torch.no_grad():
        assert torch.equal(out, ref(*xs))  # the forward is the unquantized one
    out.backward(dy)

    # reference: float64 autograd of the same module at the decoded inputs
    ref64 = copy.deepcopy(ref).double()
    xh = [decoded(x.detach()).requires_grad_() for x in xs]
    ref64(*xh).backward(dy.double())
    for x, r in zip(xs, xh):
        torch.testing.assert_close(x.grad.double(), r.grad, rtol=1e-5, atol=1e-6)
    for p, r in zip(fp8.parameters(), ref64.parameters()):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-5, atol=1e-5)

    # and within FP8 error of the unquantized gradients (relative to their scale)
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    ref(*xs2).backward(dy)
    for x, x2 in zip(xs, xs2):
        err = (x.grad - x2.grad).norm() / x2.grad.norm()
        assert 0 < err < 0.1, err  # nonzero: the backward really used the FP8 copies


def test_bf16_inputs_keep_their_dtype_and_autocast():
    m = save_inputs_in_fp8(SwiGLU())
    gate, up = inputs("swiglu", (2, 3, 256), 1, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(gate, up)
    out.float().sum().backward()
    assert gate.grad.dtype == up.grad.dtype == torch.bfloat16
    assert torch.isfinite(gate.grad.float()).all()


def saved_bytes(module, xs) -> int:
    """Bytes the autograd graph of ``module(*xs)`` keeps for backward, beyond the inputs themselves:
    tensors it saves through autograd plus those the FP8 function keeps on its context."""
    keep = []

    def pack(t):
        keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*xs)
    inputs = {x.untyped_storage()._cdata for x in xs}
    seen, total = set(inputs), 0
    for t in keep:
        st = t.untyped_storage()
        if st._cdata not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(st._cdata)
            total += st.nbytes()
    ctx = out.grad_fn
    for packed in getattr(ctx, "packed", None) or []:
        total += sum(t.untyped_storage().nbytes() for t in packed[:2])
    saves_inputs = ctx is not None and getattr(ctx, "packed", None) is not None
    return total + (0 if saves_inputs else sum(x.untyped_storage().nbytes() for x in xs))


@pytest.mark.parametrize("kind,plain_min", [("rmsnorm", 8.0), ("swiglu", 4.0)])
def test_what_is_kept_for_backward(kind, plain_min):
    """fp32 RMSNorm input: a plain RMSNorm keeps at least two fp32 copies (x and the normalised x),
    8 B/value; saved in FP8 it keeps 1 + 4/128. SwiGLU on bf16 inputs: gate, up and silu(gate), >= 4 B."""
    shape = (4, 16, 256)
    dtype = torch.float32 if kind == "rmsnorm" else torch.bfloat16
    xs = inputs(kind, shape, 2, dtype)
    n = xs[0].numel()
    plain = saved_bytes(make(kind, shape[-1], 0), xs) / n
    fp8 = saved_bytes(save_inputs_in_fp8(make(kind, shape[-1], 0), GROUP), xs) / n
    per_input = 1 + 4 / GROUP
    assert plain >= plain_min
    assert fp8 == pytest.approx(len(xs) * per_input)


def test_bad_group_is_refused():
    with pytest.raises(ValueError, match="group"):
        save_inputs_in_fp8(SwiGLU(), 0)


def test_the_option_wraps_the_blocks_nonlinear_layers_and_saves_activations():
    """fp8_saved_nonlinear on an own FP8 recipe: every block's two RMSNorms and its SwiGLU, not the final
    norm; the run trains, and the trace of a step holds fewer activations."""
    from methods.base import HParams, RunContext
    from methods.memory_trace import trace_step
    from methods.registry import get_method
    from models.config import SIZES
    from models.llama import build_model

    cfg = SIZES["tiny"]
    method = get_method("fp8-own-tensorwise", fp8_saved_nonlinear=True)
    trainee = method.build(build_model(cfg, 0), HParams(lr=1e-3), RunContext(device=torch.device("cpu"), seed=0))
    wrapped = sorted(n for n, m in trainee.model.named_modules() if saves_inputs_in_fp8(m))
    assert wrapped == sorted(
        f"layers.{i}.{n}" for i in range(cfg.n_layers) for n in ("attn_norm", "mlp_norm", "mlp.act")
    )
    x = torch.randint(0, cfg.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    losses = [trainee.train_step(x, x, 1e-3).loss for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    plain = trace_step(get_method("fp8-own-tensorwise"), cfg, 1, 128)
    fp8 = trace_step(method, cfg, 1, 128)
    assert fp8.persistent == plain.persistent
    assert fp8.act_peak < 0.9 * plain.act_peak
