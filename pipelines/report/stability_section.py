"""REPORT.md section "Where FP8 breaks": the learning-rate frontier first, then whatever other stability
studies plug in.

The section is the concatenation of ``SUBSECTIONS``: callables ``(results_dir, fig_dir, report_dir) -> str``
that each return their markdown (an empty string: nothing to say). Another study adds its part with one line,
``SUBSECTIONS.append(my_subsection)``, or by listing it below. Every number printed comes from a CSV under
``results/`` and is formatted by ``pipelines.analysis.markdown``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipelines.analysis.frontier import (CELLS_CSV, COMMAND, FRONTIER_CSV, PROFILE, REFERENCE, SEEDS_CSV, lr_text,
                                         statements)
from pipelines.analysis.markdown import fmt, md_table
from pipelines.report.stress_section import STRESS_SUBSECTIONS

Subsection = Callable[[Path, Path, Path], str]

FRONTIER_VIEW = ["method", "n_seeds", "divergence_lr", "divergence_grid_steps", "divergence_vs_reference",
                 "divergence_paired_grid_steps", "divergence_kinds", "within_margin_lr", "within_margin_grid_steps",
                 "lr_sensitivity", "lr_sensitivity_sd", "n_sensitivity_seeds", "best_lr", "best_loss"]
SEED_VIEW = ["method", "seed", "divergence_lr", "diverged_on_grid", "divergence_kinds", "diverged_step",
             "paired_grid_steps", "vs_reference"]
CELL_VIEW = ["method", "lr", "status", "divergence_kinds", "within_margin", "excess_pct", "gaps_pct", "gap_mean_pct",
             "gap_ci_lo_pct", "gap_ci_hi_pct", "diverged_step_min"]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _figure(fig_dir: Path, report_dir: Path, name: str) -> list[str]:
    png = fig_dir / f"{name}.png"
    if not png.is_file():
        return []
    from pipelines.report.figures import empty_note

    note = empty_note(fig_dir, name)
    if note.is_file():
        return [f"(Figure `{name}`: nothing to plot: {note.read_text().strip()}.)", ""]
    return [f"![{name}]({os.path.relpath(png, report_dir)})", ""]


def _noise_floor_line(results_dir: Path, profile: str, model: str, margin: float) -> list[str]:
    """The noise floor at each grid lr (results/noise_floor.csv): where it is not below the margin, whether a
    cell lies within the margin of the best loss is decided by numerical chaos as much as by the recipe."""
    nf = _read(results_dir / "noise_floor.csv")
    if nf.empty:
        return []
    nf = nf[(nf["profile"] == profile) & (nf["model"] == model)].sort_values("lr")
    if nf.empty:
        return []
    per_lr = "; ".join(f"lr {r.lr:g}: {fmt(r.noise_floor_pct, 2)}% ({r.null_method}, {r.n_seeds} seeds)"
                       for r in nf.itertuples())
    over = [f"{r.lr:g}" for r in nf.itertuples() if r.noise_floor_pct >= margin]
    tail = (f" At lr {', '.join(over)} it is not below the margin: there, within or outside the margin is decided by "
            f"seed-to-seed chaos as much as by the recipe." if over else "")
    return [f"Noise floor per grid lr (`results/noise_floor.csv`, the largest |paired gap| of a change that should "
            f"not matter): {per_lr}.{tail}", ""]


def frontier_subsection(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    fr, cells, seeds = (_read(results_dir / n) for n in (FRONTIER_CSV, CELLS_CSV, SEEDS_CSV))
    head = ["### Learning-rate frontier", ""]
    if fr.empty:
        return "\n".join(head + [
            f"No learning-rate frontier in these results: no recipe ran over a grid of learning rates. The "
            f"`{PROFILE}` profile produces it (`{COMMAND}`); once its runs are on disk, this section shows them, "
            f"also in another profile's report."])
    out = head + [
        f"Each recipe trained over a grid of peak learning rates (from `{fr['source'].iloc[0]}`), paired by seed: "
        f"runs at the same seed share initial weights and batches, so the grid shows where each recipe breaks "
        f"and whether an FP8 recipe breaks at a lower learning rate than `{REFERENCE}` (the article's \"training "
        f"pace\"). Definition: {fr['divergence_definition'].iloc[0]}. Rules: {fr['divergence_rule'].iloc[0]}; "
        f"{fr['rule'].iloc[0]}; {fr['sensitivity_rule'].iloc[0]}. `divergence_grid_steps` is how many grid "
        f"steps a recipe's divergence lr (the smallest over its seeds) lies above (+) or below (-) "
        f"`{REFERENCE}`'s, `divergence_paired_grid_steps` the same per seed (`>=` / `<=`: a bound, one side did "
        f"not diverge on the grid); `within_margin_grid_steps` the same for the max within-margin lr (a recipe "
        f"with none counts one step below the grid).", ""]
    for (profile, model), g in fr.groupby(["profile", "model"], sort=False):
        if fr.groupby(["profile", "model"]).ngroups > 1:
            out += [f"#### {profile} / {model}", ""]
        out += [f"Grid: {g['grid'].iloc[0]}; margin {g['margin_pct'].iloc[0]:g}%.", "",
                md_table(g[FRONTIER_VIEW], f"results/{FRONTIER_CSV}"), ""]
        s = seeds[(seeds["profile"] == profile) & (seeds["model"] == model)] if len(seeds) else seeds
        if len(s):
            out += [f"Per recipe and seed (`results/{SEEDS_CSV}`): the smallest grid lr at which the run diverged "
                    f"(none: not on the grid), the rule that fired, the step, and the grid steps to "
                    f"`{REFERENCE}`'s at the same seed.", "", md_table(s[SEED_VIEW], f"results/{SEEDS_CSV}"), ""]
        out += _noise_floor_line(results_dir, profile, model, float(g["margin_pct"].iloc[0]))
        c = cells[(cells["profile"] == profile) & (cells["model"] == model)]
        if len(c):
            out += ["Per recipe and lr (`results/frontier_cells.csv`): statuses, the divergence rules that fired, "
                    "each seed's excess over the best loss at its seed (%), and the paired gap against "
                    f"`{REFERENCE}` at the same seed and lr (per seed, mean, Student-t interval from 2 seeds on).", "",
                    md_table(c[CELL_VIEW], f"results/{CELLS_CSV}"), ""]
    out += [f"- {s}" for s in statements(fr)] + [""]
    out += _figure(fig_dir, report_dir, "lr_frontier")
    return "\n".join(out)


LONG_VIEW = ["method", "seed", "status", "steps", "tokens_ratio", "horizon_step", "gap_at_default_pct", "gap_final_pct",
             "gap_change_pct", "trend", "unchanged_early", "unchanged_late"]


def long_horizon_subsection(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    from pipelines.analysis.long_horizon import COMMAND as LONG_COMMAND, LONG_CSV, PROFILE as LONG_PROFILE

    lh = _read(results_dir / LONG_CSV)
    head = ["### Long horizon", ""]
    if lh.empty:
        return "\n".join(head + [
            f"No long-horizon runs on disk. The `{LONG_PROFILE}` profile trains bf16-amp, fp8-naive (plain and with "
            f"stochastic rounding of its weight update), fp8-e2e, fp8-optim and fp8-own-tensorwise for 10x the "
            f"default tokens (`{LONG_COMMAND}`); once its runs are on disk, this section shows them."])
    steps, default = int(lh["steps"].max()), int(lh["default_steps"].iloc[0])
    out = head + [
        f"Each recipe trained {steps} steps, {steps / default:g}x the default profile's {default} (same batch "
        f"and sequence length, so {steps / default:g}x the tokens), paired by seed with `{REFERENCE}`. The gap "
        f"is read at the evaluation nearest the default horizon (`horizon_step`) and at the end; it `grows` or "
        f"`shrinks` when the change exceeds the margin (and, on fewer seeds than the verdicts need, "
        f"far_factor x the noise floor), else it `holds`. `unchanged_early` / `unchanged_late`: fp8-naive's share "
        f"of FP8 weight codes a step left as they were, at the default horizon and at the end (`results/{LONG_CSV}`).",
        "", md_table(lh[LONG_VIEW], f"results/{LONG_CSV}"), ""]
    for r in lh[lh["method"] != REFERENCE].itertuples():
        if r.status != "ok":
            out.append(f"- {r.method} (seed {r.seed}): {r.status} ({r.reason}).")
            continue
        stall = (f"; unchanged FP8 codes {fmt(r.unchanged_early, 3)} -> {fmt(r.unchanged_late, 3)}"
                 if pd.notna(r.unchanged_early) else "")
        out.append(f"- {r.method} (seed {r.seed}): gap {fmt(r.gap_at_default_pct, 2)}% at step {r.horizon_step} -> "
                   f"{fmt(r.gap_final_pct, 2)}% at step {r.steps}: {r.trend}{stall}.")
    out.append("")
    out += _figure(fig_dir, report_dir, "long_horizon")
    return "\n".join(out)


SUBSECTIONS: list[Subsection] = [frontier_subsection, *STRESS_SUBSECTIONS, long_horizon_subsection]

WEIGHTS_CLAIM = "FP8 weights and gradients"  # the start of the claim's text in results/claims.csv
NAIVE = "fp8-naive"


def weights_claim_evidence(results_dir: str | Path) -> str:
    """The FP8-weights claim read on all three tests: the default run (results/claims.csv), the lr frontier
    (does fp8-naive break a grid step before bf16-amp?) and the long horizon (does its gap grow or the run
    diverge?). Joint reading: holds if any test shows the instability; does not hold only if every test ran
    and none does; otherwise inconclusive. Empty where the claim is not in the table."""
    results_dir = Path(results_dir)
    claims = _read(results_dir / "claims.csv")
    row = claims[claims["claim"].astype(str).str.startswith(WEIGHTS_CLAIM)] if len(claims) else claims
    if row.empty:
        return ""
    default = str(row["verdict"].iloc[0])
    shows, lines = [], [f"- Default run: {default} (the claims table above)."]
    shows.append(True if default == "holds" else False if default == "does not hold" else None)
    fr = _read(results_dir / FRONTIER_CSV)
    fr = fr[fr["method"] == NAIVE] if len(fr) else fr
    if fr.empty:
        lines.append(f"- Learning-rate frontier: not run (`{COMMAND}`).")
        shows.append(None)
    else:
        r = fr.iloc[0]
        steps = r["steps_vs_reference"]
        lines.append(f"- Learning-rate frontier: {NAIVE}'s max stable lr {lr_text(r['max_stable_lr'])}, "
                     f"{fmt(steps, 0)} grid step(s) from {REFERENCE}'s ({int(r['n_seeds'])} seeds; grid "
                     f"{r['grid']}).")
        shows.append(bool(steps <= -1) if pd.notna(steps) else None)
    from pipelines.analysis.long_horizon import COMMAND as LONG_COMMAND, LONG_CSV

    lh = _read(results_dir / LONG_CSV)
    lh = lh[lh["method"] == NAIVE] if len(lh) else lh
    if lh.empty:
        lines.append(f"- Long horizon: not run (`{LONG_COMMAND}`).")
        shows.append(None)
    else:
        trends = set(lh["trend"].astype(str))
        gaps = ", ".join(f"seed {t.seed}: {fmt(t.gap_at_default_pct, 2)}% -> {fmt(t.gap_final_pct, 2)}% ({t.trend})"
                         for t in lh.itertuples())
        lines.append(f"- Long horizon ({int(lh['steps'].max())} steps): {NAIVE}'s paired gap from the default "
                     f"horizon to the end, {gaps}.")
        shows.append(True if trends & {"diverged", "grows"} else False if trends <= {"holds", "shrinks"} else None)
    joint = ("holds" if any(x is True for x in shows) else
             "does not hold" if all(x is False for x in shows) else "inconclusive")
    why = {"holds": "at least one test shows it",
           "does not hold": "all three tests ran and none shows it",
           "inconclusive": "no test shows it, and not every test ran or was conclusive"}[joint]
    return "\n".join([f"The claim \"{row['claim'].iloc[0]}\" on all three tests: **{joint}** ({why}).", "", *lines])


def stability_section(results_dir: str | Path, fig_dir: str | Path, report_dir: str | Path) -> str:
    results_dir, fig_dir, report_dir = Path(results_dir), Path(fig_dir), Path(report_dir)
    parts = [p(results_dir, fig_dir, report_dir) for p in SUBSECTIONS]
    intro = ("The article warns that FP8 weights and gradients make pre-training unstable. A run that happens to "
             "survive one setting says little; this section pushes each recipe until it breaks.")
    return "\n\n".join(["## Where FP8 breaks", intro, *[p.strip() for p in parts if p and p.strip()]])
