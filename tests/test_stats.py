"""The paired statistics every loss verdict rests on (pipelines/analysis/stats.py)."""

import math
import random

import pytest

from pipelines.analysis.stats import (
    Analysis,
    base_verdict,
    noise_floor,
    paired_gap_pct,
    t_interval,
    t_quantile,
    verdict,
)

# two-sided Student-t critical values, from any printed table
T_TABLE = {
    (0.95, 1): 12.706,
    (0.95, 2): 4.303,
    (0.95, 3): 3.182,
    (0.95, 4): 2.776,
    (0.95, 9): 2.262,
    (0.95, 30): 2.042,
    (0.99, 2): 9.925,
    (0.99, 5): 4.032,
    (0.90, 4): 2.132,
}


@pytest.mark.parametrize("key", sorted(T_TABLE))
def test_t_quantile_matches_the_table(key):
    conf, df = key
    assert t_quantile(conf, df) == pytest.approx(T_TABLE[key], abs=6e-4)


def test_t_interval_by_hand():
    ci = t_interval([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean, ci.sd) == (3, 2.0, 1.0)
    assert ci.half_width == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    one = t_interval([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.lo) and math.isnan(one.hi)
    assert t_interval([float("nan"), 1.0, 2.0]).n == 2  # a missing seed is dropped, not counted


def test_t_interval_covers_the_mean_as_often_as_it_claims():
    """Coverage of the 95% interval at n = 3 over many simulated experiments: close to 95%, unlike a
    3-point bootstrap (whose percentile interval never covers beyond the sample's range)."""
    rng = random.Random(0)
    trials, hits = 4000, 0
    for _ in range(trials):
        ci = t_interval([rng.gauss(0.3, 1.0) for _ in range(3)])
        hits += ci.lo <= 0.3 <= ci.hi
    assert 0.93 < hits / trials < 0.97


def test_paired_gap_and_noise_floor():
    assert paired_gap_pct(5.05, 5.0) == pytest.approx(1.0)
    assert noise_floor([0.1, -0.25, 0.05]) == pytest.approx(0.25)
    assert math.isnan(noise_floor([]))


AN = Analysis(margin_pct=0.5, min_seeds=3, far_factor=5.0)


@pytest.mark.parametrize(
    "gaps, expected",
    [
        ([0.05, -0.1, 0.02, 0.08], "equivalent"),  # CI well inside ±0.5
        ([1.1, 1.3, 1.2], "worse"),  # CI entirely above +0.5
        ([-1.1, -1.3, -1.2], "better"),
        ([0.2, 0.9, 0.5], "inconclusive"),  # CI straddles +0.5
        ([-0.4, 0.45, 0.0], "inconclusive"),  # mean ~0 but too wide to call equivalent
    ],
)
def test_verdict_from_the_interval(gaps, expected):
    assert verdict(gaps, AN, floor=0.1) == expected
    ci = t_interval(gaps)
    if expected == "inconclusive":
        assert ci.lo < AN.margin_pct < ci.hi or ci.lo < -AN.margin_pct < ci.hi


def test_few_seeds_are_never_equivalent():
    for gaps in ([0.0], [0.01, -0.01]):
        v = verdict(gaps, AN, floor=0.05)
        assert v == f"inconclusive ({len(gaps)} seed{'s' * (len(gaps) > 1)})" and base_verdict(v) == "inconclusive"
    # far outside the noise floor (5 x 0.2 = 1.0 > margin) on every seed: a one-sided call is allowed
    assert verdict([3.0], AN, floor=0.2) == "worse (1 seed)"
    assert verdict([-2.0, -1.5], AN, floor=0.2) == "better (2 seeds)"
    assert verdict([0.8], AN, floor=0.2) == "inconclusive (1 seed)"  # beyond the margin, not far beyond noise
    assert verdict([3.0], AN) == "inconclusive (1 seed)"  # no measured noise floor: nothing is far


def test_divergence_overrides_the_numbers():
    assert verdict([0.0, 0.0, 0.0], AN, diverged=True) == "diverged"
    assert verdict([], AN) == "n/a"


def test_rule_names_its_numbers():
    rule = Analysis(margin_pct=0.75, confidence=0.9, min_seeds=4).rule()
    assert "90%" in rule and "±0.75%" in rule and "fewer than 4 seeds" in rule
