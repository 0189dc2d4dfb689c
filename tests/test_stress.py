"""Issue 11's stress options: underflow telemetry, outlier injection, quantized norm gains, the stress profile."""

from __future__ import annotations

import math

import pytest
import torch

from methods.fp8.linear import FP8Linear, FP8Recipe, convert_to_fp8, fp8_telemetry
from methods.fp8.quantize import count_underflow, quantize
from methods.fp8.scaling import TENSORWISE, TILE_1x128
from methods.registry import get_method
from methods.stress import inject_outliers, norm_gain_telemetry, outlier_channels, quantize_norm_gains
from models.config import ModelConfig
from models.llama import build_model

CFG = ModelConfig(dim=256, n_layers=2, n_heads=4, ffn_dim=384, max_seq_len=64, vocab_size=512)


def _batch(seed=0, b=4, t=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (b, t), generator=g), torch.randint(0, CFG.vocab_size, (b, t), generator=g)


def _model(recipe: FP8Recipe | None, k: float = 1.0, seed: int = 0):
    m = build_model(CFG, seed)
    if recipe is not None:
        convert_to_fp8(m, recipe)
        if k != 1.0:
            inject_outliers(m, 0, 4, k)
    return m


# -- underflow telemetry ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e3m2"])
def test_count_underflow_is_nonzero_to_zero(fmt):
    x = torch.tensor([[1000.0, 1e-3, 0.0, -1e-4, 5.0, -1e-9]])
    q = quantize(x, fmt, TENSORWISE)
    back = q.dequantize()
    expect = int(((x != 0) & (back == 0)).sum())
    assert expect >= 1 and int(count_underflow(x, q)) == expect


def test_linear_underflow_fraction_last_and_window():
    torch.manual_seed(0)
    lin = FP8Linear(64, 32, recipe=FP8Recipe())
    torch.nn.init.normal_(lin.weight, std=0.05)
    xs = []
    for _ in range(3):
        x = torch.randn(16, 64)
        x[0, 0] = 1e4  # sets the per-tensor scale: small values flush
        x.requires_grad_()
        lin(x).backward(torch.randn(16, 32))
        xs.append(x.detach())
    rows = {r["tensor"]: r for r in fp8_telemetry(torch.nn.Sequential(lin))}
    for r in rows.values():
        assert {"underflow_frac", "underflowed", "underflow_frac_window"} <= set(r)
        assert 0 <= r["underflow_frac"] <= 1 and 0 <= r["underflow_frac_window"] <= 1
    per = [int(count_underflow(x, quantize(x, "e4m3", TENSORWISE))) for x in xs]
    assert min(per) > 0
    assert rows["input"]["underflowed"] == per[-1]
    assert rows["input"]["underflow_frac"] == per[-1] / xs[-1].numel()
    assert rows["input"]["underflow_frac_window"] == sum(per) / (3 * xs[0].numel())
    # the window was read: the next read covers only what came after
    lin(torch.randn(16, 64))
    again = {r["tensor"]: r for r in lin.telemetry_rows("l")}
    assert again["input"]["quantized_window"] == 16 * 64


# -- outlier injection ---------------------------------------------------------------------------------
def test_outlier_channels_are_fixed_and_in_the_first_tile():
    assert outlier_channels(256, 4) == [0, 32, 64, 96]
    assert outlier_channels(64, 4) == [0, 16, 32, 48]
    with pytest.raises(ValueError, match="1 .. 128"):
        outlier_channels(256, 200)


def test_injection_changes_nothing_without_quantization():
    """e8m22 operands are fp32 to within one fp32 ulp: loss and the fp32 master gradients of the injected
    model equal the plain one's (and the unconverted model's) to fp32 tolerance, at k = 1000."""
    hp = FP8Recipe(fwd_format="e8m22", grad_format="e8m22")
    x, y = _batch()
    out = {}
    for name, m in {"nn": _model(None), "plain": _model(hp), "injected": _model(hp, k=1000.0)}.items():
        loss = m(x, y)
        loss.backward()
        out[name] = (float(loss), m.layers[0].mlp.w1.weight.grad.clone(), m.layers[0].attn_norm.weight.grad.clone())
    injected = _model(hp, k=1000.0)
    assert injected.layers[0].mlp.w1.channel_scale[[0, 32, 64, 96]].tolist() == [1000.0] * 4
    for name in ("plain", "injected"):
        assert math.isclose(out[name][0], out["nn"][0], rel_tol=1e-5)
        for a, b in zip(out[name][1:], out["nn"][1:]):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max())), (name, (a - b).abs().max())


