"""torchao float8 methods: availability, identical step 0, module filter, and the CPU integration
(input cast under CPU autocast, bf16-emulated backward GEMMs) against float64 references."""

import pytest
import torch
from torch import nn

from methods.__main__ import availability
from methods._bf16_backward import bf16_backward_mode
from tests.conftest import build_trainee

TORCHAO = ["fp8-torchao-tensorwise", "fp8-torchao-rowwise", "fp8-torchao-rowwise-gw-hp"]
TE = ["fp8-te-delayed", "fp8-te-current", "fp8-te-block"]


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    assert torch.isfinite(out).all()
    return float(20 * torch.log10(ref.norm() / (ref - out).norm()))


def test_python_m_methods_lists_torchao_available_and_te_unavailable_with_reason():
    rows = {r["method"]: r for r in availability()}
    for m in TORCHAO:
        assert rows[m]["available"], rows[m]
    zero_ok = [m for m, r in rows.items() if m.startswith("zero") and r["available"]]
    assert len(zero_ok) >= 6, zero_ok
    for m in TE:
        r = rows[m]
        if torch.cuda.is_available():
            continue
        assert not r["available"]
        assert "no CUDA device" in r["reason"]  # names the missing device ...
        assert "transformer_engine" in r["reason"]  # ... and the missing package (or its import failure)
    assert "9.0" in rows["fp8-te-block"]["reason"] and "8.9" in rows["fp8-te-delayed"]["reason"]


@pytest.mark.parametrize("name", TORCHAO)
def test_step0_loss_equals_bf16_amp_and_only_block_linears_are_fp8(name, corpus, bf16_amp_step0):
    from torchao.float8.float8_linear import Float8Linear

    x, y, weights, plain, r_ref, _ = bf16_amp_step0
    tr = build_trainee(name, vocab=corpus.vocab_size)
    # same initial weights: conversion keeps the seeded parameters
    params = dict(tr.model.named_parameters())
    assert params.keys() == weights.keys() and all(torch.equal(params[n], w) for n, w in weights.items())
    fp8 = {n for n, m in tr.model.named_modules() if isinstance(m, Float8Linear)}
    assert fp8 == {n for n in plain if n.startswith("layers.")} and "lm_head" not in fp8
    r = tr.train_step(x, y, 1e-3)
    assert abs(r.loss - r_ref.loss) <= 0.01 * r_ref.loss, (r.loss, r_ref.loss)
    assert abs(r.grad_norm - r_ref.grad_norm) <= 0.2 * r_ref.grad_norm  # FP8 gradients, same direction
    # fp32 weights, grads and Adam states: the reference's 16 B/param (dynamic scaling keeps no state)
    mem = tr.memory()
    assert abs(sum(mem.values()) / tr.n_params() - 16.0) < 0.01 and mem["meta"] == 0


def test_keep_high_precision_is_an_option(corpus):
    from torchao.float8.float8_linear import Float8Linear

    tr = build_trainee(
        "fp8-torchao-tensorwise", vocab=corpus.vocab_size, keep_high_precision=("lm_head", "layers.0.*", "*.w2")
    )
    fp8 = {n for n, m in tr.model.named_modules() if isinstance(m, Float8Linear)}
    assert fp8 and not any(n.startswith("layers.0.") or n.endswith(".w2") for n in fp8)
    assert "layers.1.attn.wq" in fp8


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
@pytest.mark.parametrize("shape", [(2, 24, 48, 80), (3, 7, 96, 40)])  # (batch, tokens, in, out)
def test_float8_linear_under_cpu_autocast_vs_float64(recipe, shape):
    """The converted linear in the reference's setting (fp32 weight, bf16 CPU autocast, emulated GEMMs):
    output and both gradients track a float64 reference with a random grad_output, and the backward
    does not trip on dtypes (torchao casts its input only under CUDA autocast; the method adds the CPU cast)."""
    from methods.torchao_float8 import convert_torchao_float8

    b, t, k, n = shape
    g = torch.Generator().manual_seed(sum(shape))
    model = nn.Sequential(nn.Linear(k, n, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
    w64 = model[0].weight.detach().double()
    convert_torchao_float8(model, recipe, keep_high_precision=(), emulate=True)
    x = torch.randn(b, t, k, generator=g, requires_grad=True)
    gy = torch.randn(b, t, n, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    with bf16_backward_mode(torch.device("cpu")):
        out.backward(gy.to(out.dtype))
    x64, gy64 = x.detach().double(), gy.double()
    assert sqnr_db(x64 @ w64.T, out) > 25  # e4m3 operands: ~30 dB
    assert sqnr_db(gy64 @ w64, x.grad) > 18  # e5m2 (tensorwise) or e4m3 gradients
    assert sqnr_db(gy64.reshape(-1, n).T @ x64.reshape(-1, k), model[0].weight.grad) > 18
    assert x.grad.dtype == torch.float32 and model[0].weight.grad.dtype == torch.float32


class _Bf16MatmulFn(torch.autograd.Function):
    """A custom linear like ZeRO-3's: its backward multiplies bf16 tensors in Python."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x.matmul(w.t())

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return gy.matmul(w), gy.reshape(-1, gy.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]))


@pytest.mark.parametrize("shape", [(2, 16, 32, 24), (3, 33, 130, 7)])
def test_bf16_backward_mode_emulates_python_backward_gemms(shape, monkeypatch):
    monkeypatch.setenv("FP8BENCH_CPU_BF16", "emulated")
    b, t, k, n = shape
    g = torch.Generator().manual_seed(k)
    x = torch.randn(b, t, k, generator=g).to(torch.bfloat16).requires_grad_()
    w = torch.randn(n, k, generator=g).to(torch.bfloat16).requires_grad_()
    gy = torch.randn(b, t, n, generator=g).to(torch.bfloat16)
    y = _Bf16MatmulFn.apply(x, w)
    with bf16_backward_mode(torch.device("cpu")):
        y.backward(gy)
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    # = fp32 product of the bf16 operands (exact in fp32), rounded once to bf16
    assert torch.equal(x.grad, (gy.float() @ w.float()).to(torch.bfloat16))
    ref_w = gy.double().reshape(-1, n).T @ x.double().reshape(-1, k)
    assert sqnr_db(ref_w, w.grad) > 40 and sqnr_db(gy.double() @ w.double(), x.grad) > 40
    # fp32 products are left alone
    a, c = torch.randn(5, 6, generator=g), torch.randn(6, 3, generator=g)
    with bf16_backward_mode(torch.device("cpu")):
        assert torch.equal(a @ c, torch.mm(a, c))
