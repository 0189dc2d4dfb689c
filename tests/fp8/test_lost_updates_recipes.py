"""Lost updates measured in training (``Trainee.probe_updates``): probing leaves the trajectory as it is; the
probed steps give per-layer ``weight_update`` rows and whole-model figures in ``StepResult.extra``; for
``bf16-pure`` at nearest rounding the prediction is the measurement."""

import math

import pytest
import torch

from methods.fp8.naive import FP8StoredLinear
from tests.fp8.conftest import build_micro, probe_fp8_adamw

KEYS = ("lost_pred_frac", "unchanged_frac", "lost_bias")
#: (recipe, options, rounding) for every recipe that probes; "fp8-naive" with its FP8 linears only
RECIPES = [
    ("fp8-naive", {}, "nearest"),
    ("fp8-naive", {"stochastic_rounding": True}, "stochastic"),
    ("bf16-pure", {}, "nearest"),
    ("bf16-pure", {"stochastic_rounding": True}, "stochastic"),
    ("fp8-optim", {}, "stochastic"),
    ("fp8-e2e", {}, "stochastic"),
    ("fp8-lean", {}, "stochastic"),
]


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (4, 33), generator=g) for _ in range(n)]


def _run(trainee, probed: set[int], steps: int = 4, lr: float = 3e-4):
    out = []
    for i, x in enumerate(_batches(steps)):
        trainee.probe_updates = i in probed
        out.append(trainee.train_step(x[:, :-1], x[:, 1:], lr))
    trainee.probe_updates = False
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


@pytest.mark.parametrize(
    "name,options",
    [
        ("fp8-naive", {}),
        ("fp8-naive", {"stochastic_rounding": True}),
        ("fp8-optim", {}),
        ("fp8-optim", {"impl": "torch"}),
        ("bf16-pure", {"stochastic_rounding": True}),
    ],
    ids=["fp8-naive", "fp8-naive-sr", "fp8-optim-native", "fp8-optim-reference", "bf16-pure-sr"],
)
def test_probing_leaves_the_trajectory_bit_identical(name, options):
    """Losses, weights and optimizer state after 4 steps, two of them probed, are those of 4 unprobed steps
    (the stochastic variants too: probing draws no random numbers)."""
    plain, probed = build_micro(name, **options), build_micro(name, **options)
    a, b = _run(plain, set()), _run(probed, {1, 3})
    assert [r.loss for r in a] == [r.loss for r in b]
    assert [r.grad_norm for r in a] == [r.grad_norm for r in b]
    assert all(r.extra == {} for r in a) and [bool(r.extra) for r in b] == [False, True, False, True]
    for (k, x), (_, y) in zip(plain.model.state_dict().items(), probed.model.state_dict().items()):
        assert torch.equal(_bits(x), _bits(y)), k
    sa, sb = plain.state_dict(), probed.state_dict()
    flat = lambda d: [t for t in torch.utils._pytree.tree_leaves(d) if isinstance(t, torch.Tensor)]  # noqa: E731
    assert all(torch.equal(_bits(x), _bits(y)) for x, y in zip(flat(sa["optimizer"]), flat(sb["optimizer"])))
    if "fp8_optimizer" in sa:
        assert all(torch.equal(x, y) for x, y in zip(flat(sa["fp8_optimizer"]), flat(sb["fp8_optimizer"])))


@pytest.mark.parametrize(
    "name,options,rounding",
    RECIPES,
    ids=["fp8-naive", "fp8-naive-sr", "bf16-pure", "bf16-pure-sr", "fp8-optim", "fp8-e2e", "fp8-lean"],
)
def test_probed_steps_give_rows_and_step_figures(name, options, rounding):
    tr = build_micro(name, **options)
    res = _run(tr, {1, 2})
    for r in (res[1], res[2]):
        assert set(r.extra) == set(KEYS)
        assert 0 <= r.extra["lost_pred_frac"] <= 1 and 0 <= r.extra["unchanged_frac"] <= 1
        assert math.isfinite(r.extra["lost_bias"]) and abs(r.extra["lost_bias"]) < 1
    assert res[0].extra == res[3].extra == {}
    rows = [r for r in tr.telemetry() if r["tensor"] == "weight_update"]
    if name == "fp8-naive":  # the FP8-stored linears; the fp32 rest is not probed
        expect = {n for n, m in tr.model.named_modules() if isinstance(m, FP8StoredLinear)}
        fmt = "e4m3"
    else:  # every parameter is a bf16 weight its optimizer rounds
        expect = {n.removesuffix(".weight") for n, _ in tr.model.named_parameters()}
        fmt = "bf16"
    assert {r["layer"] for r in rows} == expect and len(rows) == len(expect)
    for r in rows:
        assert r["format"] == fmt and r["rounding"] == rounding and r["probed_window"] == 2
        for k in ("lost_pred_frac", "unchanged_frac", "lost_pred_frac_window", "unchanged_frac_window"):
            assert 0 <= r[k] <= 1, (r["layer"], k)
        assert math.isfinite(r["lost_bias"]) and math.isfinite(r["lost_bias_window"])
    # the step figures are the element-weighted layer figures
    n = sum(r["numel"] for r in rows)
    assert res[2].extra["lost_pred_frac"] == pytest.approx(sum(r["lost_pred_frac"] * r["numel"] for r in rows) / n)
    if name != "fp8-naive":  # (fp8-naive's row keeps its every-step unchanged_frac: the same step here)
        assert res[2].extra["unchanged_frac"] == pytest.approx(sum(r["unchanged_frac"] * r["numel"] for r in rows) / n)
    # read again with no probed step since: the last step's values, no window
    again = [r for r in tr.telemetry() if r["tensor"] == "weight_update"]
    assert all(r["probed_window"] == 0 and "lost_pred_frac_window" not in r for r in again)


