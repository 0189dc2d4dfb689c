"""The fused Triton FP8-AdamW kernel against the PyTorch path, under TRITON_INTERPRET=1 on the CPU
(or compiled on a CUDA device when there is one)."""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    # triton.jit decides at decoration time whether to interpret: set it before the kernels load
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")

from methods.fp8 import optim_codec as codec  # noqa: E402
from methods.fp8 import optim_triton  # noqa: E402
from methods.fp8.adamw import FP8AdamW  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module", autouse=True)
def interpreted_kernels():
    if DEVICE.type == "cpu" and not type(optim_triton._fp8_adamw_kernel).__name__.startswith("Interpreted"):
        importlib.reload(optim_triton)  # imported earlier without TRITON_INTERPRET
    yield


@pytest.mark.parametrize("transform", ["none", "sqrt", "dre"])
@pytest.mark.parametrize("fmt,nb,block", [("e4m3", 5, 256), ("e5m2", 3, 100)])  # 100: masked columns
def test_kernel_codec_matches_reference(fmt, transform, nb, block):
    g = torch.Generator().manual_seed(nb + block)
    x = torch.randn(nb, block, generator=g) * torch.logspace(-6, 2, nb)[:, None]
    if transform == "sqrt":
        x = x * x
    x[0, :9] = 0
    x = x.to(DEVICE)
    f = codec.FORMATS[fmt]
    ref = codec.encode(x, f, transform)
    codes, scale, k, y = optim_triton.encode_decode(x, fmt, transform)
    ref_y = codec.decode(ref["codes"], ref["scale"], f, transform, ref.get("k"))
    assert torch.isfinite(y).all()
    # plain and sqrt scaling: amax, a correctly rounded division and RTNE to FP8 -> the same bits
    # (torch's CPU sqrt is not always correctly rounded, so allow a stray code there);
    # DRE goes through log2/exp2, which may differ by an fp32 ulp and move a code by one step.
    differ = (codes.view(torch.uint8) != ref["codes"].view(torch.uint8)).float().mean().item()
    assert differ <= {"none": 0.0, "sqrt": 0.005, "dre": 0.02}[transform]
    torch.testing.assert_close(scale, ref["scale"], rtol=0, atol=0)
    if transform == "dre":
        assert torch.equal(k, ref["k"])
    num = (y.double() - ref_y.double()).norm()
    assert num <= 1e-3 * ref_y.double().norm()


def _run(impl, dtype, steps, **opts):
    g = torch.Generator().manual_seed(11)
    shapes = [(37, 19), (300,), (2, 256)]
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(dtype).to(DEVICE)) for s in shapes]
    opt = FP8AdamW(
        [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
        lr=1e-2,
        impl=impl,
        seed=5,
        **opts,
    )
    for _ in range(steps):
        for p in params:
            spread = torch.logspace(-4, 0, p.shape[-1])
            p.grad = (torch.randn(p.shape, generator=g) * spread).to(dtype).to(DEVICE)
        opt.step()
    return params, opt


@pytest.mark.parametrize(
    "dtype,opts",
    [
        (torch.bfloat16, dict()),  # stochastic rounding: same hash bits on both paths
        (torch.bfloat16, dict(stochastic_rounding=False)),
        (torch.bfloat16, dict(master_weights=True)),
        (torch.bfloat16, dict(v_format="e5m2", v_transform="none", m_transform="dre", block_size=100)),
        (torch.float32, dict(v_transform="sqrt")),
    ],
)
def test_fused_step_matches_pytorch_path(dtype, opts):
    ref, ropt = _run("torch", dtype, 2, **opts)
    out, oopt = _run("triton", dtype, 2, **opts)
    for r, o in zip(ref, out):
        assert torch.isfinite(o).all()
        rs, os_ = ropt.state[r], oopt.state[o]
        # fp32 arithmetic may differ in the last bit (FMA contraction, sqrt rounding); measured under
        # the interpreter: bf16 weights and all codes identical, fp32 weights within 2e-7 relative
        if dtype == torch.bfloat16:
            ulp = r.float().abs() * 2.0**-7
            assert ((o.float() - r.float()).abs() <= ulp).all()
            assert (o != r).float().mean() <= 0.01
        else:
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-7)
        for key in ("exp_avg", "exp_avg_sq"):
            differ = (os_[key].view(torch.uint8) != rs[key].view(torch.uint8)).float().mean().item()
            assert differ <= 0.01
            torch.testing.assert_close(os_[f"{key}_scale"], rs[f"{key}_scale"], rtol=1e-5, atol=0)
        if "master" in rs:
            torch.testing.assert_close(os_["master"], rs["master"], rtol=1e-6, atol=1e-8)
            assert torch.equal(o, os_["master"].bfloat16())


def test_fused_step_rejects_fp16_params():
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.float16, device=DEVICE))
    p.grad = torch.ones_like(p)
    opt = FP8AdamW([p], lr=1e-3, impl="triton")
    with pytest.raises(TypeError, match="bf16 and fp32"):
        opt.step()


def test_probed_step_is_the_unprobed_step_and_predicts_as_the_reference():
    """A probed step (``methods.fp8.lost_updates``) runs the reference update on copies before the kernel:
    weights and states as without it; the predicted share is the reference path's on the first step."""
    from tests.fp8.conftest import probe_fp8_adamw

    plain, popt, _ = probe_fp8_adamw("triton", probe=False, device=DEVICE)
    probed, qopt, figs = probe_fp8_adamw("triton", probe=True, device=DEVICE)
    for a, b in zip(plain, probed):
        assert torch.equal(a, b)
        for k, v in popt.state[a].items():
            assert torch.equal(
                v.view(torch.uint8) if v.dtype.itemsize == 1 else v,
                qopt.state[b][k].view(torch.uint8) if v.dtype.itemsize == 1 else qopt.state[b][k],
            ), k
    _, _, ref = probe_fp8_adamw("torch", probe=True, device=DEVICE)
    assert figs[0]["lost_pred_frac"] == ref[0]["lost_pred_frac"]
    assert abs(figs[0]["unchanged_frac"] - ref[0]["unchanged_frac"]) <= 0.01
