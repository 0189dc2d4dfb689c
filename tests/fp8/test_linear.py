"""The FP8 linear layer against a float64 reference: forward and both gradients, every recipe, shapes
that are not multiples of 128, a random grad_output; what it saves; dtypes; conversion of a model."""

import math

import pytest
import torch
from torch import nn

from methods.fp8.formats import E4M3, E5M2
from methods.fp8.gemm import fp8_mm, mm_reference
from methods.fp8.linear import FP8Linear, FP8Recipe, convert_to_fp8, fp8_telemetry, saved_activation_bytes
from methods.fp8.quantize import quantize
from methods.fp8.scaling import COLWISE, ROWWISE, TENSORWISE, BLOCK_128x128, TILE_1x128, TILE_128x1

SHAPES = [(64, 128, 96), (200, 256, 130), (77, 300, 256), (33, 688, 256)]  # (tokens, in, out)
RECIPES = {
    "tensorwise": FP8Recipe(),
    "delayed": FP8Recipe(scaling="delayed"),
    "rowwise": FP8Recipe(granularity="rowwise", pow2_scales=True),
    "blockwise": FP8Recipe(granularity="blockwise", grad_format="e4m3"),
    "tensorwise-e4m3-grads": FP8Recipe(grad_format="e4m3"),
}


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double()
    assert torch.isfinite(out).all()
    return 20 * math.log10(float(ref.norm()) / float((ref - out).norm()))


def run_layer(recipe, shape, gen, smooth=False, x_scale=None, steps=1):
    M, K, N = shape
    lin = FP8Linear(K, N, recipe=recipe, smooth=smooth)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=gen)
    for _ in range(steps):  # delayed scaling: later steps use the history of earlier ones
        x = torch.randn(M, K, generator=gen)
        if x_scale is not None:
            x = x * x_scale
        x.requires_grad_(True)
        lin.weight.grad = None
        y = lin(x)
        dy = torch.randn(y.shape, generator=gen) * 1e-3  # gradients are small; E5M2 must cope
        y.backward(dy)
    xd = x.detach().double().requires_grad_(True)
    wd = lin.weight.detach().double().requires_grad_(True)
    yd = xd @ wd.t()
    yd.backward(dy.double())
    return {"y": sqnr(yd, y), "dx": sqnr(xd.grad, x.grad), "dw": sqnr(wd.grad, lin.weight.grad)}, lin, (y, x)


@pytest.mark.parametrize("name", list(RECIPES))
def test_sqnr_against_float64(name):
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        s, _, _ = run_layer(RECIPES[name], shape, gen, steps=3 if name == "delayed" else 1)
        assert s["y"] >= 25, (shape, s)
        assert s["dx"] >= 20 and s["dw"] >= 20, (shape, s)
        # and not suspiciously high: the GEMMs really ran on FP8 values (~28.5 dB for two E4M3 operands)
        assert s["y"] < 35, (shape, s)


def test_high_precision_wgrad_option():
    gen = torch.Generator().manual_seed(1)
    s, _, _ = run_layer(FP8Recipe(wgrad_fp8=False), (100, 256, 130), gen)
    assert s["dw"] > 100  # fp32 GEMM of the unquantized operands
    assert 20 <= s["dx"] < 35 and 25 <= s["y"] < 35


def test_smooth_swiglu_keeps_delayed_scaling_from_saturating_on_an_outlier_burst():
    """Fishman et al.'s failure mode: a channel outgrows the amax history. Per-tensor delayed scaling
    then clamps it; Smooth-SwiGLU divides each channel by its own (power-of-two) amax first, so the
    quantized input's amax stays in (1/2, 1] and the history still fits."""
    K, N, M = 384, 160, 128
    results = {}
    for smooth in (False, True):
        gen = torch.Generator().manual_seed(2)
        lin = FP8Linear(K, N, recipe=FP8Recipe(scaling="delayed"), smooth=smooth)
        with torch.no_grad():
            lin.weight.normal_(0, 0.02, generator=gen)
        for _ in range(3):  # build the history on well-behaved inputs
            lin(torch.randn(M, K, generator=gen)).sum()
        x = torch.randn(M, K, generator=gen)
        x[:, 7] *= 50.0  # the burst
        x.requires_grad_(True)
        y = lin(x)
        dy = torch.randn(y.shape, generator=gen)
        y.backward(dy)
        xd = x.detach().double()
        ref = xd @ lin.weight.detach().double().t()
        rows = {r["tensor"]: r for r in lin.telemetry_rows("l")}
        sat = rows["input"]["saturated"]
        assert rows["input"]["saturated_frac_window"] == sat / (4 * M * K)  # the window: 4 forward passes
        assert lin.telemetry_rows("l")[0]["quantized_window"] == 0  # reading the window resets it
        results[smooth] = (sqnr(ref, y), sat)
        dx_ref = dy.double() @ lin.weight.detach().double()
        assert sqnr(dx_ref, x.grad) >= 20
    (plain_sqnr, plain_sat), (smooth_sqnr, smooth_sat) = results[False], results[True]
    assert plain_sat > 0 and smooth_sat == 0
    assert plain_sqnr < 20 <= 25 <= smooth_sqnr