def test_unprobed_runs_add_no_rows():
    tr = build_micro("bf16-pure")
    _run(tr, set(), steps=2)
    assert tr.telemetry() == []
    naive = build_micro("fp8-naive")
    _run(naive, set(), steps=2)
    rows = [r for r in naive.telemetry() if r["tensor"] == "weight_update"]
    assert len(rows) == 14 and all("lost_pred_frac" not in r and 0 <= r["unchanged_frac"] <= 1 for r in rows)


def test_bf16_pure_prediction_is_the_measurement():
    """bf16-pure, nearest: the update handed to the cast is u = w_fp32 − w, exact in fp32 wherever it could be
    lost (|u| ≤ |w|, Sterbenz), and the cast rounds w + u once, to nearest even: the weights predicted lost are
    the weights whose bits stayed. The only exception would be a zero weight flipping to −0 (same value,
    other bits); this model has no zero weight, so the two shares are equal per layer, weight decay and all.
    With stochastic rounding the prediction stays, the measurement moves, and the bias goes to ~0."""
    tr = build_micro("bf16-pure")
    assert all(int((p == 0).sum()) == 0 for p in tr.model.parameters())
    res = _run(tr, {0, 1, 2, 3})
    rows = [r for r in tr.telemetry() if r["tensor"] == "weight_update"]
    for r in rows:
        assert r["lost_pred_frac"] == r["unchanged_frac"], r["layer"]
        assert r["lost_pred_frac_window"] == r["unchanged_frac_window"], r["layer"]
    assert all(r.extra["lost_pred_frac"] == r.extra["unchanged_frac"] for r in res)
    near = [r.extra["lost_bias"] for r in res]
    assert min(near) > 0.005  # the lost share of the update mass, positive every step
    sr = build_micro("bf16-pure", stochastic_rounding=True)
    res_sr = _run(sr, {0, 1, 2, 3})
    # the same steps (step 0 identically, then nearly): the prediction hardly moves, the measurement does
    assert res_sr[0].extra["lost_pred_frac"] == res[0].extra["lost_pred_frac"]
    assert any(r.extra["unchanged_frac"] != r.extra["lost_pred_frac"] for r in res_sr)
    assert all(abs(s.extra["lost_bias"]) < n / 5 for s, n in zip(res_sr, near))


def test_fp8_naive_prediction_and_measurement():
    """fp8-naive: at a small learning rate most updates are below half an E4M3 spacing. Predicted (at the old
    per-tensor scale) and measured (codes, under the recomputed scale) differ only where the scale moved
    codes; nearest rounding loses most of the update mass, stochastic rounding none of it on average."""
    near, sr = build_micro("fp8-naive"), build_micro("fp8-naive", stochastic_rounding=True)
    a, b = _run(near, {1, 2, 3}), _run(sr, {1, 2, 3})
    for r in a[1:]:
        assert r.extra["lost_pred_frac"] > 0.5
        assert abs(r.extra["lost_pred_frac"] - r.extra["unchanged_frac"]) < 0.05
        assert r.extra["lost_bias"] > 0.5
    for r, s in zip(a[1:], b[1:]):
        assert abs(s.extra["lost_bias"]) < r.extra["lost_bias"] / 20
        assert s.extra["unchanged_frac"] < s.extra["lost_pred_frac"]  # SR moves some of the small updates
    # the every-step unchanged_frac key keeps its meaning: the probed step's codes, the same count
    rows = {r["layer"]: r for r in near.telemetry() if r["tensor"] == "weight_update"}
    m = near.model.layers[0].mlp.w1
    assert rows["layers.0.mlp.w1"]["unchanged_frac"] == float(m.unchanged)
    # (the module's is an fp32 mean, the recorder's a count over the number of weights)
    assert near.lost_updates.row("layers.0.mlp.w1")["unchanged_frac"] == pytest.approx(float(m.unchanged), rel=1e-6)


@pytest.mark.parametrize("impl", ["torch", "native"])
def test_fp8_adamw_probe_on_each_implementation(impl):
    """Probed or not, the same weights and states; the prediction (always from the reference update) is the
    reference path's, exactly, on the first step, where every implementation starts from the same state."""
    plain, popt, _ = probe_fp8_adamw(impl, probe=False)
    probed, qopt, figs = probe_fp8_adamw(impl, probe=True)
    for a, b in zip(plain, probed):
        assert torch.equal(_bits(a), _bits(b))
        for k, v in popt.state[a].items():
            assert torch.equal(_bits(v), _bits(qopt.state[b][k])), k
    _, _, ref = probe_fp8_adamw("torch", probe=True)
    assert figs[0]["lost_pred_frac"] == ref[0]["lost_pred_frac"]
    assert 0.05 < figs[0]["lost_pred_frac"] < 0.95
    # measured: the same hash draws; the native kernel matches the reference but for rare ulps
    assert abs(figs[0]["unchanged_frac"] - ref[0]["unchanged_frac"]) <= 0.005
