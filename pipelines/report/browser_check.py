"""Open ``reports/report.html`` in headless Chromium and check what a reader sees first.

    python -m pipelines.report.browser_check reports/report.html --results results \
        --screenshot reports/report_landing.png

Chromium runs the report's JavaScript; ``--dump-dom`` gives the page as rendered. The checks, on that DOM:

- the landing text is rendered (not only present in the report's script) and carries every claim of
  ``results/claims.csv`` with its verdict, the headline figure as an image, and no docutils error;
- every table of the profile (``pipelines/report/items.py``) and every figure is a report item, in its
  category (Tables; Figures under its group), with a caption and its content embedded, and the landing
  text links to it;
- every table item holds as many rows as its CSV.

A screenshot of the landing page is saved for a person to look at. Exit status: 0 all checks pass, 1 some
failed (each printed), 2 no Chromium here (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
WINDOW = "1600,1200"


def find_chromium() -> str | None:
    """``$FP8BENCH_CHROMIUM``, else the first of ``BROWSERS`` on PATH."""
    env = os.environ.get("FP8BENCH_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(browser: str, url: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start. The virtual
    # time budget lets the page's scripts (React) finish before the DOM is dumped or the screenshot taken.
    with tempfile.TemporaryDirectory(prefix="fp8bench-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW}",
            "--virtual-time-budget=10000",
            *args,
            url,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{Path(browser).name} exited {r.returncode}: {r.stderr[-2000:]}")
    return r


def dump_dom(browser: str, page: str | Path) -> str:
    return _chromium(browser, Path(page).resolve().as_uri(), "--dump-dom").stdout


def screenshot(browser: str, page: str | Path, out: str | Path) -> Path:
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")  # renamed into place: never half a picture under its name
    _chromium(browser, Path(page).resolve().as_uri(), f"--screenshot={tmp}")
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise RuntimeError(f"no screenshot written to {tmp}")
    os.replace(tmp, out)
    return out


class _Landing(HTMLParser):
    """Text, links and images inside the rendered landing text (the ``div.prose`` the report's React code
    fills with the workflow description); script contents never count."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0  # >0 while inside the landing div (its nesting depth of divs)
        self.found = False
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.depth:
            if tag == "div":
                self.depth += 1
            if tag == "a" and a.get("href"):
                self.hrefs.append(a["href"])
            if tag == "img":
                self.imgs.append(a.get("src") or "")
            self.classes += (a.get("class") or "").split()
        elif tag == "div" and "prose" in (a.get("class") or "").split():
            self.depth, self.found = 1, True

    def handle_endtag(self, tag):
        if self.depth and tag == "div":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.text.append(data)

    def plain(self) -> str:
        return " ".join("".join(self.text).split())


def _script_json(dom: str, name: str):
    """The JSON Snakemake's report puts in ``<script id="NAME">var NAME = ...;</script>``."""
    m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', dom, re.S)
    if not m:
        raise ValueError(f"the page has no <script id={name!r}>: not a Snakemake report")
    return json.loads(m.group(1))


def _norm(text) -> str:
    return " ".join(str(text).split())


def check_dom(dom: str, results: str | Path, tables: list[str], figures: list[str]) -> list[str]:
    """Problems a reader would meet in the rendered report (empty: none)."""
    from pipelines.report.items import TABLES_DIR, figure_group, table

    problems = []
    landing = _Landing()
    landing.feed(dom)
    if not landing.found:
        return ["the landing text is not rendered (no div.prose in the DOM: did the report's scripts run?)"]
    text = landing.plain()
    if "fp8bench: the answers" not in text:
        problems.append("the landing page does not open on fp8bench's text (workflow description missing)")
    if "system-message" in landing.classes:
        problems.append("the landing text has a docutils error message in it")
    claims = pd.read_csv(Path(results) / "claims.csv")
    for r in claims.itertuples():
        if f"{_norm(r.verdict)}: {_norm(r.claim)}" not in text:
            problems.append(f"claim not on the landing page with its verdict: {r.verdict!r}: {r.claim!r}")
    if not any(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in landing.imgs):
        problems.append("the headline figure (forest) is not shown on the landing page")

    items = _script_json(dom, "results")
    cats = _script_json(dom, "categories")
    expected = {f"{TABLES_DIR}/{t}.html": ("Tables", None) for t in tables}
    expected.update({f"reports/figures/{f}.png": ("Figures", figure_group(f)) for f in figures})
    links = {urllib.parse.unquote(h) for h in landing.hrefs}
    for path, (cat, sub) in expected.items():
        entry = items.get(path)
        if entry is None:
            problems.append(f"{path} is not a report item")
            continue
        where = cats.get(cat, {})
        in_cat = any(path in paths for s, paths in where.items() if sub is None or s == sub)
        if not in_cat:
            problems.append(f"{path} is not listed under {cat}{' / ' + sub if sub else ''}")
        if not _norm(re.sub(r"<[^>]+>", " ", entry.get("caption") or "")):
            problems.append(f"{path} has no caption")
        if not (entry.get("data_uri") or "").startswith("data:"):
            problems.append(f"{path} is not embedded in the report")
        if not any(f"showResultInfo('{path}')" in h for h in links):
            problems.append(f"the landing text has no link to {path}")
    for t in tables:
        entry = items.get(f"{TABLES_DIR}/{t}.html")
        if entry is None or not (entry.get("data_uri") or "").startswith("data:"):
            continue
        page = base64.b64decode(entry["data_uri"].split(",", 1)[1]).decode("utf-8", "replace")
        n_csv = len(pd.read_csv(Path(results) / table(t).source))
        n_rows = page.count("<tr>") - 1  # one header row
        if n_rows != n_csv:
            problems.append(f"table {t}: {n_rows} rows in the report, {n_csv} in its CSV")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report.browser_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("report", nargs="?", default="reports/report.html")
    ap.add_argument("--results", default="results")
    ap.add_argument("--profile", help="the profile the report is of (default: the one in results/summary.csv)")
    ap.add_argument("--screenshot", default="reports/report_landing.png")
    ap.add_argument("--dom-out", help="also save the rendered DOM here")
    args = ap.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print("error: no Chromium found (Debian: apt-get install chromium; or set FP8BENCH_CHROMIUM)", file=sys.stderr)
        return 2
    if not Path(args.report).is_file():
        print(f"error: {args.report} does not exist (snakemake --report {args.report})", file=sys.stderr)
        return 2
    from pipelines.report.figures import FIGURES
    from pipelines.report.items import tables_for

    profile = args.profile or pd.read_csv(Path(args.results) / "summary.csv")["profile"].mode().iloc[0]
    dom = dump_dom(browser, args.report)
    if args.dom_out:
        Path(args.dom_out).write_text(dom, encoding="utf-8")
    shot = screenshot(browser, args.report, args.screenshot)
    problems = check_dom(dom, args.results, tables_for(profile), list(FIGURES))
    for p in problems:
        print(f"FAIL: {p}")
    print(f"{len(problems)} problem(s); landing page screenshot: {shot}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
