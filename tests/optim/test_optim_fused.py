"""The fused CPU step of FP8AdamW (methods/fp8/optim_fused.py) against the reference PyTorch path.

Run eagerly (chunked, as under a memory trace) the fused function is the reference's ops on slices of
blocks: codes, scales, DRE exponents, weights and master copies are bit-identical. Compiled, Inductor's
sqrt is correctly rounded and its log2 is SLEEF's, where the eager CPU kernels use MKL's (sqrt measured
off by an ulp on ~0.7% of small inputs): decoded values and updates can differ by an fp32 ulp, which moves a
bf16 weight by one ulp where stochastic rounding draws right at the boundary, or an FP8 code by one step.
The test bounds that; everything else (lerp/addcmul rounding order, the casts, the hash) is exact.
"""

import pytest
import torch

from methods.fp8 import optim_fused
from methods.fp8.adamw import FP8AdamW
from tests.optim_pairs import paired_steps

#: sizes that are not a multiple of the block (703 = 2 blocks + 191, 300, 100 < one block) and a few that are
SHAPES = [(37, 19), (300,), (100,), (2, 256), (9, 256)]


def _run(impl, steps, shapes=SHAPES, dtype=torch.bfloat16, seed=5, compiled=True, **opts):
    g = torch.Generator().manual_seed(11)
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(dtype)) for s in shapes]
    opt = FP8AdamW(
        [{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:], "weight_decay": 0.0}],
        lr=1e-2,
        impl=impl,
        seed=seed,
        **opts,
    )
    how = set()
    for _ in range(steps):
        for p in params:
            spread = torch.logspace(-4, 0, p.shape[-1])  # moments over 4 decades inside a block
            p.grad = (torch.randn(p.shape, generator=g) * spread).to(dtype)
        if impl == "torch":
            opt.step()
            continue
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p] if opt.state[p] else opt._init_state(p)
                st["step"] += 1
                how.add(optim_fused.fused_step(opt, p, group, st, compiled=compiled))
    return params, opt, how


def _state_keys(st):
    return [k for k in st if k != "step"]


@pytest.mark.parametrize(
    "dtype,opts",
    [
        (torch.bfloat16, dict()),  # the default: E4M3 m, E4M3 DRE v, stochastic rounding
        (torch.bfloat16, dict(stochastic_rounding=False)),
        (torch.bfloat16, dict(master_weights=True)),
        (torch.bfloat16, dict(v_format="e5m2", v_transform="none", m_transform="dre", block_size=100)),
        (torch.float32, dict(v_transform="sqrt", block_size=64)),
    ],
)
def test_eager_fused_step_is_the_reference_bit_for_bit(dtype, opts, monkeypatch):
    monkeypatch.setattr(optim_fused, "EAGER_CHUNK_BLOCKS", 2)  # several chunks per parameter, and a partial one
    ref, ropt, _ = _run("torch", 3, dtype=dtype, **opts)
    out, oopt, how = _run("fused", 3, dtype=dtype, compiled=False, **opts)
    assert how == {"eager"}
    for r, o in zip(ref, out):
        assert torch.isfinite(o).all()
        assert torch.equal(o, r)
        rs, os_ = ropt.state[r], oopt.state[o]
        assert _state_keys(rs) == _state_keys(os_)
        for k in _state_keys(rs):
            a, b = rs[k], os_[k]
            assert torch.equal(
                a.view(torch.uint8) if a.dtype.itemsize == 1 else a, b.view(torch.uint8) if b.dtype.itemsize == 1 else b
            ), k


