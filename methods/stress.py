"""Stress options of the own FP8 recipes: outlier injection and quantized norm gains.

Both act on a model after ``convert_to_fp8`` and change nothing in ``models/``: the injection sets fixed
channel factors on FP8 linears (``FP8Linear.set_channel_scale``), the norm gains put a quantizing forward in
front of the blocks' RMSNorms (the class is swapped in place, as ``methods.fp8.saved`` does, so parameter
names, the optimizer's view and checkpoints stay those of the plain model).
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from methods.fp8.linear import FP8Linear
from methods.fp8.mx_gains import MX_BLOCK, ste_mx_counted

#: the linears of a block whose *input* gets the outlier channels: the MLP input after ``mlp_norm``, which
#: feeds the SwiGLU's gate and up projections
OUTLIER_MODULES = ("mlp.w1", "mlp.w3")
#: the modules whose gains ``norm_gains`` quantizes: the blocks' two RMSNorms (the final norm feeds the
#: high-precision head and stays as it is, like the head)
NORM_MODULES = ("layers.*.attn_norm", "layers.*.mlp_norm")
NORM_GAINS = ("hp", "fp8", "fp8-bump")


def outlier_channels(dim: int, n: int) -> list[int]:
    """The ``n`` input channels made outliers: evenly spaced over the first min(dim, 128) channels, so all
    of them share the first 1×128 tile of blockwise scaling and the other tiles are an outlier-free
    control (tiny's dim 256 has two). Fixed, so every seed and recipe gets the same channels."""
    span = min(dim, 128)
    if not 1 <= n <= span:
        raise ValueError(f"outlier_channels must be 1 .. {span} for input dimension {dim}, got {n}")
    return [i * (span // n) for i in range(n)]


def inject_outliers(
    model: nn.Module, block: int, n_channels: int, k: float, modules: tuple[str, ...] = OUTLIER_MODULES
) -> list[str]:
    """Make ``n_channels`` input channels of block ``block``'s MLP input ``k`` times larger in front of
    its FP8 linears, and the matching weight columns ``k`` times smaller. The exact-arithmetic function
    and the fp32 master weights and gradients are the plain model's, so any change of loss is what
    quantization does with the outliers alone. Returns the names of the layers changed."""
    layers = getattr(model, "layers", None)
    if layers is None or not 0 <= block < len(layers):
        n = len(layers) if layers is not None else 0
        raise ValueError(f"outlier_block must be 0 .. {n - 1} (the model's blocks), got {block}")
    done = []
    for rel in modules:
        name = f"layers.{block}.{rel}"
        mod = model.get_submodule(name)
        if not isinstance(mod, FP8Linear):
            raise ValueError(
                f"outlier injection needs an FP8 linear at {name}, found {type(mod).__name__} "
                "(is it in keep_high_precision?)"
            )
        f = torch.ones(mod.in_features)
        f[outlier_channels(mod.in_features, n_channels)] = float(k)
        mod.set_channel_scale(f)
        done.append(name)
    return done


class _QuantizedGains:
    """Mixin put in front of a norm's class: its forward sees ``weight`` MX-quantized (straight-through)."""

    norm_gain_rounding: str = "floor"
    norm_gain_block: int = MX_BLOCK
    _in_quantized = False

    def forward(self, *args):
        if self._in_quantized:  # the call functional_call makes below: the norm's own forward
            return super().forward(*args)
        self._in_quantized = True
        try:
            w, n_clip = ste_mx_counted(self.weight, "e4m3", self.norm_gain_block, self.norm_gain_rounding)
            if self.training:  # clipped gains since the last telemetry read (Su et al. log them per block)
                win = self.__dict__.setdefault("_gain_window", [0, 0])
                win[0], win[1] = win[0] + n_clip, win[1] + w.numel()
                self._gain_last = (n_clip, self.weight.detach())
            return torch.func.functional_call(self, {"weight": w}, args)
        finally:
            self._in_quantized = False


_CLASSES: dict[type, type] = {}


def quantize_norm_gains(
    model: nn.Module, mode: str, block: int = MX_BLOCK, patterns: tuple[str, ...] = NORM_MODULES
) -> list[str]:
    """``mode`` "fp8": the gains of the matching norms are used in E4M3 with an MX shared scale per
    ``block`` values from floor(log2 amax) (clips the largest; Su et al.'s mechanism); "fp8-bump": the
    shared exponent rounded up (their fix: nothing clips); "hp": unchanged. The fp32 master gain gets the
    straight-through gradient. Returns the names of the norms changed."""
    if mode not in NORM_GAINS:
        raise ValueError(f"norm_gains must be one of {', '.join(NORM_GAINS)}, got {mode!r}")
    if mode == "hp":
        return []
    done = []
    for name, mod in model.named_modules():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            if not isinstance(getattr(mod, "weight", None), nn.Parameter):
                raise ValueError(f"norm_gains: {name} has no weight parameter to quantize")
            base = type(mod)
            if not issubclass(base, _QuantizedGains):
                if base not in _CLASSES:
                    _CLASSES[base] = type(
                        f"{base.__name__}QuantizedGains", (_QuantizedGains, base), {"__module__": base.__module__}
                    )
                mod.__class__ = _CLASSES[base]
            mod.norm_gain_rounding = "up" if mode == "fp8-bump" else "floor"
            mod.norm_gain_block = block
            done.append(name)
    return done


def norm_gain_telemetry(model: nn.Module) -> list[dict]:
    """One row per quantized norm: the share of its gains the last forward clipped, the share over every
    forward since the previous read (``clipped_frac_window``) and the gains' range."""
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, _QuantizedGains) and getattr(mod, "_gain_last", None) is not None:
            n_clip, w = mod._gain_last
            clipped, numel = mod.__dict__.get("_gain_window", [0, 0])
            rows.append(
                {
                    "layer": name,
                    "tensor": "gain",
                    "rounding": mod.norm_gain_rounding,
                    "clipped_frac": int(n_clip) / max(1, w.numel()),
                    "clipped_frac_window": int(clipped) / max(1, numel),
                    "gain_min": float(w.min()),
                    "gain_max": float(w.max()),
                }
            )
            mod._gain_window = [0, 0]
    return rows
