"""The landing text of the HTML report (``report:`` in the Snakefile), written from the results tables.

    python -m pipelines.report.landing --results results --figures reports/figures --out reports/landing.rst \
        --tables claims comparison ... --figure-names forest loss_curves ...

``snakemake --report`` opens on this text: the article's claims with their verdicts, the headline figure
(``forest``), the per-method verdicts, the noise floor, where the GPU reference stands, and a link to every
table and figure the report holds. Every number comes from a CSV under ``results/``; nothing is typed in.

Snakemake renders the text with Jinja2 and then docutils. The generated part sits inside ``{% raw %}`` (a
claim's text must never be read as a template) and is escaped for reStructuredText; the links at the end
name report items (``forest.png``_), which Snakemake turns into links that open them.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

import pandas as pd

from common.atomic import write_text
from pipelines.analysis.markdown import fmt

REFERENCE = "bf16-amp"
GPU_REFERENCE = "results/reference/h200"
# Snakemake's page centres its content vertically in a fixed-height box and gives this text a narrow
# column: a text taller than the window would lose its top (claims included) beyond reach of the scroll
# bar. This lets the box scroll from the top and the text take the width it needs.
STYLE = [
    ".. raw:: html",
    "",
    "   <style>div.h-screen.overflow-auto{align-items:flex-start} div.prose.max-w-lg{max-width:56rem}</style>",
    "",
]
_RST_SPECIAL = re.compile(r"([\\`*_|<>\[\]])")


def esc(text) -> str:
    """``text`` as literal reStructuredText inline content (no markup, no references, no substitutions)."""
    return _RST_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _seeds(n) -> str:
    return f"{int(n)} paired seed{'' if int(n) == 1 else 's'}"


def _heading(title: str, char: str) -> list[str]:
    return [title, char * len(title), ""]


def claims_part(claims: pd.DataFrame) -> list[str]:
    out = _heading("The article's claims", "-")
    out += [
        "Each verdict follows from per-seed measurements by a stated rule; `claims.html`_ has the rule and the "
        "basis of each (``n seeds``: the fewest seeds of the methods a claim rests on).",
        "",
    ]
    for r in claims.itertuples():
        # a claim from the deterministic full-size trace rests on no seeds (n_seeds empty)
        basis = "traced, no seeds" if pd.isna(r.n_seeds) else f"{int(r.n_seeds)} seeds"
        reading = getattr(r, "reading", None)  # the stability claims: how their recipes fail where they do
        out += [
            f"- **{esc(r.verdict)}**: {esc(r.claim)}. Article's value {esc(r.article_value)}; measured "
            f"{esc(r.measured)} ({basis})."
            + (f" Reading: {esc(reading)}." if isinstance(reading, str) and reading else "")
        ]
    return out + [""]


def _gap_text(r) -> str:

    if r.n_seeds >= 2:
        return (
            f"gap {fmt(r.gap_mean_pct, 2)}% [{fmt(r.gap_ci_lo_pct, 2)}, {fmt(r.gap_ci_hi_pct, 2)}] over "
            f"{int(r.n_seeds)} seeds"
        )
    if r.n_seeds == 1:
        return f"gap {fmt(r.gap_mean_pct, 2)}% on one seed"
    return "no seed paired with " + REFERENCE


def data_uri(png: Path) -> str:
    """The figure inside the text: Snakemake's ``embeddedimage`` directive keeps the file path (its mixin's
    ``run`` is shadowed by the image directive's), which no browser resolves inside the report."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def methods_part(comp: pd.DataFrame, forest_png: Path, forest_note: str | None) -> list[str]:
    from pipelines.analysis.claims import _main_rows  # the rows the claims are judged on

    out = _heading("Headline: paired loss gap per method", "-")
    if forest_note:
        out += [f"The forest figure has nothing to plot: {esc(forest_note)}.", ""]
    else:
        uri = data_uri(forest_png)  # docutils limits a line to 10,000 characters and joins a wrapped URI
        out += [
            ".. image:: " + uri[:76],
            *(f"   {uri[i : i + 76]}" for i in range(76, len(uri), 76)),
            "   :width: 100%",
            "   :alt: forest",
            "",
        ]
    out += [
        "`forest.png`_ (full size): the final val-loss gap against bf16-amp at the same seed, mean and 95% "
        "interval over seeds, against the noise floor and the margin. Per method, from "
        "``results/comparison.csv`` (all columns: `comparison.html`_):",
        "",
    ]
    rows = _main_rows(comp)
    if rows.empty:
        return out + ["No method ran.", ""]
    # the reference first, then by gap as the forest figure orders them, runs without a gap last
    rows = rows.assign(_ref=rows["method"] != REFERENCE).sort_values(
        ["_ref", "gap_mean_pct", "method"], na_position="last"
    )
    for r in rows.itertuples():
        if r.method == REFERENCE:
            text = f"the reference; {fmt(r.tokens_per_s_median, 0)} tokens/s"
        elif r.status in ("skipped", "failed"):
            text = f"{r.status}: {r.reason}"
        elif r.status == "diverged":
            text = f"diverged at step {fmt(r.diverged_step, 0)} ({r.reason})"
        else:
            text = f"{_gap_text(r)}; {fmt(r.speedup_median, 2)}x {REFERENCE}'s tokens/s"
        if pd.notna(r.state_bytes_per_param) and r.status not in ("skipped", "failed"):
            text += f"; {fmt(r.state_bytes_per_param, 2)} B/param of persistent state"
        out.append(f"- **{esc(r.method)}** [{esc(r.verdict)}]: {esc(text)}")
    return out + [""]


