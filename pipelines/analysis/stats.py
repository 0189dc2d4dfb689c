"""Paired statistics: the yardstick every loss verdict is measured with.

A method's **paired gap** at seed s is 100 (L_method,s - L_ref,s) / L_ref,s, where both runs share the
seed's initial weights and batch order: what the two runs have in common (how lucky the init and the data
order were) cancels, which is why seed-to-seed variation of the reference itself is no yardstick.

Per method the gaps over seeds give a mean and a **Student-t confidence interval** (mean ± t_{n-1} s/√n).
With 3–5 seeds that is the honest choice: a bootstrap over 3 values has only 10 distinct resamples and
its percentile interval is far too narrow (it never reaches beyond the observed min and max), while the
t interval widens with the t quantile (4.30 at n = 3) for exactly the uncertainty a small n leaves.

The **verdict** compares the interval with an equivalence margin ±m (two one-sided tests at the interval's
level): ``equivalent`` when the interval lies inside ±m, ``worse``/``better`` when it lies entirely above
+m / below -m, ``inconclusive`` otherwise. With fewer than ``min_seeds`` seeds no interval is trusted: the
verdict is ``inconclusive (n seeds)``, unless every seed's gap lies on the same side beyond
max(m, ``far_factor`` × noise floor), which gives ``worse (n seeds)`` / ``better (n seeds)``; a method
on too few seeds is never ``equivalent``. A method any of whose seeds diverged is ``diverged``.

The **noise floor** is the largest |paired gap| of changes that should not matter (fp32 against bf16-amp),
over the same seeds: differences below it are indistinguishable from numerical chaos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VERDICTS = ("equivalent", "worse", "better", "inconclusive", "diverged")


@dataclass(frozen=True)
class Analysis:
    """How verdicts are drawn (``analysis:`` in pipelines/config.yaml)."""

    reference: str = "bf16-amp"
    margin_pct: float = 0.5
    confidence: float = 0.95
    min_seeds: int = 3
    far_factor: float = 5.0
    null_methods: tuple[str, ...] = ("fp32",)
    #: adaptive seeds (opt-in): methods still inconclusive after the profile's seeds get ``seed_batch`` more
    #: seeds a round, until decided or at ``max_seeds`` (None: off); ``pipelines.analysis.seed_plan``
    max_seeds: int | None = None
    seed_batch: int = 2

    @classmethod
    def from_config(cls, cfg: dict | None) -> Analysis:
        cfg = dict(cfg or {})
        if "null_methods" in cfg:
            cfg["null_methods"] = tuple(cfg["null_methods"])
        return cls(**cfg)

    def rule(self) -> str:
        return (
            f"{self.confidence:.0%} Student-t CI of the mean paired gap vs {self.reference} over seeds; "
            f"equivalent: CI inside ±{self.margin_pct:g}%; worse/better: CI entirely above +{self.margin_pct:g}% / "
            f"below -{self.margin_pct:g}%; otherwise inconclusive; fewer than {self.min_seeds} seeds: "
            f"inconclusive unless every seed's gap is beyond max(margin, {self.far_factor:g} × noise floor) "
            f"on the same side; any diverged seed: diverged"
        )


def paired_gap_pct(value: float, reference: float) -> float:
    """100 (value - reference) / reference."""
    return 100.0 * (value - reference) / reference


def t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` degrees of freedom (the closed form of Abramowitz &
    Stegun 26.7.3/26.7.4), so that no statistics package is needed for 3-5 seeds."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = math.cos(theta), math.cos(theta)  # (2/π)(θ + sin θ (cos θ + 2/3 cos³θ + ...))
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile(confidence: float, df: int) -> float:
    """t such that P(|T| < t) = confidence (bisection on :func:`t_two_sided`)."""
    if not 0 < confidence < 1 or df < 1:
        raise ValueError(f"need 0 < confidence < 1 and df >= 1, got {confidence}, {df}")
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    lo: float
    hi: float
    sd: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean and two-sided Student-t interval of ``values`` (NaN bounds with fewer than 2 values)."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(x) / n
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, mean - half, mean + half, sd)


def noise_floor(null_gaps) -> float:
    """Largest |paired gap| of the changes that should not matter (NaN without any)."""
    x = [abs(float(v)) for v in null_gaps if v is not None and math.isfinite(float(v))]
    return max(x) if x else math.nan


def verdict(gaps, an: Analysis, floor: float = math.nan, diverged: bool = False) -> str:
    """The verdict for one method from its per-seed paired gaps (see the module docstring)."""
    if diverged:
        return "diverged"
    x = [float(v) for v in gaps if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        return "n/a"
    m = an.margin_pct
    if n < an.min_seeds:
        far = max(m, an.far_factor * floor) if math.isfinite(floor) else math.inf
        if all(v > far for v in x):
            return f"worse ({n} seed{'s' * (n > 1)})"
        if all(v < -far for v in x):
            return f"better ({n} seed{'s' * (n > 1)})"
        return f"inconclusive ({n} seed{'s' * (n > 1)})"
    ci = t_interval(x, an.confidence)
    if ci.lo >= -m and ci.hi <= m:
        return "equivalent"
    if ci.lo > m:
        return "worse"
    if ci.hi < -m:
        return "better"
    return "inconclusive"


def decided(mean: float, half_width: float, margin: float) -> bool:
    """Whether an interval mean ± half_width is decided against ±margin: inside it (equivalent) or entirely
    beyond it on one side (worse / better); the rules of :func:`verdict`."""
    a = abs(mean)
    return a + half_width <= margin or a - half_width > margin


def seeds_to_decide(gaps, an: Analysis, cap: int = 100) -> float:
    """The number of seeds at which a method's interval would be decided, if its paired gaps kept the mean and
    spread observed here: the smallest n >= ``an.min_seeds`` with mean ± t_{n-1} sd/√n decided against the
    margin (:func:`decided`). NaN with fewer than 2 finite gaps (no spread to project from); ``inf`` where no
    n up to ``cap`` decides it (the mean sits at the margin, or the spread is too wide)."""
    x = [float(v) for v in gaps if v is not None and math.isfinite(float(v))]
    if len(x) < 2:
        return math.nan
    ci = t_interval(x, an.confidence)
    for n in range(max(2, an.min_seeds), cap + 1):
        if decided(ci.mean, t_quantile(an.confidence, n - 1) * ci.sd / math.sqrt(n), an.margin_pct):
            return float(n)
    return math.inf


def base_verdict(v: str) -> str:
    """``worse (2 seeds)`` -> ``worse``."""
    return str(v).split(" (")[0]
