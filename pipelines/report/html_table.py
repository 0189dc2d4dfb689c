"""A results CSV as one self-contained, sortable HTML page: what the HTML report shows for a table.

    python -m pipelines.report.html_table --results results --out-dir reports/tables comparison claims ...

Snakemake's report offers a CSV only as a download; an HTML report item opens inside the report. The page
carries its own few lines of CSS and JavaScript (no file is fetched, so it works offline inside the
report's data URI). Cells are formatted by ``pipelines.analysis.markdown.cell``, the rule REPORT.md uses, so a number
reads the same in both; each cell keeps its raw value in ``data-v`` and a click on a column header sorts by
it (numbers as numbers, empty cells last).
"""

from __future__ import annotations

import argparse
import html
import math
import numbers
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_text
from pipelines.analysis.markdown import cell  # one number format for REPORT.md and the HTML report
from pipelines.report.items import table

_STYLE = """
body{font-family:system-ui,sans-serif;font-size:13px;margin:12px;color:#111;background:#fff}
h1{font-size:16px;margin:0 0 4px} p.src{color:#555;margin:0 0 8px}
table{border-collapse:collapse} th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#eef;cursor:pointer;position:sticky;top:0;white-space:nowrap} th:hover{background:#dde}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} tr:nth-child(even) td{background:#fafafa}
"""

# Sort by data-v: numerically where both values parse as numbers, else as text; empty cells always last.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(asc ? "asc" : "desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _raw(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    return repr(v) if isinstance(v, float) else str(v)


def render(df: pd.DataFrame, title: str, source: str) -> str:
    """The page for ``df``: a heading, where the numbers come from, and the table."""

    cols = list(df.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for row in df.itertuples(index=False):
        tds = []
        for c, v in zip(cols, row):
            num = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
            tds.append(
                f'<td{" class=num" if num else ""} data-v="{html.escape(_raw(v), quote=True)}">'
                f"{html.escape(cell(c, v))}</td>"
            )
        body.append("<tr>" + "".join(tds) + "</tr>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="src">{len(df)} rows from <code>{html.escape(source)}</code>; '
            "click a column header to sort.</p>",
            f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>',
            *body,
            "</tbody></table>",
            f"<script>{_SCRIPT}</script>",
            "</body></html>",
            "",
        ]
    )


def write(name: str, results: str | Path, out_dir: str | Path) -> Path:
    """``<out_dir>/<name>.html`` from the table's CSV under ``results``."""
    t = table(name)
    src = Path(results) / t.source
    if not src.is_file():
        raise FileNotFoundError(f"table {name!r}: {src} does not exist (run the workflow first)")
    out = Path(out_dir) / f"{name}.html"
    write_text(out, render(pd.read_csv(src), t.title, str(src)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report.html_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="names from pipelines/report/items.py TABLES")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out-dir", default="reports/tables")
    args = ap.parse_args(argv)
    try:
        for name in args.tables:
            print(f"wrote {write(name, args.results, args.out_dir)}")
    except (KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