def test_per_tensor_underflow_of_the_injected_input_rises_with_k():
    x, y = _batch(1)
    fr = {}
    for k in (1.0, 10.0, 100.0, 1000.0):
        m = _model(FP8Recipe(), k=k)
        m(x, y).backward()
        rows = {(r["layer"], r["tensor"]): r for r in fp8_telemetry(m)}
        fr[k] = rows[("layers.0.mlp.w1", "input")]["underflow_frac"]
        # block 1 is untouched: its input's flushing does not depend on k
        assert rows[("layers.1.mlp.w1", "input")]["underflow_frac"] < 1e-3
    assert fr[1.0] <= fr[10.0] < fr[100.0] < fr[1000.0], fr
    assert fr[1000.0] > 1e-3 and fr[1000.0] > 20 * fr[10.0]


def _sqnr(ref, out):
    return 20 * math.log10(float(ref.norm()) / max(1e-30, float((ref - out).norm())))


@pytest.mark.parametrize("M", [64, 200])
@pytest.mark.parametrize("k, small, gain_db", [(100.0, 0.02, 2.0), (1000.0, 0.1, 5.0)])
def test_blockwise_keeps_the_outlier_free_tile_tensorwise_does_not(M, k, small, gain_db):
    """E4M3 spans ~17 binades, so k <= 1000 leaves the bulk of a per-tensor-scaled tensor normal (its SQNR
    hardly moves); what the outliers cost is the small values, pushed into subnormals or flushed. Measured on
    the outlier-free second 1x128 tile: blockwise is unaffected there, tensorwise loses the small values."""
    g = torch.Generator().manual_seed(int(k) + M)
    x = torch.randn(M, 256, generator=g)
    x[:, outlier_channels(256, 4)] *= k
    ref = x[:, 128:]
    sel = ref.abs() < small
    out = {}
    for name, blocks in (("tensorwise", TENSORWISE), ("blockwise", TILE_1x128)):
        d = quantize(x, "e4m3", blocks).dequantize()[:, 128:]
        out[name] = (_sqnr(ref[sel], d[sel]), int(((ref != 0) & (d == 0)).sum()) / ref.numel())
    alone = quantize(ref.contiguous(), "e4m3", TILE_1x128).dequantize()
    assert abs(out["blockwise"][0] - _sqnr(ref[sel], alone[sel])) < 0.5  # the outliers next door do nothing
    assert out["blockwise"][0] > out["tensorwise"][0] + gain_db, out
    assert out["blockwise"][1] == 0 and out["tensorwise"][1] > 0, out


def test_injected_fp8_linear_function_kept_and_telemetry_by_granularity():
    """Through the real FP8 linear (forward y, backward dx and dW with a random dy) at k = 1000: every
    granularity still computes the plain product to FP8 accuracy (the injection is function-preserving),
    blockwise as well as without injection, and the input's underflowed fraction is larger per-tensor."""
    g = torch.Generator().manual_seed(5)
    x0, w0 = torch.randn(96, 256, generator=g), 0.05 * torch.randn(300, 256, generator=g)
    dy = torch.randn(96, 300, generator=g)
    xr, wr = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    (xr @ wr.t()).backward(dy)
    yr = x0 @ w0.t()
    res = {}
    for gran in ("tensorwise", "rowwise", "blockwise"):
        for k in (1.0, 1000.0):
            lin = FP8Linear(256, 300, recipe=FP8Recipe(granularity=gran, grad_format="e4m3"))
            with torch.no_grad():
                lin.weight.copy_(w0)
            f = torch.ones(256)
            f[outlier_channels(256, 4)] = k
            lin.set_channel_scale(f)
            x = x0.clone().requires_grad_()
            y = lin(x)
            y.backward(dy)
            rows = {r["tensor"]: r for r in lin.telemetry_rows("l")}
            res[gran, k] = (
                [_sqnr(yr, y.detach()), _sqnr(xr.grad, x.grad), _sqnr(wr.grad, lin.weight.grad)],
                rows["input"]["underflow_frac"],
            )
            assert all(v > 20 for v in res[gran, k][0]), (gran, k, res[gran, k])
    assert all(abs(a - b) < 1.0 for a, b in zip(res["blockwise", 1000.0][0], res["blockwise", 1.0][0])), res
    assert res["tensorwise", 1000.0][1] > res["blockwise", 1000.0][1] and res["tensorwise", 1000.0][1] > 1e-3, res
    assert res["tensorwise", 1.0][1] < 1e-4


