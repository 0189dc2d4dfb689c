"""``reports/REPORT.md`` from the results tables and figures. Every number printed comes from a CSV under
``results/`` (summary, comparison, claims, memory model, GPU reference), formatted by :func:`fmt`.

    python -m pipelines.report.report_md --results results --figures reports/figures --out reports/REPORT.md
    python -m pipelines.report.report_md --from-disk --profile cpu      # collect + compare + figures + report

``--from-disk`` is what ``snakemake --cores 1 report`` runs: it rebuilds everything from the run
folders already on disk and never trains.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
from pathlib import Path

import pandas as pd

from common.atomic import write_text
from pipelines.analysis.comparison import comparison_view, registry_rows, write_outputs
from pipelines.analysis.markdown import fmt, md_table
from pipelines.report.memory_section import traced_section
from pipelines.report.perf_section import performance_section, predicted_section
from pipelines.report.stability_section import stability_claims_readings, stability_section
from pipelines.run.events import read_events

REFERENCE = "bf16-amp"


# ------------------------------------------------------------------------------------------ sections


def environment(summary: pd.DataFrame) -> dict:
    for run_dir in summary["run_dir"]:
        path = Path(str(run_dir)) / "metrics.jsonl"
        if path.is_file():
            for ev in read_events(path):
                if ev["event"] == "run_start":
                    return ev.get("environment", {})
    return {}


def environment_section(summary: pd.DataFrame) -> str:
    env = environment(summary)
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    isa = ", ".join(env.get("cpu_isa_flags", [])) or "none of the listed ones"
    return "\n".join(
        [
            "## Environment",
            "",
            f"- Generated: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Profile(s): {', '.join(sorted(summary['profile'].astype(str).unique()))}",
            f"- Device: {env.get('device_name', '?')} ({env.get('cpu_count', '?')} CPUs visible, "
            f"{env.get('torch_threads', '?')} torch thread(s) per process)",
            f"- CPU: {env.get('cpu_model', '?')}; kernel-relevant ISA flags: {isa}; bf16 matrix products: "
            f"{env.get('cpu_bf16_matmuls', '?')}",
            "- The same seed on another CPU (other ISA, other kernels, other summation order) gives another "
            "trajectory and other raw losses. What should reproduce across machines are the verdicts below, which "
            "rest on paired gaps, their intervals and the noise floor measured on this machine.",
            f"- Git revision: {env.get('git_revision', '?')}",
            f"- Python {env.get('python', '?')}; {versions}",
            "- Throughput on a CPU measures emulated FP8 and says nothing about GPU speed; speedups are ratios "
            "within this workflow run.",
        ]
    )


def claims_section(claims: pd.DataFrame) -> str:
    view = claims[
        [
            c
            for c in (
                "claim",
                "article_value",
                "measured",
                "n_seeds",
                "verdict",
                "rule",
                "decided_by",
                "activations",
                "peak",
                "basis",
            )
            if c in claims and (c not in ("activations", "peak") or claims[c].notna().any())
        ]
    ]
    notes = [f"- {n}" for n in claims["note"].fillna("") if n]
    return "\n".join(
        [
            "## The article's claims",
            "",
            "Each verdict follows from per-seed measurements by the rule beside it; `n_seeds` is the fewest "
            "seeds of the methods a claim rests on.",
            "",
            md_table(view, "results/claims.csv"),
            "",
            *notes,
        ]
    )


def regime_warning(floors: pd.DataFrame) -> str:
    """The report's first lines where the regime is too noisy for the margin: a noise floor above half the margin
    leaves three seeds too few to decide most verdicts; what to do about it."""
    loud = floors[floors["noise_floor_pct"] > floors["margin_pct"] / 2] if not floors.empty else floors
    if loud.empty:
        return ""
    r = loud.sort_values("noise_floor_pct").iloc[-1]
    return (
        f"> **Warning: the noise floor ({fmt(r.noise_floor_pct, 2)}%, {r.null_method} against `{REFERENCE}` over "
        f"{int(r.n_seeds)} seeds) exceeds half the margin ({fmt(r.margin_pct / 2, 2)}%).** At this spread most "
        f"intervals stay wider than the margin and verdicts come out `inconclusive`. What to do: set "
        f"`analysis.max_seeds` (e.g. 10) so that inconclusive methods get more seeds until decided "
        f"(`seeds_to_decide` in `results/comparison.csv` says how many each would need); or choose a calmer "
        f"regime (a lower learning rate, more steps: `benchmarks/REGIME_SEARCH.md`); or widen "
        f"`analysis.margin_pct`, knowing what that concedes."
    )


def noise_floor_section(floors: pd.DataFrame) -> str:
    if floors.empty:
        return "## Noise floor\n\nNo null comparison ran (fp32 and bf16-amp on the same seeds): no noise floor."
    view = floors.drop(columns=[c for c in ("profile", "model", "lr") if floors[c].nunique(dropna=True) <= 1])
    lines = [
        "## Noise floor",
        "",
        f"The yardstick for every gap: how far apart two recipes that should train alike (fp32 and `{REFERENCE}`) "
        f"end, paired by seed. `noise_floor_pct` is the largest |gap| over the seeds; a gap below it cannot be told "
        f"from numerical chaos. Beside it, `{REFERENCE}` itself: its spread over seeds ((max - min) / mean of the "
        f"final val losses; a property of the seeds, not a yardstick) and how far its val loss fell from step 0 "
        f"(`ref_fall_pct`, the smallest fall over seeds).",
        "",
        md_table(view, "results/noise_floor.csv"),
    ]
    for r in floors.itertuples():
        if r.noise_floor_pct >= r.margin_pct:
            lines += [
                "",
                f"Warning: the noise floor ({fmt(r.noise_floor_pct, 2)}%) is not below the margin "
                f"({fmt(r.margin_pct, 2)}%): at this margin equivalence is not resolvable here.",
            ]
    return "\n".join(lines)


def comparison_section(comp: pd.DataFrame, forest_png: str = "figures/forest.png") -> str:

    lines = [
        "## Per-method comparison",
        "",
        f"Paired by seed against `{REFERENCE}` (`results/comparison.csv`): `gap_mean_pct` is the mean over the "
        f"method's `n_seeds` seeds of its final val-loss gap against `{REFERENCE}` at the same seed (same initial "
        f"weights, same batches), `gap_ci_lo_pct` / `gap_ci_hi_pct` its confidence interval. The interval is "
        f"Student t (mean ± t·s/√n): with a handful of seeds a bootstrap has too few distinct resamples and its "
        f"interval never reaches past the observed values, while the t quantile widens the interval for exactly "
        f"the uncertainty so few seeds leave.",
        "",
        *[f"Verdict rule: {r}." for r in comp["verdict_rule"].dropna().unique()],
        "",
        f"The headline figure, one row per method: ![forest]({forest_png})",
        "",
        md_table(comparison_view(comp), "results/comparison.csv"),
    ]
    return "\n".join(lines)


def finding(r) -> str:
    name = f"**{r.method}**"
    if r.status == "not run":
        return f"- {name}: not run ({r.reason})."
    if r.status in ("skipped", "failed"):
        return f"- {name}: {r.status}: {r.reason}."
    if r.status == "diverged":
        return f"- {name}: diverged at step {fmt(r.diverged_step, 0)} ({r.reason})."
    parts = [f"final val loss {fmt(r.val_loss_mean, 3)}"]
    if r.method != REFERENCE and r.n_seeds >= 2:
        parts.append(
            f"paired gap {fmt(r.gap_mean_pct, 2)}% [{fmt(r.gap_ci_lo_pct, 2)}, {fmt(r.gap_ci_hi_pct, 2)}] "
            f"over {fmt(r.n_seeds, 0)} seeds vs {REFERENCE}: {r.verdict} at margin {fmt(r.margin_pct, 2)}%"
        )
    elif r.method != REFERENCE and r.n_seeds == 1:
        parts.append(
            f"paired gap {fmt(r.gap_mean_pct, 2)}% on one seed vs {REFERENCE}: {r.verdict} at margin "
            f"{fmt(r.margin_pct, 2)}%"
        )
    if not pd.isna(r.speedup_median) and r.method != REFERENCE:
        parts.append(f"{fmt(r.speedup_median, 2)}x {REFERENCE}'s tokens/s")
    if not pd.isna(r.state_bytes_per_param):
        parts.append(f"{fmt(r.state_bytes_per_param, 2)} B/param of persistent state")
    status = r.status if r.status == "ok" else f"{r.status}: {r.reason}"
    return f"- {name} ({status}, seeds {r.seeds}): " + "; ".join(parts) + "."


def findings_section(comp: pd.DataFrame) -> str:
    main = comp[comp["profile"] == comp["profile"].mode().iloc[0]]
    lr_mode = main["lr"].mode()
    if len(lr_mode):
        main = main[(main["lr"] == lr_mode.iloc[0]) | main["lr"].isna()]
    return "\n".join(["## Findings per method", "", *[finding(r) for r in main.itertuples()]])


def memory_section(mm: pd.DataFrame) -> str:
    n = mm["n_params"].iloc[0]
    comp_cols = ["weights_bpp", "master_bpp", "grads_bpp", "optim_bpp", "meta_bpp"]
    article = mm[mm["kind"] == "article"][["row", *comp_cols, "analytic_bpp", "gb_at_n"]]
    meth = mm[mm["kind"] == "method"][
        ["row", *comp_cols, "analytic_bpp", "gb_at_n", "measured_bpp", "measured_gb_at_n"]
    ]
    ref = mm[mm["kind"] == "reference"][["row", "analytic_bpp", "gb_at_n", "note"]]
    return "\n".join(
        [
            f"## Memory at {n / 1e9:g}B parameters",
            "",
            "(a) The article's accounting (no master copy, no scales):",
            "",
            md_table(article, "results/memory_model.csv"),
            "",
            "(b) Every method: the analytic model (`python -m methods.memory`) next to the bytes/param measured "
            "from live tensors on this run's model, scaled to the same size. ZeRO rows are per rank.",
            "",
            md_table(meth, "results/memory_model.csv"),
            "",
            "Reference recipes the article's numbers are usually compared with (not run here):",
            "",
            md_table(ref, "results/memory_model.csv"),
        ]
    )


def figures_section(fig_dir: Path, report_dir: Path) -> str:
    from pipelines.report.figures import FIGURES, empty_note

    out = ["## Figures", ""]
    for name, (_fn, caption) in FIGURES.items():
        png = fig_dir / f"{name}.png"
        if not png.is_file():
            continue
        note = empty_note(fig_dir, name)
        out += [f"### {name}", "", f"![{name}]({os.path.relpath(png, report_dir)})", "", f"*{caption}*", ""]
        if note.is_file():
            out += [f"Nothing to plot: {note.read_text().strip()}.", ""]
    return "\n".join(out)


def glossary_section() -> str:

    reg = registry_rows()
    cols = (
        ["method", "family"]
        + [c for c in reg.columns if c.startswith("stores_")]
        + ["available_here", "unavailable_reason"]
    )
    view = reg[cols].rename(columns=lambda c: c.removeprefix("stores_")).fillna("–")
    return "\n".join(
        [
            "## Glossary: what each method stores",
            "",
            "Dtype of each persistent component and of the matrix products (`python -m methods` lists "
            "the same with availability).",
            "",
            md_table(view),
        ]
    )


def reference_section(reference_glob: str) -> str:
    dirs = sorted({Path(p).parent for p in glob.glob(reference_glob)})
    out = ["## GPU reference results", ""]
    if not dirs:
        return "\n".join(
            out
            + [
                "No GPU reference results are committed yet (`results/reference/<device>/`); "
                "`pipelines/gpu/h200.sh` produces them on an H200."
            ]
        )
    for d in dirs:
        meta_path = d / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        df = pd.read_csv(d / "summary.csv")
        cols = [
            c
            for c in [
                "model",
                "method",
                "status",
                "n_params",
                "tokens_per_s",
                "speedup",
                "state_bytes_per_param",
                "peak_mem_bytes",
                "final_train_loss",
                "reason",
            ]
            if c in df
        ]
        out += [
            f"### {meta.get('device', d.name)} — {meta.get('date', 'date not recorded')}",
            "",
            f"From `{d}`; versions: {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}",
            "",
            md_table(df[cols], str(d / "summary.csv")),
            "",
        ]
    return "\n".join(out)


def runs_section(summary: pd.DataFrame) -> str:
    cols = [
        "profile",
        "method",
        "seed",
        "lr",
        "status",
        "final_val_loss",
        "loss_gap_pct",
        "tokens_per_s",
        "speedup",
        "state_bytes_per_param",
        "reason",
    ]
    return "## All runs\n\nOne row per run (`results/summary.csv`).\n\n" + md_table(
        summary[cols], "results/summary.csv"
    )


def lean_section(comp: pd.DataFrame) -> str:
    r = comp[(comp["method"] == "fp8-lean") & (comp["status"] != "not run")]
    if r.empty:
        return ""
    r = r.iloc[0]
    o = comp[(comp["method"] == "fp8-optim") & (comp["profile"] == r["profile"]) & (comp["lr"] == r["lr"])]
    cost = ""
    if len(o) and r["n_seeds"] >= 1 and o.iloc[0]["n_seeds"] >= 1:
        o = o.iloc[0]

        def gap(x):
            ci = f" [{fmt(x['gap_ci_lo_pct'], 2)}, {fmt(x['gap_ci_hi_pct'], 2)}]" if x["n_seeds"] >= 2 else ""
            return f"{fmt(x['gap_mean_pct'], 2)}%{ci} over {fmt(x['n_seeds'], 0)} seeds ({x['verdict']})"

        cost = (
            f" Measured here, paired against {REFERENCE}: fp8-lean's gap {gap(r)} against fp8-optim's {gap(o)}, "
            f"at {fmt(r['state_bytes_per_param'], 2)} instead of {fmt(o['state_bytes_per_param'], 2)} B/param."
        )
    return (
        "## What fp8-lean gives up\n\nfp8-lean steps each parameter inside backward (a post-accumulate-grad "
        "hook) and frees its gradient at once, so a full set of gradients never exists. It cannot clip by the "
        "global gradient norm (the norm is known only after the last gradient, when the other parameters have "
        "already moved) and cannot accumulate gradients over micro-batches." + cost
    )


def optim_ablation_section(ab: pd.DataFrame) -> str:
    if ab.empty:
        return ""
    view = ab.drop(columns=[c for c in ("profile", "model", "lr") if ab[c].nunique(dropna=True) <= 1])
    return "\n".join(
        [
            "## FP8 second moment: which format (ablation)",
            "",
            "FP8-LM reports that Adam's second moment v diverges when stored in FP8: v spans the square of the "
            "gradients' range, more than E4M3's. `fp8-optim` stores m in E4M3 and v in E4M3 after COAT's dynamic range "
            "expansion (`dre`), with one fp32 scale per block; the rows below are the same training run with v stored "
            "plainly in E4M3 (as torchao's `AdamWFp8` does) or plainly in E5M2 (the profile's variants), next to "
            "torchao's FP8 and int8 optimizers. `v_flush_frac_max` is the largest fraction of a tensor's v stored "
            "as 0 under a nonzero m "
            "(such elements step by |m|/eps), `max_m_over_sqrt_v` the largest stored |m|/sqrt(v), i.e. the largest "
            "step in units of lr, both over the logged steps. Gaps are paired by seed against `bf16-amp`, with the "
            "verdict of the comparison table; a variant run on one seed is inconclusive unless far outside the "
            "noise floor. The update error of each format against "
            "exact Adam on the same gradients, free of trajectory noise, is in `benchmarks/OPTIM_ABLATION.md`.",
            "",
            md_table(view, "results/optim_ablation.csv"),
        ]
    )


def build_report(
    results: str | Path, fig_dir: str | Path, out: str | Path, reference_glob: str = "results/reference/*/summary.csv"
) -> str:
    results, out = Path(results), Path(out)
    summary = pd.read_csv(results / "summary.csv")
    comp = pd.read_csv(results / "comparison.csv")
    floors = pd.read_csv(results / "noise_floor.csv")
    claims = pd.read_csv(results / "claims.csv")
    mm = pd.read_csv(results / "memory_model.csv")
    ab_path = results / "optim_ablation.csv"
    ab = pd.read_csv(ab_path) if ab_path.is_file() else pd.DataFrame()
    traced, fit, ranks = (
        pd.read_csv(results / n) if (results / n).is_file() else pd.DataFrame()
        for n in ("memory_traced.csv", "memory_fit.csv", "memory_traced_ranks.csv")
    )
    parts = [
        "# fp8bench report",
        "",
        "Generated by the workflow from `results/`; do not edit by hand (`snakemake --cores 1 report` rebuilds it "
        "from the results on disk).",
        "",
        regime_warning(floors),
        "",
        environment_section(summary),
        "",
        claims_section(claims),
        "",
        stability_claims_readings(results),
        "",
        noise_floor_section(floors),
        "",
        comparison_section(comp, os.path.relpath(Path(fig_dir) / "forest.png", out.parent)),
        "",
        findings_section(comp),
        "",
        optim_ablation_section(ab),
        "",
        lean_section(comp),
        "",
        stability_section(results, Path(fig_dir), out.parent),
        "",
        memory_section(mm),
        "",
        traced_section(traced, fit, md_table, ranks, summary, comp),
        "",
        performance_section(results),
        "",
        predicted_section(results),
        "",
        figures_section(Path(fig_dir), out.parent),
        "",
        glossary_section(),
        "",
        reference_section(reference_glob),
        "",
        runs_section(summary),
    ]
    text = "\n".join(p for p in parts if p is not None).rstrip() + "\n"
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    write_text(out, text)
    return text


def from_disk(profile: str | None, results: Path, fig_dir: Path, out: Path) -> None:
    """Collect whatever finished runs are on disk, then tables, figures and the report: no training."""
    from pipelines.analysis import frontier, long_horizon, stress_tables
    from pipelines.analysis.collect import collect, write_all
    from pipelines.analysis.comparison import load_analysis
    from pipelines.report.figures import FigureData, build

    pattern = f"{results}/runs/{profile or '*'}/*/*/*/summary.json"
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"no finished runs under {pattern}; run the workflow first")
    write_all(collect(paths), results / "summary.csv")
    # the stability tables first: the claims (written with the comparison) read them
    frontier.write_outputs(results / "summary.csv", results, load_analysis())
    long_horizon.write_outputs(results, load_analysis(), summary=results / "summary.csv")
    stress_tables.build_tables(results)
    write_outputs(results / "summary.csv", results, traced_csv=results / "memory_traced.csv")
    build(FigureData.load(results / "summary.csv"), fig_dir)
    build_report(results, fig_dir, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report.report_md", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--figures", default="reports/figures")
    ap.add_argument("--out", default="reports/REPORT.md")
    ap.add_argument("--from-disk", action="store_true", help="collect, compare and draw first (no training)")
    ap.add_argument("--profile", help="with --from-disk: only this profile's runs")
    args = ap.parse_args(argv)
    if args.from_disk:
        from_disk(args.profile, Path(args.results), Path(args.figures), Path(args.out))
    else:
        build_report(args.results, args.figures, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
