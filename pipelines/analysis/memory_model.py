"""The analytic memory model at 10B parameters beside the bytes per parameter measured in the runs
(``results/memory_model.csv``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

COMPONENTS = ["weights", "master", "grads", "optim", "meta"]


def memory_model(comp: pd.DataFrame, n_params: float = 10e9) -> pd.DataFrame:
    """The analytic model at ``n_params`` (the article's rows, every method, reference recipes) next to the
    bytes/param measured in these results."""
    from methods.memory import analytic_table

    measured = comp[comp["status"] != "not run"].dropna(subset=["state_bytes_per_param"])
    measured = measured.drop_duplicates("method").set_index("method")
    rows = []
    for r in analytic_table(n_params):
        row = {
            "row": r["row"],
            "kind": r["kind"],
            **{f"{c}_bpp": r["bytes_per_param"][c] for c in COMPONENTS},
            "analytic_bpp": r["total_bytes_per_param"],
            "gb_at_n": r["gb"],
            "n_params": n_params,
            "measured_bpp": measured["state_bytes_per_param"].get(r["row"], np.nan)
            if r["kind"] == "method"
            else np.nan,
            "note": r["note"],
        }
        row["measured_gb_at_n"] = row["measured_bpp"] * n_params / 1e9
        rows.append(row)
    return pd.DataFrame(rows)