def test_outlier_options_reach_the_model_and_are_checked():
    m = get_method("fp8-own-rowwise", outlier_scale=100, outlier_block=1, outlier_channels=2)
    model = m.convert_model(build_model(CFG, 0), None)
    assert model.layers[1].mlp.w3.channel_scale[[0, 64]].tolist() == [100.0, 100.0]
    assert model.layers[0].mlp.w1.channel_scale is None
    with pytest.raises(ValueError, match="outlier_block must be 0 .. 1"):
        get_method("fp8-own-tensorwise", outlier_scale=10, outlier_block=5).convert_model(build_model(CFG, 0), None)
    with pytest.raises(ValueError, match="outlier_scale"):
        get_method("fp8-own-tensorwise", outlier_scale=0.5)


# -- quantized norm gains -----------------------------------------------------------------------------
def test_norm_gains_hook_up_forward_and_gradient():
    from methods.fp8.mx_gains import mx_quantize

    x, y = _batch(2)
    plain = build_model(CFG, 0)
    with torch.no_grad():  # gains in the floor rounding's clipping zone, as trained gains drift
        for blk in plain.layers:
            blk.attn_norm.weight.uniform_(0.88, 0.99)
    quant = build_model(CFG, 0)
    quant.load_state_dict(plain.state_dict())
    names = quantize_norm_gains(quant, "fp8")
    assert names == ["layers.0.attn_norm", "layers.0.mlp_norm", "layers.1.attn_norm", "layers.1.mlp_norm"]
    assert [n for n, _ in quant.named_parameters()] == [n for n, _ in plain.named_parameters()]
    ref = build_model(CFG, 0)  # reference: the gains replaced by their quantized values by hand
    ref.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for n in names:
            w = ref.get_submodule(n).weight
            w.copy_(mx_quantize(w, rounding="floor")[0])
    lq, lr = quant(x, y), ref(x, y)
    assert float(lq) == pytest.approx(float(lr), rel=1e-6) and float(lq) != float(plain(x, y))
    g = torch.Generator().manual_seed(4)
    dy = torch.randn((), generator=g).abs() + 0.5
    (lq * dy).backward()
    (lr * dy).backward()
    for n in names:  # straight through: the master gets the gradient taken at the quantized gain
        a, b = quant.get_submodule(n).weight.grad, ref.get_submodule(n).weight.grad
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)
    bump = build_model(CFG, 0)
    bump.load_state_dict(plain.state_dict())
    quantize_norm_gains(bump, "fp8-bump")
    bump(x, y)
    bump(x, y)
    rows = {r["layer"]: r for r in norm_gain_telemetry(quant)}
    assert rows["layers.0.attn_norm"]["clipped_frac"] > 0.1 and rows["layers.0.mlp_norm"]["clipped_frac"] == 0
    brow = {r["layer"]: r for r in norm_gain_telemetry(bump)}["layers.0.attn_norm"]
    assert brow["clipped_frac"] == 0 and brow["clipped_frac_window"] == 0 and brow["gain_max"] < 1
    again = {r["layer"]: r for r in norm_gain_telemetry(quant)}["layers.0.attn_norm"]
    assert again["clipped_frac_window"] == 0 and again["clipped_frac"] == rows["layers.0.attn_norm"]["clipped_frac"]
    assert rows["layers.0.attn_norm"]["clipped_frac_window"] == rows["layers.0.attn_norm"]["clipped_frac"]
    assert quantize_norm_gains(build_model(CFG, 0), "hp") == []
    with pytest.raises(ValueError, match="hp, fp8, fp8-bump"):
        quantize_norm_gains(bump, "fp4")
    # the recipe option reaches the norms
    model = get_method("fp8-own-tensorwise", norm_gains="fp8-bump").convert_model(build_model(CFG, 0), None)
    assert model.layers[0].mlp_norm.norm_gain_rounding == "up"


# -- the stress profile ----------------------------------------------------------------------------------
def test_stress_profile_lists_the_generated_variants():
    from pipelines.run import config
    from pipelines.run.stress_variants import ladder_bits, second_moment_name, variants

    cfg = config.load()
    p = cfg["profiles"]["stress"]
    assert p["variants"] == variants()
    runs = config.runs(cfg, "stress")
    names = {m for _, m, _ in runs}
    assert set(ladder_bits()) <= names and len(ladder_bits()) == 9
    cells = {second_moment_name(e, b, v) for e in (1e-8, 1e-15) for b in (0.95, 0.999) for v in ("e4m3", "dre", "e5m2")}
    assert len(cells) == 12 and cells <= names
    for _, m, _ in runs:  # every variant's options are valid for its method
        v = p["variants"].get(m)
        if v:
            get_method(v["method"], **v.get("options", {}))
    r = config.resolve_run(cfg, "stress", "tiny", "fp8-optim-eps1e-15-b20.999-v-e5m2", 0)
    assert r["train"]["eps"] == 1e-15 and r["train"]["beta2"] == 0.999 and r["train"]["steps"] == 80
    assert r["method_options"] == {"v_format": "e5m2", "v_transform": "none"}
