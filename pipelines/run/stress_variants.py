"""The variants of the ``stress`` profile, generated here and written out in ``pipelines/config.yaml``
(``tests/test_stress.py`` holds the YAML to this), and how a run's name maps back to its stress cell.

    python -m pipelines.run.stress_variants      # prints the profile's variants as YAML, to paste
"""

from __future__ import annotations

import yaml

from methods.fp8.formats import LADDER
from methods.fp8_own import ladder_variants

LADDER_METHOD = "fp8-own-tensorwise"
#: granularity → the registered own recipe with it (the run without injection is that recipe itself)
GRANULARITY_METHODS = {
    "tensorwise": "fp8-own-tensorwise",
    "rowwise": "fp8-own-rowwise",
    "blockwise": "fp8-own-blockwise",
}
OUTLIER_KS = (10, 100, 1000)
OUTLIER_BLOCK, OUTLIER_CHANNELS = 0, 4
#: the injected layer whose telemetry the outlier table reads (methods.stress.OUTLIER_MODULES)
OUTLIER_LAYER = f"layers.{OUTLIER_BLOCK}.mlp.w1"
NORM_GAIN_MODES = ("fp8", "fp8-bump")
EPS = (1.0e-8, 1.0e-15)
BETA2 = (0.95, 0.999)
#: how v is stored: name → fp8-optim options
V_STORAGE = {
    "e4m3": {"v_format": "e4m3", "v_transform": "none"},
    "dre": {"v_format": "e4m3", "v_transform": "dre"},
    "e5m2": {"v_format": "e5m2", "v_transform": "none"},
}
#: the cell fp8-optim itself is (the train defaults: eps 1e-8, beta2 0.95; DRE, its default)
DEFAULT_CELL = (1.0e-8, 0.95, "dre")


def ladder_name(fmt: str) -> str:
    return f"{LADDER_METHOD}-{fmt}"


def outlier_name(granularity: str, k: int) -> str:
    return f"fp8-own-{granularity}-outlier-k{k}"


def norm_gain_name(mode: str) -> str:
    return f"fp8-own-tensorwise-gains-{mode}"


def second_moment_name(eps: float, beta2: float, storage: str) -> str:
    if (eps, beta2, storage) == DEFAULT_CELL:
        return "fp8-optim"
    return f"fp8-optim-eps{eps:g}-b2{beta2:g}-v-{storage}"


def variants() -> dict[str, dict]:
    """Every variant of the stress profile, in the order the YAML lists them."""
    out: dict[str, dict] = {}
    for name, v in ladder_variants(LADDER_METHOD).items():  # the bits removed live in formats.LADDER
        out[name] = {"method": v["method"], "options": v["options"], "note": v["note"]}
    for gran, method in GRANULARITY_METHODS.items():
        for k in OUTLIER_KS:
            out[outlier_name(gran, k)] = {
                "method": method,
                "options": {"outlier_scale": k, "outlier_block": OUTLIER_BLOCK, "outlier_channels": OUTLIER_CHANNELS},
                "note": (
                    f"{OUTLIER_CHANNELS} input channels of block {OUTLIER_BLOCK}'s MLP input x{k}, weight "
                    f"columns /{k}: same function, only the {gran} quantization sees the outliers"
                ),
            }
    for mode in NORM_GAIN_MODES:
        out[norm_gain_name(mode)] = {
            "method": "fp8-own-tensorwise",
            "options": {"norm_gains": mode},
            "note": (
                "RMSNorm gains in E4M3 with an MX scale per 32 from floor(log2 amax): clips (Su et al.)"
                if mode == "fp8"
                else "RMSNorm gains in E4M3, MX shared exponent rounded up: nothing clips"
            ),
        }
    for eps in EPS:
        for b2 in BETA2:
            for storage, opts in V_STORAGE.items():
                name = second_moment_name(eps, b2, storage)
                if name == "fp8-optim":
                    continue
                out[name] = {
                    "method": "fp8-optim",
                    "options": dict(opts),
                    "train": {"eps": eps, "beta2": b2},
                    "note": f"FP8 Adam states, v {storage}, eps {eps:g}, beta2 {b2:g}",
                }
    return out


def ladder_bits() -> dict[str, tuple[int, int]]:
    """Run name → (exponent bits removed, mantissa bits removed) from bf16."""
    return {ladder_name(fmt): (de, dm) for fmt, de, dm in LADDER}


def main() -> int:
    print(yaml.safe_dump({"variants": variants()}, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