def noise_floor_part(floors: pd.DataFrame) -> list[str]:

    out = _heading("Noise floor", "-")
    if floors.empty:
        return out + [
            "No null comparison ran (fp32 and bf16-amp on the same seeds): there is no noise floor, and "
            "no gap can be told from numerical chaos.",
            "",
        ]
    for r in floors.itertuples():
        where = f"{r.profile}, {r.model}, lr {r.lr:g}" if pd.notna(r.lr) else f"{r.profile}, {r.model}"
        line = (
            f"{where}: {r.null_method} against {REFERENCE} on {_seeds(r.n_seeds)} ends at most "
            f"{fmt(r.noise_floor_pct, 2)}% apart (the noise floor); the equivalence margin is "
            f"{fmt(r.margin_pct, 2)}%."
        )
        if r.noise_floor_pct >= r.margin_pct:
            line += " The floor is not below the margin: equivalence is not resolvable here."
        out += [f"- {esc(line)}"]
    return out + ["", "All columns: `noise_floor.html`_.", ""]


def reference_part(reference_dir: str | Path) -> list[str]:
    d = Path(reference_dir)
    out = _heading("GPU reference (H200)", "-")
    summary = d / "summary.csv"
    if not summary.is_file():
        state = "is absent" if not d.exists() else "holds no summary.csv"
        return out + [
            f"``{d}`` {state}: no GPU reference run is committed yet, so every number in this "
            f"report was measured on this machine's CPU, where FP8 is emulated and speed says nothing "
            f"about GPUs. ``pipelines/gpu/h200.sh`` produces the folder on one H200.",
            "",
        ]
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").is_file() else {}
    df = pd.read_csv(summary)
    n_ok = int((df["status"] == "ok").sum()) if "status" in df else 0
    return out + [
        f"``{d}``: {len(df)} runs ({n_ok} ok) on {esc(meta.get('device', 'device not recorded'))}, "
        f"{esc(meta.get('date', 'date not recorded'))}; REPORT.md's GPU section and the "
        f"`gpu_scaling.png`_ figure show them.",
        "",
    ]


def index_part(tables: list[str], figures: list[str]) -> list[str]:
    from pipelines.report.items import GROUPS, figure_group

    out = _heading("Everything in this report", "-")
    out += ["Tables (sortable; the category Tables_): " + ", ".join(f"`{t}.html`_" for t in tables) + ".", ""]
    for g in GROUPS:
        names = [f for f in figures if figure_group(f) == g]
        if names:
            out.append(f"- Figures, {g}: " + ", ".join(f"`{f}.png`_" for f in names))
    return out + [
        "",
        "``reports/REPORT.md`` holds the same tables and figures as one document; "
        "``tensorboard --logdir results/runs`` shows every run's curves.",
        "",
    ]


def build(
    results: str | Path,
    fig_dir: str | Path,
    tables: list[str],
    figures: list[str],
    reference_dir: str | Path = GPU_REFERENCE,
) -> str:
    from pipelines.report.figures import empty_note

    results, fig_dir = Path(results), Path(fig_dir)
    summary = pd.read_csv(results / "summary.csv")
    comp = pd.read_csv(results / "comparison.csv")
    floors = pd.read_csv(results / "noise_floor.csv")
    claims = pd.read_csv(results / "claims.csv")
    note = empty_note(fig_dir, "forest")
    status = summary["status"].value_counts()
    profiles = ", ".join(sorted(summary["profile"].astype(str).unique()))
    lines = [
        *_heading("fp8bench: the answers", "="),
        *STYLE,
        esc(
            f"Profile {profiles}: {len(summary)} runs ("
            + ", ".join(f"{n} {s}" for s, n in status.items())
            + f") of {summary['method'].nunique()} methods, each paired by seed against {REFERENCE}. "
            "Written by the workflow from results/; every figure and table below is a report item."
        ),
        "",
        *claims_part(claims),
        *methods_part(comp, fig_dir / "forest.png", note.read_text().strip() if note.is_file() else None),
        *noise_floor_part(floors),
        *reference_part(reference_dir),
        *index_part(tables, figures),
    ]
    return "{% raw %}\n" + "\n".join(lines).rstrip() + "\n{% endraw %}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report.landing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--figures", default="reports/figures")
    ap.add_argument("--out", default="reports/landing.rst")
    ap.add_argument("--tables", nargs="*", help="the table items the report holds (default: every profile's)")
    ap.add_argument("--figure-names", nargs="*", help="the figures the report holds (default: all)")
    ap.add_argument("--reference", default=GPU_REFERENCE, help="the GPU reference folder")
    args = ap.parse_args(argv)
    from pipelines.report.figures import FIGURES
    from pipelines.report.items import TABLES

    text = build(
        args.results,
        args.figures,
        args.tables if args.tables is not None else list(TABLES),
        args.figure_names if args.figure_names is not None else list(FIGURES),
        args.reference,
    )
    write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
