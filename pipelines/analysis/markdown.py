"""Numbers and markdown tables as every report prints them: one rule for REPORT.md's tables and prose, the
comparison table (``pipelines.analysis.comparison``), the landing page and the HTML tables."""

from __future__ import annotations

import math

import pandas as pd


def digits_for(col: str) -> int:
    """Decimal places per kind of column: one rule for the tables, the prose and the tests."""
    c = col.lower()
    if (
        "tokens_per_s" in c
        or "mib" in c
        or c in ("steps", "tokens", "n_params", "runs", "n_ok", "seed", "seeds", "diverged_step")
    ):
        return 0
    if (
        c.startswith("diverged_step") or c.startswith("steps_vs") or c.endswith("_index") or "grid_steps" in c
    ):  # counts of steps
        return 0
    if "sensitivity" in c:  # a loss difference in nats, as the losses are printed
        return 3
    if "gb" in c:
        return 1
    if "frac" in c:
        return 4
    if "val_loss" in c or c.endswith("_loss"):
        return 3
    return 2


def fmt(v, digits: int = 2) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and digits == 0):
        return f"{v:.0f}"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10**-digits:
            return f"{v:.{digits}e}"  # a small number is not printed as 0.00
        return f"{v:.{digits}f}"
    return str(v)


def cell(col: str, v) -> str:
    if hasattr(v, "item") and not isinstance(v, str):  # numpy scalar → Python number
        v = v.item()
    if (col == "lr" or col.endswith("_lr")) and isinstance(v, float) and not math.isnan(v):
        return f"{v:g}"
    if isinstance(v, str):
        return v.replace("|", "/").replace("\n", " ")
    return fmt(v, digits_for(col))


def md_table(df: pd.DataFrame, source: str | None = None) -> str:
    cols = list(df.columns)
    lines = [f"<!-- source: {source} -->"] if source else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(cols, row)) + " |")
    return "\n".join(lines)
