"""pipelines/analysis/stress_tables.py on hand-made runs: the CSVs hold the paired gaps and the injected layer's
fractions computed here by hand, the subsections print them, and say which profile to run when absent."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipelines.analysis import stress_tables as rs
from pipelines.analysis.markdown import cell
from pipelines.report import stress_section as section
from pipelines.run import stress_variants as sv

REF = {0: 5.0, 1: 5.2}


def _write_run(root, method, seed, val, status="ok", telemetry=None):
    d = root / "runs" / "stress" / "tiny" / method / f"seed{seed}"
    d.mkdir(parents=True)
    events = [{"event": "telemetry", "step": s, "layers": rows} for s, rows in (telemetry or [])]
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return {
        "profile": "stress",
        "model": "tiny",
        "method": method,
        "seed": seed,
        "lr": 1e-3,
        "status": status,
        "final_val_loss": val if status == "ok" else float("nan"),
        "run_dir": str(d),
    }


def _tele(u, s):
    return [
        {"layer": sv.OUTLIER_LAYER, "tensor": "input", "underflow_frac_window": u, "saturated_frac_window": s},
        {"layer": "layers.1.mlp.w1", "tensor": "input", "underflow_frac_window": 0.9, "saturated_frac_window": 0.9},
    ]


@pytest.fixture
def results(tmp_path):
    rows = [_write_run(tmp_path, "bf16-amp", s, v) for s, v in REF.items()]
    ladder = {
        "e8m7": 0.0,
        "e8m4": 0.1,
        "e8m3": 0.3,
        "e8m2": 2.0,
        "e5m2": 1.0,
        "e4m3": 0.4,
        "e3m4": 0.8,
        "e3m2": 3.0,
        "e2m3": None,
    }
    for fmt, gap in ladder.items():
        for s in REF:
            if gap is None:
                rows.append(_write_run(tmp_path, sv.ladder_name(fmt), s, 0, status="diverged"))
            else:
                rows.append(_write_run(tmp_path, sv.ladder_name(fmt), s, REF[s] * (1 + (gap + 0.1 * s) / 100)))
    for s in REF:
        rows.append(_write_run(tmp_path, "fp8-own-tensorwise", s, REF[s] * 1.01, telemetry=[(0, _tele(1e-6, 0))]))
        for i, k in enumerate(sv.OUTLIER_KS):
            rows.append(
                _write_run(
                    tmp_path,
                    sv.outlier_name("tensorwise", k),
                    s,
                    REF[s] * 1.01 * (1 + i / 100),
                    telemetry=[(0, _tele(10.0 ** (i - 4), 0)), (10, _tele(10.0 ** (i - 3), 1e-4))],
                )
            )
        rows.append(_write_run(tmp_path, sv.norm_gain_name("fp8"), s, REF[s] * 1.03))
    rows.append(_write_run(tmp_path, "fp8-optim", 0, 5.1))
    rows.append(_write_run(tmp_path, sv.second_moment_name(1e-15, 0.999, "e4m3"), 0, 5.1 * 1.2))
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    return tmp_path


def test_tables_hold_the_paired_numbers(results):
    paths = rs.build_tables(results)
    assert set(paths) == set(rs.TABLES) and all(p.is_file() for p in paths.values())
    lad = pd.read_csv(paths["ladder"]).set_index("format")
    assert lad.loc["e8m2", "gap_mean_pct"] == pytest.approx(2.05)  # (2.0 + 2.1) / 2, paired per seed
    assert lad.loc["e3m2", "exponent_bits_removed"] == 5 and lad.loc["e3m2", "mantissa_bits_removed"] == 5
    assert lad.loc["e2m3", "n_diverged"] == 2 and math.isnan(lad.loc["e2m3", "gap_mean_pct"])
    out = pd.read_csv(paths["outliers"]).set_index("k")
    assert out.loc[1000, "gap_vs_uninjected_pct"] == pytest.approx(2.0)
    assert out.loc[100, "input_underflow_frac_max"] == pytest.approx(1e-2)  # step 10's window; other layers ignored
    assert out.loc[10, "input_saturated_frac_max"] == pytest.approx(1e-4)
    assert out.loc[1, "gap_vs_uninjected_pct"] == 0
    ng = pd.read_csv(paths["norm_gains"]).set_index("norm_gains")
    assert ng.loc["fp8", "gap_vs_hp_gains_pct"] == pytest.approx(100 * (1.03 / 1.01 - 1))
    sm = pd.read_csv(paths["second_moment"])
    cell_ = sm[(sm["eps"] == 1e-15) & (sm["v"] == "e4m3")].iloc[0]
    assert cell_["gap_vs_bf16_amp_pct"] == pytest.approx(100 * (5.1 * 1.2 / 5.0 - 1))
    assert math.isnan(cell_["gap_vs_dre_same_hp_pct"])  # its DRE cell did not run


def test_subsections_print_the_csv_numbers_and_figures(results, tmp_path):
    from pipelines.report.figures import FigureData, _save

    fig_dir, report_dir = results / "figs", results
    rs.build_tables(results)  # rule stress_tables
    data = FigureData(summary=pd.DataFrame(), stress={n: pd.read_csv(rs.csv_path(results, n)) for n in rs.TABLES})
    for name, fn in (("stress_ladder", section.fig_stress_ladder), ("stress_outliers", section.fig_stress_outliers)):
        _save(fn(data), fig_dir, name)  # rule figure
    assert isinstance(section.fig_stress_ladder(FigureData(summary=pd.DataFrame())), str)
    texts = [fn(results, fig_dir, report_dir) for fn in section.STRESS_SUBSECTIONS]
    assert all(t.startswith("### ") for t in texts)
    lad = pd.read_csv(rs.csv_path(results, "ladder"))
    for v in lad["gap_mean_pct"].dropna():
        assert cell("gap_mean_pct", float(v)) in texts[0]
    # mantissa-only: e8m2 is the first whose every seed exceeds 0.5%; with range: e5m2 (1.0, 1.1)
    assert "first to break: **e8m2**" in texts[0] and "first to break: **e5m2**" in texts[0]
    assert "![stress_ladder](figs/stress_ladder.png)" in texts[0]
    assert "![stress_outliers](figs/stress_outliers.png)" in texts[1]
    out = pd.read_csv(rs.csv_path(results, "outliers"))
    assert cell("input_underflow_frac_max", float(out["input_underflow_frac_max"].max())) in texts[1]


def test_absent_runs_name_the_profile(tmp_path):
    for fn in section.STRESS_SUBSECTIONS:
        text = fn(tmp_path, tmp_path / "f", tmp_path)
        assert "profile=stress" in text and text.startswith("### ")


def test_collect_summarizes_saturated_and_underflowed_fractions(tmp_path):
    from pipelines.analysis.collect import fp8_fractions

    row = _write_run(
        tmp_path, "fp8-own-tensorwise", 0, 5.0, telemetry=[(0, _tele(0.01, 0.0)), (10, _tele(0.03, 0.002))]
    )
    fr = fp8_fractions(row["run_dir"])
    assert fr["underflow_frac_max"] == pytest.approx(0.9) and fr["saturated_frac_max"] == pytest.approx(0.9)
    assert fr["underflow_frac_mean"] == pytest.approx((0.01 + 0.9 + 0.03 + 0.9) / 4)
    assert fr["saturated_frac_mean"] == pytest.approx((0.0 + 0.9 + 0.002 + 0.9) / 4)
    none = _write_run(tmp_path, "bf16-amp", 0, 5.0)
    assert all(math.isnan(v) for v in fp8_fractions(none["run_dir"]).values())


def test_in_the_stability_profile_stress_cells_pair_at_their_own_lr():
    """The stability profile runs the baselines over the frontier's grid and the stress variants at one lr:
    the stress tables read every run at that lr only, and another profile's runs not at all."""
    rows = [
        {"profile": "stability", "model": "tiny", "method": m, "seed": 0, "lr": lr}
        for m in ("bf16-amp", "fp8-own-tensorwise")
        for lr in (1e-3, 1e-2, 1e-1)
    ]
    rows += [
        {"profile": "stability", "model": "tiny", "method": sv.ladder_name("e4m3"), "seed": 0, "lr": 1e-3},
        {"profile": "cpu", "model": "tiny", "method": "bf16-amp", "seed": 0, "lr": float("nan")},
    ]
    got = rs._stress_runs(pd.DataFrame(rows))
    assert set(got["lr"]) == {1e-3} and set(got["profile"]) == {"stability"}
    assert set(got["method"]) == {"bf16-amp", "fp8-own-tensorwise", sv.ladder_name("e4m3")}
    assert rs._stress_runs(pd.DataFrame(rows[:6])).empty  # a frontier without stress cells: none
