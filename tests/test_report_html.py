"""The HTML report's pieces: the registry of report items, the landing text's escaping and states, the
sortable table pages (sorted by a real browser where Chromium is installed) and the browser check's own
refusals. The whole report, built by the smoke workflow and opened in Chromium, is checked in
tests/test_workflow.py."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_parts

from pipelines.report import browser_check as report_check
from pipelines.report import html_table, landing
from pipelines.report import items as report_items


def rst_to_html(text: str) -> str:
    """docutils as Snakemake's report calls it, but any warning raises (halt_level 2)."""
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})["body"]


def test_every_figure_has_a_group_and_every_table_a_clean_caption():
    from pipelines.report.figures import FIGURES

    assert set(FIGURES) <= set(report_items.FIGURE_GROUPS), set(FIGURES) - set(report_items.FIGURE_GROUPS)
    assert set(report_items.FIGURE_GROUPS.values()) <= set(report_items.GROUPS)
    # each group the report lists holds at least one figure that exists
    assert {report_items.figure_group(f) for f in FIGURES} == set(report_items.GROUPS)
    for name, t in report_items.TABLES.items():
        assert t.title and t.source.endswith(".csv"), name
        assert "system-message" not in rst_to_html(t.caption), name  # e.g. |x| is an RST substitution


def test_unknown_names_are_refused_by_name():
    with pytest.raises(KeyError, match="'nope' has no group in pipelines/report/items.py"):
        report_items.figure_group("nope")
    with pytest.raises(KeyError, match="unknown table 'nope'; registered in"):
        report_items.table("nope")


def test_a_table_of_some_profiles_is_left_out_of_the_others(monkeypatch):
    tables = {**report_items.TABLES, "bench_gemm": report_items.Table("bench/gemm.csv", "GEMM", "c", ("gpu",))}
    monkeypatch.setattr(report_items, "TABLES", tables)
    assert "bench_gemm" in report_items.tables_for("gpu")
    assert "bench_gemm" not in report_items.tables_for("cpu") and "comparison" in report_items.tables_for("cpu")


@pytest.mark.parametrize(
    "text",
    [
        "state_bytes_per_param_ |x| *not bold* `code` [1]_ a\\b <c> **d**",
        "gap -0.02% on one seed; 1.01x bf16-amp's tokens/s; ±0.5% (≥ 3 seeds)",
    ],
)
def test_landing_text_is_escaped_to_literal_text(text):
    body = rst_to_html(landing.esc(text))
    plain = re.sub(r"<[^>]+>", "", body).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert " ".join(plain.split()) == text
    assert "<strong>" not in body and "<em>" not in body and "<a " not in body


def test_gpu_reference_states(tmp_path):
    absent = " ".join(landing.reference_part(tmp_path / "h200"))
    assert "is absent" in absent and "no GPU reference run is committed yet" in absent
    (tmp_path / "h200").mkdir()
    assert "holds no summary.csv" in " ".join(landing.reference_part(tmp_path / "h200"))
    pd.DataFrame({"method": ["bf16-amp", "fp8-e2e"], "status": ["ok", "skipped"]}).to_csv(
        tmp_path / "h200" / "summary.csv", index=False
    )
    (tmp_path / "h200" / "meta.json").write_text(json.dumps({"device": "NVIDIA H200", "date": "2026-12-01"}))
    there = " ".join(landing.reference_part(tmp_path / "h200"))
    assert "2 runs (1 ok) on NVIDIA H200, 2026-12-01" in there
    assert "system-message" not in rst_to_html(there + "\n\n.. _gpu_scaling.png: x")