@pytest.mark.parametrize("backend", ["dequant", "torch", "reference"])
@pytest.mark.parametrize(
    "blocks",
    [
        (TENSORWISE, TENSORWISE),
        (ROWWISE, COLWISE),
        (TILE_1x128, BLOCK_128x128),
        (TILE_1x128, TILE_128x1),
        (TENSORWISE, COLWISE),
    ],
    ids=lambda b: f"{b[0].label}-{b[1].label}",
)
def test_gemm_backends_agree_with_float64(backend, blocks):
    gen = torch.Generator().manual_seed(3)
    ga, gb = blocks
    for M, K, N in SHAPES[:3]:
        a = quantize(torch.randn(M, K, generator=gen), E4M3, ga)
        # B is logically (K, N); its groups run along K (a weight's 128x128 blocks: quantize W, transpose)
        b = (
            quantize(torch.randn(K, N, generator=gen), E5M2, gb)
            if gb != BLOCK_128x128
            else quantize(torch.randn(N, K, generator=gen), E5M2, gb).t()
        )
        ref = mm_reference(a, b, torch.float64, acc_dtype=torch.float64)
        out = fp8_mm(a, b, torch.float32, backend)
        # fp32 accumulation of exact FP8 products: |error| <= K * 2^-24 * (|A| @ |B|) (plus the rounding
        # of a dequantized value to fp32, another 2^-24 relative per operand)
        bound = (K + 2) * 2.0**-24 * (a.dequantize(torch.float64).abs() @ b.dequantize(torch.float64).abs())
        assert ((out.double() - ref).abs() <= bound).all()


def test_saves_fp8_not_high_precision():
    gen = torch.Generator().manual_seed(4)
    M, K, N = 512, 256, 688
    x = torch.randn(M, K, generator=gen, requires_grad=True)
    lin = nn.Linear(K, N, bias=False)

    def ref():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lin(x)

    base = saved_activation_bytes(ref, lin.weight)
    assert base["total"] == 2 * (M * K + N * K)  # bf16 copies of input and weight
    for name in ("tensorwise", "rowwise", "blockwise"):
        f = FP8Linear.from_linear(lin, RECIPES[name])

        def fp8(f=f):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                f(x)

        saved = saved_activation_bytes(fp8, f.weight)
        assert "bfloat16" not in saved and "float32" in saved
        assert saved["float8_e4m3fn"] == M * K + N * K  # one FP8 copy each, in the layout backward reads
        assert saved["total"] < 0.52 * base["total"], (name, saved, base)


def test_dtypes_and_autocast():
    lin = FP8Linear(96, 80)
    x = torch.randn(2, 5, 96, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 80)
    y.backward(torch.randn_like(y))
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    xb = torch.randn(7, 96, dtype=torch.bfloat16, requires_grad=True)
    yb = lin(xb)
    assert yb.dtype == torch.bfloat16
    yb.backward(torch.randn_like(yb))
    assert xb.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert lin(torch.randn(3, 96)).dtype == torch.float32


def test_nan_is_not_hidden():
    lin = FP8Linear(64, 32)
    x = torch.randn(16, 64)
    x[3, 5] = float("nan")
    y = lin(x)
    assert torch.isnan(y[3]).any()


def test_convert_model_filter_and_telemetry():
    from models import build_model, get_model_config

    cfg = get_model_config("tiny").with_vocab(256)
    model = build_model(cfg, seed=0)
    w0 = model.layers[0].mlp.w2.weight
    convert_to_fp8(model, FP8Recipe(scaling="delayed"), smooth=("*mlp.w2",))
    fp8 = [n for n, m in model.named_modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 7 * cfg.n_layers and all(n.startswith("layers.") for n in fp8)
    assert type(model.lm_head) is nn.Linear
    assert model.layers[0].mlp.w2.weight is w0 and model.layers[0].mlp.w2.smooth
    assert not model.layers[0].mlp.w1.smooth
    assert "weight" not in model.layers[0].mlp.w2.scalers  # a smoothed weight is scaled currently
    x = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    rows = fp8_telemetry(model)
    assert {r["tensor"] for r in rows} == {"input", "weight", "grad_output"}
    assert len(rows) == 3 * len(fp8)
    for r in rows:
        assert r["amax"] > 0 and r["scale"] > 0 and 0 <= r["saturated_frac"] <= 1
    # the head can be converted too, when asked
    model2 = convert_to_fp8(build_model(cfg, seed=0), FP8Recipe(), keep_high_precision=())
    assert isinstance(model2.lm_head, FP8Linear)


def test_recipe_validation():
    with pytest.raises(ValueError, match="per-tensor"):
        FP8Recipe(scaling="delayed", granularity="blockwise")
    with pytest.raises(ValueError):
        FP8Recipe(granularity="columnwise")
    with pytest.raises(ValueError, match="valid: e4m3"):
        FP8Recipe(grad_format="e3m9x")
    assert FP8Recipe(grad_format="e3m4").grad_format == "e3m4"  # a simulated ExMy (tests/fp8/test_exmy.py)
    with pytest.raises(ValueError, match="e3m4 is simulated"):
        FP8Recipe(grad_format="e3m4", backend="torch")
