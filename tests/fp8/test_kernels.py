"""The Triton kernels under ``TRITON_INTERPRET=1`` against their PyTorch references.

Quantization is bit-exact (codes, scales, 1/scales, amaxes, transposed copies, saturation counts): the
kernels round to the FP8 grid in fp32 arithmetic before casting, because the interpreter's own fp32→fp8
cast rounds half-away-from-zero and mishandles mantissa carries. The GEMM sums the same exact FP8
products in another order, so it is checked against the fp32 summation bound
|C - C_ref| <= (K + 2) * 2^-24 * (|A| @ |B|) (per element, against a float64 reference).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from methods.fp8.formats import E4M3, E5M2, fp8_values  # noqa: E402
from methods.fp8.gemm import mm_reference  # noqa: E402
from methods.fp8.kernels import quantize_triton_t, scaled_mm_triton, triton_available  # noqa: E402
from methods.fp8.linear import FP8Linear, FP8Recipe  # noqa: E402
from methods.fp8.quantize import quantize  # noqa: E402
from methods.fp8.scaling import (  # noqa: E402
    COLWISE,
    ROWWISE,
    TENSORWISE,
    BLOCK_128x128,
    Blocks,
    DelayedScaler,
    TILE_1x128,
    TILE_128x1,
)


def _runnable_here() -> bool:
    """On a GPU the kernels run compiled; on the CPU only if Triton was imported in interpreter mode."""
    if torch.cuda.is_available():
        return True
    import triton.language.standard as std

    return os.environ.get("TRITON_INTERPRET") == "1" and type(std.max).__name__ == "InterpretedFunction"


HERE = _runnable_here()
DEV = "cuda" if torch.cuda.is_available() else "cpu"
here = pytest.mark.skipif(
    not HERE, reason="Triton was imported before TRITON_INTERPRET=1 was set; covered by test_kernels_in_a_fresh_process"
)


@pytest.mark.skipif(HERE, reason="the kernel tests run in this process")
def test_kernels_in_a_fresh_process():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.fixture(scope="module", autouse=True)
def kernels_ready():
    if HERE:
        assert triton_available()


def same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def awkward(shape, gen, dtype):
    """Values at every scale, incl. exact FP8 ties and values just below a binade top after scaling."""
    x = torch.randn(*shape, generator=gen) * torch.exp2(torch.randint(-12, 12, (shape[1],), generator=gen).float())
    v = fp8_values(E4M3)
    x.view(-1)[: v.numel() - 1] = (v[1:] + v[:-1]) / 2 / 448 * float(x.abs().max())
    return x.to(DEV, dtype)


@pytest.mark.parametrize(
    "blocks", [TENSORWISE, ROWWISE, COLWISE, TILE_1x128, TILE_128x1, BLOCK_128x128], ids=lambda b: b.label
)
@here
def test_quantize_kernels_bit_exact(blocks):
    gen = torch.Generator().manual_seed(0)
    cases = [((40, 300), E4M3, torch.float32, False, 0), ((129, 130), E5M2, torch.bfloat16, True, 1)]
    for shape, fmt, dtype, pow2, margin in cases:
        x = awkward(shape, gen, dtype)
        q, qt = quantize_triton_t(x, fmt, Blocks(*blocks.resolve(shape)), pow2=pow2, margin=margin)
        r = quantize(x, fmt, blocks, pow2=pow2, margin=margin, backend="torch")
        assert same_codes(q.data, r.data), (shape, fmt, dtype)
        assert same_codes(qt, r.data.t()), (shape, fmt, dtype)
        assert torch.equal(q.scale, r.scale.reshape(q.scale.shape))
        assert torch.equal(q.scale_inv, r.scale_inv.reshape(q.scale.shape))
        assert torch.equal(q.amax, r.amax.float().reshape(q.amax.shape))


@here
def test_quantize_kernel_non_contiguous_input():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 200, generator=gen).to(DEV).t()  # (200, 96) column-major view
    for blocks in (TENSORWISE, TILE_1x128):
        q, _ = quantize_triton_t(x, E4M3, Blocks(*blocks.resolve(tuple(x.shape))))
        assert same_codes(q.data, quantize(x, E4M3, blocks, backend="torch").data)


@here
def test_delayed_kernel_counts_saturation_like_torch():
    gen = torch.Generator().manual_seed(2)
    st, sr = DelayedScaler(E5M2, history_len=4), DelayedScaler(E5M2, history_len=4)
    for mult in (1.0, 1.0, 40.0, 1.0):
        x = torch.randn(100, 190, generator=gen).to(DEV) * mult
        qt = quantize(x, E5M2, TENSORWISE, scaler=st, backend="triton")
        qr = quantize(x, E5M2, TENSORWISE, scaler=sr, backend="torch")
        assert same_codes(qt.data, qr.data)
        assert int(qt.n_sat) == int(qr.n_sat)
        assert torch.equal(st.amax_history, sr.amax_history) and torch.equal(st.scale, sr.scale)
        if mult > 1:
            assert int(qt.n_sat) > 0
    assert int(st.pos) == 4


@pytest.mark.parametrize(
    "pair",
    [
        (TENSORWISE, TENSORWISE),
        (ROWWISE, COLWISE),
        (TILE_1x128, BLOCK_128x128),
        (TILE_1x128, TILE_128x1),
        (TENSORWISE, COLWISE),
    ],
    ids=lambda p: f"{p[0].label}-{p[1].label}",
)
@here
def test_gemm_kernel_within_fp32_summation_bound(pair):
    gen = torch.Generator().manual_seed(3)
    ga, gb = pair
    for (M, K, N), fa, fb in (((40, 256, 32), E4M3, E4M3), ((33, 300, 70), E5M2, E4M3)):
        a = quantize(torch.randn(M, K, generator=gen).to(DEV), fa, ga, backend="torch")
        if gb == BLOCK_128x128:
            b = quantize(torch.randn(N, K, generator=gen).to(DEV), fb, gb, backend="torch").t()  # (K, N) view
        else:
            b = quantize(torch.randn(K, N, generator=gen).to(DEV), fb, gb, backend="torch")  # groups along K
        ref = mm_reference(a, b, torch.float64, acc_dtype=torch.float64)
        out = scaled_mm_triton(a, b, torch.float32)
        bound = (K + 2) * 2.0**-24 * (a.dequantize(torch.float64).abs() @ b.dequantize(torch.float64).abs())
        assert torch.isfinite(out).all()
        assert ((out.double() - ref).abs() <= bound).all(), (M, K, N)
        assert (out.double() - ref).abs().max() > 0 or K <= 128  # the bound is about real rounding
        outb = scaled_mm_triton(a, b, torch.bfloat16)
        assert outb.dtype == torch.bfloat16 and torch.equal(outb, out.to(torch.bfloat16))


@pytest.mark.parametrize(
    "name,recipe",
    [
        ("tensorwise", FP8Recipe(backend="triton")),
        ("blockwise", FP8Recipe(granularity="blockwise", grad_format="e4m3", backend="triton")),
    ],
)
@here
def test_fp8_linear_on_triton_matches_pytorch_path(name, recipe):
    gen = torch.Generator().manual_seed(4)
    M, K, N = 24, 160, 40
    w = torch.randn(N, K, generator=gen).to(DEV) * 0.02
    x = torch.randn(M, K, generator=gen).to(DEV)
    dy = torch.randn(M, N, generator=gen).to(DEV)
    outs = []
    for r in (recipe, FP8Recipe(**{**recipe.__dict__, "backend": "reference"})):  # vs the pure-PyTorch path
        lin = FP8Linear(K, N, recipe=r, device=DEV)
        with torch.no_grad():
            lin.weight.copy_(w)
        xi = x.clone().requires_grad_(True)
        y = lin(xi)
        y.backward(dy)
        outs.append((y, xi.grad, lin.weight.grad))
    for t, p in zip(outs[0], outs[1]):
        assert torch.allclose(t, p, rtol=1e-5, atol=1e-6 * float(p.abs().max()))