def test_per_method_lines_follow_the_forest_order_and_name_divergence():
    nan = float("nan")
    comp = pd.DataFrame(
        {
            "profile": "cpu",
            "lr": 1e-3,
            "method": ["fp8-b", "bf16-amp", "fp8-a", "fp8-d", "fp8-s"],
            "status": ["ok", "ok", "ok", "diverged", "skipped"],
            "reason": ["", "", "", "step 7: loss nan", "no GPU"],
            "verdict": ["worse", "reference", "equivalent", "diverged", "n/a (skipped)"],
            "n_seeds": [3, 3, 3, 0, 0],
            "gap_mean_pct": [1.5, nan, 0.1, nan, nan],
            "gap_ci_lo_pct": [1.0, nan, -0.2, nan, nan],
            "gap_ci_hi_pct": [2.0, nan, 0.4, nan, nan],
            "diverged_step": [nan, nan, nan, 7, nan],
            "speedup_median": [0.9, 1.0, 1.1, nan, nan],
            "tokens_per_s_median": [900.0, 1000.0, 1100.0, nan, nan],
            "state_bytes_per_param": [6.04, 16.0, 16.0, 12.0, nan],
        }
    )
    lines = [ln for ln in landing.methods_part(comp, None, "no plot in this test") if ln.startswith("- **")]
    assert [ln.split("**")[1] for ln in lines] == ["bf16-amp", "fp8-a", "fp8-b", "fp8-d", "fp8-s"]
    assert "gap 1.50% \\[1.00, 2.00\\] over 3 seeds; 0.90x" in lines[2]
    assert "diverged at step 7 (step 7: loss nan)" in lines[3] and "skipped: no GPU" in lines[4]
    assert "system-message" not in rst_to_html(
        "\n".join(landing.methods_part(comp, None, "x")) + "\n\n.. _forest.png: x\n.. _comparison.html: y"
    )


FRAME = pd.DataFrame(
    {
        "method": ["b", "a", "c", "d"],
        "gap_mean_pct": [0.5, -1.25, np.nan, 10.0],
        "n_seeds": [3, 1, 0, 12],
        "verdict": ["equivalent", "worse", "not run", "better"],
    }
)


def test_table_page_holds_every_row_formatted_as_in_report_md():
    from pipelines.analysis.markdown import cell

    page = html_table.render(FRAME, "T", "results/x.csv")
    assert page.count("<tr>") == len(FRAME) + 1
    for col in FRAME.columns:
        for v in FRAME[col]:
            assert f">{cell(col, v)}</td>" in page, (col, v)
    assert 'data-v="-1.25"' in page and 'data-v=""' in page  # raw values to sort by; NaN as empty


def test_table_sorts_by_number_in_a_browser(tmp_path):
    """Three copies of one table in a page, a header of each clicked (once, twice, once) by script before the
    DOM is dumped."""
    browser = report_check.find_chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; `make test` tries to install it)")
    page = html_table.render(FRAME, "T", "results/x.csv")
    body = page[page.index("<table") : page.index("</table>") + len("</table>")]
    clicks = [[1], [1, 1], [2]]
    js = "".join(
        f'document.querySelectorAll("table")[{k}].tHead.rows[0].cells[{c}].click();'
        for k, cs in enumerate(clicks)
        for c in cs
    )
    page = page.replace(body, body * len(clicks)).replace("</body>", f"<script>{js}</script></body>")
    (tmp_path / "t.html").write_text(page)
    dom = report_check.dump_dom(browser, tmp_path / "t.html")
    tables = [re.findall(r"<tr><td[^>]*>([^<]*)</td>", t) for t in dom.split("</table>")[:-1]]
    # numbers as numbers (10 after 0.5, not before it as text), the empty cell last either way
    assert tables[0] == ["a", "b", "d", "c"]
    assert tables[1] == ["d", "b", "a", "c"]
    assert tables[2] == ["c", "a", "b", "d"]  # 0 < 1 < 3 < 12


def test_html_table_cli_refuses_a_missing_csv_or_unknown_table(tmp_path, capsys):
    assert html_table.main(["--results", str(tmp_path), "--out-dir", str(tmp_path), "claims"]) == 2
    assert "claims.csv does not exist" in capsys.readouterr().err
    assert html_table.main(["--results", str(tmp_path), "--out-dir", str(tmp_path), "nope"]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.html"))


def test_report_check_without_a_browser_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FP8BENCH_CHROMIUM", str(tmp_path / "no-such-browser"))
    assert report_check.main([str(tmp_path / "report.html")]) == 2
    assert "no Chromium found" in capsys.readouterr().err


def test_a_page_that_is_not_the_report_fails_every_check(tmp_path):
    (tmp_path / "claims.csv").write_text("claim,verdict\nx,holds\n")
    problems = report_check.check_dom("<html><body><p>hello</p></body></html>", tmp_path, ["claims"], ["forest"])
    assert problems and "landing text is not rendered" in problems[0]
