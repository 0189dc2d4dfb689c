"""Lost updates: whether an optimizer's update to a weight stored in a low-precision format survives the
rounding of the stored weight, predicted from the format's spacing and measured on the stored bits.

Recipes that keep no high-precision copy of a weight (``fp8-naive``: E4M3 codes with one per-tensor scale;
``bf16-pure``, ``fp8-optim``, ``fp8-e2e``: bf16) add the optimizer's update to the stored weight and round
the sum back into the format. An update smaller than half the format's spacing at the weight is rounded
away: the weight stays where it was and the update is lost. This module holds the definitions, in one
place, and the per-tensor counters the recipes fill on *probed* steps (the loop chooses which).

Definitions (``w``: a stored weight; ``s``: its tensor's dequantization factor, real value = code × s, the
codebase's ``scale_inv``; bf16 weights have s = 1; ``F``: the format; ``u``: the update the optimizer
intends, i.e. the fp32 weight it computed minus the stored one, weight decay included):

- **spacing** (:func:`spacing_above`, :func:`spacing_below`): the distance from ``w/s`` to the next value
  of F towards +inf / -inf. For |w/s| in the binade [2^e, 2^(e+1)) (e at least the format's smallest
  normal exponent, so subnormals and zero share the smallest normal binade's spacing) it is 2^(e - m)
  away from zero and the same towards zero, except at an exact power of two above the smallest normal
  binade, where the spacing towards zero is half (the binade below is twice as fine). At zero both are the
  smallest subnormal. At ±max of a *saturating* format (every FP8 cast in this library saturates) the
  spacing away from zero is infinite: any update outwards is clamped back to max. bf16 weights are
  written by torch's cast, which overflows to inf instead; there the spacing at max is the binade's.
- **predicted lost** (:func:`predicted_lost`, :func:`lost`): round-to-nearest-even of ``(w + u)/s`` in F
  returns ``w/s``. From the spacing ``d`` in the direction of ``u``: ``|u/s| < d/2``, or ``|u/s| = d/2``
  (a tie) and ``w/s`` is an even value of F (its last significand bit is 0), because ties go to the even
  one of the two neighbours, and the neighbour ``w/s ± d`` always has the other parity. ``u = 0`` counts
  as lost (the weight does not move). Computed from the spacing alone, never by calling a rounding
  function, so it is a *prediction* that tests hold against the rounding. ±0 count as one value.
- **measured unchanged** (:func:`unchanged`): the stored bits after the step are those before it. For an
  FP8 tensor with a per-tensor scale these are the codes: they also move when the recomputed scale
  changes, so a code can change although its update was lost, or stay although its value moved.
- **lost-update bias** (:func:`count_update`): ``Σ_i sign(u_i)·(u_i − a_i) / Σ_i |u_i|`` with ``a_i`` the
  update actually applied (stored value after minus stored value before, real units, scale included). An
  update rounded away contributes its whole ``|u_i|``; one that survives contributes its signed rounding
  error. Round-to-nearest loses the small updates every time, so the bias is positive (about the share of
  the update mass that is predicted lost); stochastic rounding applies each update in expectation
  (``E[a_i] = u_i``), so the bias is 0 in expectation.

Exactness: the predicate compares exponents (``frexp``), so it is exact in fp32 or float64; spacings come
back as float64 powers of two. :func:`count_update` works in float64 where a tensor has a scale (a code
times an fp32 scale is exact there) and in fp32 for bf16, where ``u = w_fp32 − w`` is exact wherever the
update could be lost (|u| <= |w|: Sterbenz) and the rounding is one cast of ``w + u``: there predicted and
measured agree bit for bit, but for a zero weight whose lost update flips it to −0.

Where predicted and measured differ, by recipe (``Trainee.probe_updates`` records both):

- ``bf16-pure`` (nearest): they are equal (above).
- ``bf16-pure-sr``, ``fp8-optim``, ``fp8-e2e``, ``fp8-lean`` (stochastic rounding of bf16): a lost update
  (|u| < d/2) moves the weight with probability |u|/d and a kept one stays with probability 1 − |u|/d, so
  the measured share is not the predicted one, in either direction; the bias is ~0. FP8AdamW's native,
  compiled and Triton steps never expose their fp32 weight: a probed step gets ``intended`` from the
  reference update on copies, which those kernels match but for rare fp32 ulps (see their modules).
- ``fp8-naive`` (nearest or stochastic): predicted at the tensor's scale before the step; the step
  re-quantizes with a scale recomputed from the new amax, which moves codes whose values the update did
  not change and can keep codes whose values it did; the applied update ``a`` includes that rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.fp8.formats import E4M3, E5M2, ExMy, exmy

#: torch.bfloat16's value set: E8M7, IEEE-like, with subnormals (written by torch's non-saturating cast)
BF16 = exmy(8, 7)

_FORMAT_OF_DTYPE = {torch.bfloat16: BF16, torch.float8_e4m3fn: E4M3, torch.float8_e5m2: E5M2}
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def format_of(dtype: torch.dtype) -> ExMy:
    """The format a stored weight of ``dtype`` has (bf16, float8_e4m3fn, float8_e5m2)."""
    if dtype not in _FORMAT_OF_DTYPE:
        raise ValueError(f"no low-precision format for {dtype}; valid: {', '.join(map(str, _FORMAT_OF_DTYPE))}")
    return _FORMAT_OF_DTYPE[dtype]


def saturates(fmt: ExMy) -> bool:
    """Whether updates past ±max are clamped to max (this library's FP8 casts) rather than overflowing
    (bf16, written by torch's cast)."""
    return fmt != BF16


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k as float64, exactly, built from the exponent bits (|k| < 1022 here: formats fit fp32)."""
    return (k.long() + 1023).bitwise_left_shift(52).view(torch.float64)


def _floating(t: torch.Tensor) -> torch.Tensor:
    """``t`` as fp32 or float64 (what ``frexp`` takes; every value of these formats is exact in fp32)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _spacing_exponent(w: torch.Tensor, upwards: torch.Tensor | bool, fmt: ExMy) -> tuple[torch.Tensor, torch.Tensor]:
    """log2 of the spacing of ``fmt`` from each ``w`` (values of ``fmt``) towards +inf where ``upwards``,
    else towards -inf; and where that spacing is infinite instead (outwards from ±max of a saturating format).

    The one definition of the spacing (module docstring): 2^(e - m) for the binade [2^e, 2^(e+1)) of |w|,
    e at least the smallest normal exponent; half that towards zero from an exact power of two 2^e above
    the smallest normal binade."""
    a = _floating(w).abs()
    # below the smallest normal (subnormals, zero) the spacing is the smallest normal binade's: clamping
    # there gives that binade's exponent (and a mantissa of 1/2 that the e > min test below discounts)
    mant, ex = torch.frexp(a.clamp(min=fmt.min_normal))  # = mant · 2^ex, mant in [0.5, 1)
    e = ex - 1
    toward_zero = ((w > 0) != upwards) & (w != 0)
    k = e - fmt.mantissa_bits - (toward_zero & (mant == 0.5) & (e > fmt.min_exponent)).int()
    infinite = (~toward_zero & (a >= fmt.max)) if saturates(fmt) else torch.zeros_like(toward_zero)
    return k, infinite


def _spacing(w: torch.Tensor, upwards: bool, fmt: ExMy) -> torch.Tensor:
    k, infinite = _spacing_exponent(w, upwards, fmt)
    return torch.where(infinite, torch.inf, _pow2(k))


def ulp(w: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """The spacing of ``fmt`` in the binade of each ``w``, 2^(e - m), as float64 (``w`` need not be a value
    of ``fmt``: for any |w| in [2^e, 2^(e+1)) it is the distance between the values around it)."""
    _, ex = torch.frexp(_floating(w).abs().clamp(min=fmt.min_normal))
    return _pow2(ex - 1 - fmt.mantissa_bits)


def spacing_above(w: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """Distance from each ``w`` (values of ``fmt``, any float dtype) to the next value of ``fmt`` towards
    +inf, float64 (inf at +max of a saturating format; the smallest subnormal at 0)."""
    return _spacing(w, True, fmt)


def spacing_below(w: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """Distance from each ``w`` to the next value of ``fmt`` towards -inf (see :func:`spacing_above`)."""
    return _spacing(w, False, fmt)


def is_even(w: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """Whether each ``w`` (values of ``fmt``) has a last significand bit of 0 (zero is even)."""
    w = w.double()
    k = w.abs() / ulp(w, fmt)  # the significand in units of the last place: an integer, exactly
    return torch.fmod(k, 2) == 0


def predicted_lost(w_units: torch.Tensor, u_units: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """Whether round-to-nearest-even of ``w_units + u_units`` in ``fmt`` gives ``w_units`` back, predicted
    from the spacing (module docstring). ``w_units``: values of ``fmt`` (already divided by the tensor's
    dequantization factor); ``u_units``: the updates in the same units (fp32 or float64, used as they are).
    A non-finite update is never lost.

    With d = 2^k the spacing in the direction of u: lost iff |u| < d/2, or |u| = d/2 and w is even. Written
    on exponents (``frexp``, |u| = um · 2^ux with um in [0.5, 1)): |u| < 2^(k-1) iff ux < k, and |u| = 2^(k-1)
    iff um = 1/2 and ux = k; the parity is looked up for the ties only (rare)."""
    u = _floating(u_units)
    k, infinite = _spacing_exponent(w_units, u > 0, fmt)
    um, ux = torch.frexp(u.abs())
    out = ((ux < k) | (u == 0) | infinite) & (u.abs() < torch.inf)  # NaN and inf fail the last test
    tie = (um == 0.5) & (ux == k) & ~infinite
    if bool(tie.any()):
        out[tie] = is_even(w_units[tie], fmt)
    return out


def lost(w: torch.Tensor, u: torch.Tensor, fmt: ExMy, scale_inv: float | torch.Tensor = 1.0) -> torch.Tensor:
    """:func:`predicted_lost` in real units: ``w`` a stored weight (``w / scale_inv`` a value of ``fmt``; bf16:
    ``scale_inv = 1``), ``u`` the intended update. ``scale_inv`` is the tensor's dequantization factor (real
    value = code × scale_inv), the ``s`` of the module docstring."""
    s = torch.as_tensor(scale_inv, dtype=torch.float64, device=w.device)
    return predicted_lost(w.double() / s, u.double() / s, fmt)


def unchanged(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Whether each stored value kept its bits (codes for FP8: the same code under a new scale counts as
    unchanged; +0 and -0 differ)."""
    if before.dtype != after.dtype or before.shape != after.shape:
        raise ValueError(
            f"compare like with like: {before.dtype}{tuple(before.shape)} vs {after.dtype}{tuple(after.shape)}"
        )
    bits = _BITS[before.element_size()]
    return before.view(bits) == after.view(bits)


@dataclass
class UpdateCounts:
    """What one or more steps did to one tensor (or to all): counts and the bias's two sums, kept as
    0-dim tensors so that recording a step never waits for the device."""

    numel: int
    lost_pred: torch.Tensor  # weights whose update was predicted lost
    unchanged: torch.Tensor  # weights whose stored bits stayed
    bias_num: torch.Tensor  # Σ sign(u)·(u − a), float64
    bias_den: torch.Tensor  # Σ |u|, float64

    def __add__(self, other: UpdateCounts) -> UpdateCounts:
        return UpdateCounts(
            self.numel + other.numel,
            self.lost_pred + other.lost_pred,
            self.unchanged + other.unchanged,
            self.bias_num + other.bias_num,
            self.bias_den + other.bias_den,
        )

    def fractions(self) -> dict[str, float]:
        """``lost_pred_frac``, ``unchanged_frac`` (shares of the weights) and ``lost_bias`` (NaN when no
        update had any mass)."""
        den = float(self.bias_den)
        return {
            "lost_pred_frac": int(self.lost_pred) / max(1, self.numel),
            "unchanged_frac": int(self.unchanged) / max(1, self.numel),
            "lost_bias": float(self.bias_num) / den if den > 0 else float("nan"),
        }


@torch.no_grad()
def count_update(
    before: torch.Tensor,
    after: torch.Tensor,
    intended: torch.Tensor,
    scale_inv_before: float | torch.Tensor = 1.0,
    scale_inv_after: float | torch.Tensor = 1.0,
) -> UpdateCounts:
    """One tensor's step: ``before`` / ``after`` the stored tensors (bf16 values or FP8 codes, the format
    from their dtype), ``intended`` the fp32 weight, real units, the optimizer computed and handed to the
    rounding, and the dequantization factors before and after (1 for bf16). The update is
    ``u = intended − before·s_before``, the applied one ``a = after·s_after − before·s_before``."""
    fmt = format_of(before.dtype)
    w_units = before.float()  # exact; float8 has no direct cast to float64 on every backend
    if isinstance(scale_inv_before, float) and scale_inv_before == scale_inv_after == 1.0:
        # unscaled (bf16): fp32 suffices. u = intended - w is exact wherever it could be lost (Sterbenz:
        # |u| <= |w|), and so is the applied update between two neighbouring bf16 values
        u = intended.float() - w_units
        u_units, applied = u, after.float() - w_units
    else:  # code · fp32 scale is exact in float64 (4 + 24 significant bits)
        s0 = torch.as_tensor(scale_inv_before, dtype=torch.float64, device=before.device)
        s1 = torch.as_tensor(scale_inv_after, dtype=torch.float64, device=before.device)
        w = w_units.double() * s0
        u = intended.double() - w
        u_units, applied = u / s0, after.float().double() * s1 - w
    # (the sums: torch's reductions add pairwise, so an fp32 sum keeps ~fp32 precision of the total)
    return UpdateCounts(
        numel=before.numel(),
        lost_pred=torch.count_nonzero(predicted_lost(w_units, u_units, fmt)),
        unchanged=torch.count_nonzero(unchanged(before, after)),
        bias_num=(torch.sign(u) * (u - applied)).sum().double(),
        bias_den=u.abs().sum().double(),
    )


def lost_bias(u: torch.Tensor, applied: torch.Tensor) -> float:
    """``Σ sign(u)·(u − a) / Σ |u|`` for intended updates ``u`` and applied ones ``a`` (NaN without mass)."""
    u, a = u.double(), applied.double()
    den = float(u.abs().sum())
    return float((torch.sign(u) * (u - a)).sum()) / den if den > 0 else float("nan")


class LostUpdates:
    """The counters of the probed steps, per tensor: the last probed step's and the sums over the probed
    steps since the previous :meth:`rows` call (a telemetry read), plus each probed step's whole-model
    aggregate (element-weighted over every tensor recorded in it).

    A recipe calls :meth:`record` for each low-precision tensor its step updated while probing, then
    :meth:`finish_step`, which returns the aggregate for the step's result.
    """

    def __init__(self):
        self._step: dict[str, tuple[UpdateCounts, str, str]] = {}
        self._last: dict[str, tuple[UpdateCounts, str, str]] = {}
        self._window: dict[str, tuple[UpdateCounts, int]] = {}

    def record(self, name: str, counts: UpdateCounts, rounding: str, fmt: ExMy) -> None:
        """``name``: the layer as telemetry names it; ``rounding``: "nearest" or "stochastic"."""
        self._step[name] = (counts, fmt.name if fmt != BF16 else "bf16", rounding)

    def finish_step(self) -> dict[str, float]:
        """Close a probed step: per-tensor counters move into the last/window records; returns the
        whole-model ``lost_pred_frac``, ``unchanged_frac``, ``lost_bias`` (empty if nothing was recorded)."""
        if not self._step:
            return {}
        total = None
        for name, (c, fmt, rounding) in self._step.items():
            self._last[name] = (c, fmt, rounding)
            win, k = self._window.get(name, (None, 0))
            self._window[name] = (c if win is None else win + c, k + 1)
            total = c if total is None else total + c
        self._step = {}
        return total.fractions()

    def row(self, name: str) -> dict:
        """The ``weight_update`` keys of one tensor: the last probed step's fractions and, if any step was
        probed since the previous read, ``*_window`` over those steps (the bias: the ratio of the summed
        numerators and denominators) and ``probed_window``, their number. Empty if never probed."""
        if name not in self._last:
            return {}
        c, fmt, rounding = self._last[name]
        out = {**c.fractions(), "format": fmt, "rounding": rounding, "numel": c.numel}
        win, k = self._window.get(name, (None, 0))
        out["probed_window"] = k
        if win is not None:
            out.update({f"{key}_window": v for key, v in win.fractions().items()})
        return out

    def rows(self) -> list[dict]:
        """One ``tensor="weight_update"`` telemetry row per recorded tensor; clears the window."""
        out = [{"layer": name, "tensor": "weight_update", **self.row(name)} for name in self._last]
        self.clear_window()
        return out

    def clear_window(self) -> None:
        self._window = {}

    @property
    def names(self) -> list[str]:
        return list(self._last)


def layer_name(param_name: str) -> str:
    """The telemetry layer of a parameter: its module for a ``weight`` (as the FP8 rows name it), else itself."""
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


class ParamProbe:
    """What an optimizer holds during a probed step: counts each low-precision parameter's update into
    ``recorder`` under the parameter's telemetry name (``names``: parameter → name)."""

    def __init__(self, recorder: LostUpdates, names: dict[torch.Tensor, str]):
        self.recorder, self.names = recorder, names

    def record(self, p: torch.Tensor, before: torch.Tensor, intended: torch.Tensor, rounding: str) -> None:
        """``before``: a copy of ``p`` from before the step; ``intended``: the fp32 weight the update computed."""
        name = self.names.get(p, f"param{len(self.recorder.names)}")
        self.recorder.record(name, count_update(before, p.detach(), intended), rounding, format_of(p.dtype))