@pytest.mark.parametrize(
    "dtype,opts",
    [
        (torch.bfloat16, dict()),  # the default
        # fp32 weights, the sqrt transform, and 1 - beta1 >= 0.5 (lerp's other branch)
        (torch.float32, dict(v_transform="sqrt", block_size=64, betas=(0.3, 0.95))),
    ],
)  # each configuration compiles (seconds): the others are covered by the eager test above
def test_compiled_fused_step_matches_the_reference(dtype, opts):
    ref, ropt, _ = _run("torch", 0, dtype=dtype, **opts)
    out, oopt, _ = _run("fused", 0, dtype=dtype, **opts)
    n = sum(p.numel() for p in ref)
    how, moved, code_diff, steps = set(), 0, 0, 4

    def step_out():
        for group in oopt.param_groups:
            for p in group["params"]:
                st = oopt.state[p] if oopt.state[p] else oopt._init_state(p)
                st["step"] += 1
                how.add(optim_fused.fused_step(oopt, p, group, st, compiled=True))

    for _ in paired_steps(ref, ropt, out, oopt, steps, dtype, step_out):  # each step from the reference's state
        moved += sum(int((o != r).sum()) for r, o in zip(ref, out))
        for r, o in zip(ref, out):
            assert torch.isfinite(o).all()
            rs, os_ = ropt.state[r], oopt.state[o]
            if dtype == torch.bfloat16:
                # where they differ, by one bf16 ulp (the stochastic draw near a rounding boundary)
                ulp = r.float().abs() * 2.0**-7 + 1e-2 * 2.0**-20
                assert ((o.float() - r.float()).abs() <= ulp).all()
            else:  # fp32 weights keep sqrt's ulp in the update: a few ulps of an update of ~lr (1e-2)
                torch.testing.assert_close(o, r, rtol=2.0**-20, atol=1e-2 * 2.0**-20)
            if "master" in rs:
                torch.testing.assert_close(os_["master"], rs["master"], rtol=2.0**-20, atol=1e-2 * 2.0**-20)
                assert torch.equal(o, os_["master"].bfloat16())
            for key in ("exp_avg", "exp_avg_sq"):
                a, b = rs[key].view(torch.uint8).int(), os_[key].view(torch.uint8).int()
                assert ((a - b).abs() <= 1).all()  # same sign, magnitude at most one code step apart
                code_diff += int((a != b).sum())
                torch.testing.assert_close(os_[f"{key}_scale"], rs[f"{key}_scale"], rtol=2.0**-21, atol=0)
            if "exp_avg_sq_k" in rs:
                torch.testing.assert_close(os_["exp_avg_sq_k"], rs["exp_avg_sq_k"], rtol=2.0**-7, atol=0)
    assert "compiled" in how, optim_fused.FALLBACK
    # measured on these shapes (AVX-512 EPYC): bf16 weights and all codes identical; fp32 weights an ulp
    # apart in 703 of 4 x 3919 updates (sqrt); over the whole tiny model a handful of bf16 weights (<1e-5)
    assert code_diff <= max(2, 1e-3 * 2 * n * steps), code_diff
    if dtype == torch.bfloat16:
        assert moved <= max(2, 1e-3 * n * steps), moved


def test_auto_picks_the_fused_step_on_cpu_and_falls_back_with_a_reason(monkeypatch):
    from methods.fp8 import optim_native

    # without the native kernel (tests/optim/test_optim_native.py), auto takes the compiled step
    monkeypatch.setattr(optim_native, "_LIB", None)
    monkeypatch.setattr(optim_native, "_ERROR", "native kernel disabled by the test")
    p = torch.nn.Parameter(torch.zeros(300, dtype=torch.bfloat16))
    assert FP8AdamW([p], lr=1e-3).path_for(p) == "fused"
    assert FP8AdamW([p], lr=1e-3, impl="torch").path_for(p) == "torch"

    def no_compiler(*_a, **_kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(optim_fused, "FALLBACK", {})
    ref, _, _ = _run("torch", 2)
    for impl, path in (("auto", "torch"), ("fused", "fused")):
        g = torch.Generator().manual_seed(11)
        params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).bfloat16()) for s in SHAPES]
        opt = FP8AdamW(
            [{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:], "weight_decay": 0.0}],
            lr=1e-2,
            impl=impl,
            seed=5,
        )
        for _ in range(2):
            for q in params:
                q.grad = (torch.randn(q.shape, generator=g) * torch.logspace(-4, 0, q.shape[-1])).bfloat16()
            opt.step()
        assert opt.path_for(params[0]) == path
        if impl == "auto":
            assert "no C++ compiler" in opt.fallback["fused"]
        for r, o in zip(ref, params):  # the reference itself, or the fused function run eagerly
            assert torch.equal(o, r)


def test_identity_compile_runs_the_same_function_eagerly(monkeypatch):
    # what methods.memory_trace does while it traces a step
    monkeypatch.setattr(torch, "compile", lambda model=None, **_kw: model)
    ref, _, _ = _run("torch", 2)
    out, _, how = _run("fused", 2)
    assert how == {"eager"}
    for r, o in zip(ref, out):
        assert torch.equal(o, r)


def test_rejects_unknown_impl():
    p = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(ValueError, match="impl='compiled'; valid: auto, torch, native, fused, triton"):
        FP8AdamW(p, lr=1e-3, impl="compiled")
