"""Numerics of the non-FP8 building blocks: stochastic rounding, own AdamW, bf16 GEMM emulation."""

import math

import pytest
import torch
import torch.nn.functional as F

from methods.bf16_emulation import _Bf16Matmul
from methods.fp8.adamw_base import AdamW
from methods.fp8.rounding import stochastic_round_bf16


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return 20 * math.log10(ref.norm() / (ref - out).norm())


def test_stochastic_rounding_is_unbiased_and_brackets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g) * 3
    samples = torch.stack([stochastic_round_bf16(x, g).float() for _ in range(4000)])
    lo = x.to(torch.bfloat16).float()
    # every sample is one of the two bf16 neighbours of x
    ulp = (
        torch.nextafter(x.abs().to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
        - x.abs().to(torch.bfloat16).float()
    )
    assert ((samples - x).abs() <= ulp * 1.01).all()
    # unbiased: mean error far below one ulp (standard error ~ ulp / sqrt(4000) / 2)
    err = (samples.mean(0) - x).abs() / ulp
    assert err.max() < 0.05, err.max()
    # and it does round up sometimes: not just round-to-nearest
    assert (samples != lo).any()


def test_stochastic_rounding_keeps_exact_and_nonfinite_values():
    x = torch.tensor([1.0, -2.5, 0.0, float("inf"), float("-inf"), float("nan")])
    y = stochastic_round_bf16(x).float()
    assert torch.equal(y[:5], x[:5])
    assert torch.isnan(y[5])


def test_stochastic_rounding_keeps_small_updates_on_average():
    # 1 + 1e-4 is below half a bf16 ulp of 1 (2^-8): round-to-nearest loses it every time.
    w = torch.full((20000,), 1.0)
    upd = w + 1e-4
    assert torch.equal(upd.to(torch.bfloat16).float(), w)
    sr = stochastic_round_bf16(upd, torch.Generator().manual_seed(1)).float()
    assert abs(sr.mean().item() - 1.0001) < 2e-5


@pytest.mark.parametrize("shape", [(7,), (33, 17), (128, 64)])
def test_own_adamw_matches_torch_adamw_in_fp32(shape):
    g = torch.Generator().manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(shape, generator=g))
    p2 = torch.nn.Parameter(p1.detach().clone())
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    o1, o2 = AdamW([p1], **kw), torch.optim.AdamW([p2], **kw)
    for _ in range(5):
        grad = torch.randn(shape, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_own_adamw_master_copy_tracks_fp32_run():
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(256, generator=g).to(torch.bfloat16).float())
    low = torch.nn.Parameter(ref.detach().to(torch.bfloat16))
    o_ref = AdamW([ref], lr=1e-3)
    o_low = AdamW([low], lr=1e-3, master_weights=True)
    for _ in range(20):
        grad = torch.randn(256, generator=g)
        ref.grad, low.grad = grad.clone(), grad.to(torch.bfloat16)
        o_ref.step()
        o_low.step()
    master = o_low.state[low]["master"]
    assert master.dtype == torch.float32
    assert torch.equal(low.detach(), master.to(torch.bfloat16))
    assert (master - ref).abs().max() < 1e-3  # only the bf16 rounding of the grads differs


SHAPES = [(4, 16, 32, 24), (3, 33, 130, 7), (2, 8, 256, 128)]  # (batch, tokens, in, out)


@pytest.mark.parametrize("b,t,k,n", SHAPES)
def test_bf16_emulated_linear_matches_rounded_reference(b, t, k, n):
    """Emulated bf16 linear = float64 product of bf16-rounded operands, rounded to bf16 (fp32 sums
    differ from float64 only by summation rounding), and its gradients follow with a random grad_output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, k, generator=g, requires_grad=True)
    w = torch.randn(n, k, generator=g, requires_grad=True)
    gy = torch.randn(b, t, n, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16), _Bf16Matmul():
        y = F.linear(x, w)
    assert y.dtype == torch.bfloat16
    y.backward(gy.to(torch.bfloat16))
    xr, wr = x.detach().to(torch.bfloat16).double(), w.detach().to(torch.bfloat16).double()
    ref = xr @ wr.T
    # output: within one bf16 rounding of the exact product of the rounded operands
    assert ((y.double() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()
    gyr = gy.to(torch.bfloat16).double()
    assert sqnr_db(gyr @ wr, x.grad) > 40
    assert sqnr_db(gyr.reshape(-1, n).T @ xr.reshape(-1, k), w.grad) > 40


def test_bf16_emulation_agrees_with_native_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(64, 96, generator=g), torch.randn(80, 96, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.linear(x, w)
        with _Bf16Matmul():
            emulated = F.linear(x, w)
    exact = x.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T
    # both are bf16 GEMMs with fp32 accumulation: each within ~1 bf16 ulp of the exact product
    assert sqnr_db(exact, native) > 40 and sqnr_db(exact, emulated) > 40
    assert sqnr_db(native.float(), emulated.float()) > 40


def test_bf16_emulation_leaves_fp32_alone():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g)
    with _Bf16Matmul():
        y = F.linear(x, w)
    assert y.dtype == torch.float32 and torch.equal(y, F.linear(x, w))


def test_own_adamw_state_dict_round_trip_keeps_dtypes_and_continues_identically():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, generator=g) for _ in range(6)]

    def make():
        p = torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16))
        return p, AdamW([p], lr=1e-2, stochastic_rounding=True, seed=5)

    p1, o1 = make()
    for gr in grads:
        p1.grad = gr.to(torch.bfloat16)
        o1.step()
    p2, o2 = make()
    for gr in grads[:3]:
        p2.grad = gr.to(torch.bfloat16)
        o2.step()
    sd = o2.state_dict()
    p3, o3 = make()
    with torch.no_grad():
        p3.copy_(p2)
    o3.load_state_dict(sd)
    assert o3.state[p3]["exp_avg"].dtype == torch.float32  # not cast to the bf16 parameter dtype
    for gr in grads[3:]:
        p3.grad = gr.to(torch.bfloat16)
        o3.step()
    assert torch.equal(p1, p3)
