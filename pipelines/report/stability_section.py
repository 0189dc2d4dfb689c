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

from pipelines.analysis.frontier import (
    CELLS_CSV,
    COMMAND,
    FRONTIER_CSV,
    PROFILE,
    REFERENCE,
    SEEDS_CSV,
    statements,
)
from pipelines.analysis.markdown import fmt, md_table
from pipelines.report.stress_section import STRESS_SUBSECTIONS

Subsection = Callable[[Path, Path, Path], str]

FRONTIER_VIEW = [
    "method",
    "n_seeds",
    "divergence_lr",
    "divergence_grid_steps",
    "divergence_vs_reference",
    "divergence_paired_grid_steps",
    "divergence_kinds",
    "within_margin_lr",
    "within_margin_grid_steps",
    "lr_sensitivity",
    "lr_sensitivity_sd",
    "n_sensitivity_seeds",
    "best_lr",
    "best_loss",
]
SEED_VIEW = [
    "method",
    "seed",
    "divergence_lr",
    "diverged_on_grid",
    "divergence_kinds",
    "diverged_step",
    "paired_grid_steps",
    "vs_reference",
]
CELL_VIEW = [
    "method",
    "lr",
    "status",
    "divergence_kinds",
    "within_margin",
    "excess_pct",
    "gaps_pct",
    "gap_mean_pct",
    "gap_ci_lo_pct",
    "gap_ci_hi_pct",
    "diverged_step_min",
]


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
    per_lr = "; ".join(
        f"lr {r.lr:g}: {fmt(r.noise_floor_pct, 2)}% ({r.null_method}, {r.n_seeds} seeds)" for r in nf.itertuples()
    )
    over = [f"{r.lr:g}" for r in nf.itertuples() if r.noise_floor_pct >= margin]
    tail = (
        f" At lr {', '.join(over)} it is not below the margin: there, within or outside the margin is decided by "
        f"seed-to-seed chaos as much as by the recipe."
        if over
        else ""
    )
    return [
        f"Noise floor per grid lr (`results/noise_floor.csv`, the largest |paired gap| of a change that should "
        f"not matter): {per_lr}.{tail}",
        "",
    ]


def frontier_subsection(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    fr, cells, seeds = (_read(results_dir / n) for n in (FRONTIER_CSV, CELLS_CSV, SEEDS_CSV))
    head = ["### Learning-rate frontier", ""]
    if fr.empty:
        return "\n".join(
            head
            + [
                f"No learning-rate frontier in these results: no recipe ran over a grid of learning rates. The "
                f"`{PROFILE}` profile produces it (`{COMMAND}`); once its runs are on disk, this section shows them, "
                f"also in another profile's report."
            ]
        )
    out = head + [
        f"Each recipe trained over a grid of peak learning rates (from `{fr['source'].iloc[0]}`), paired by seed: "
        f"runs at the same seed share initial weights and batches, so the grid shows where each recipe breaks "
        f"and whether an FP8 recipe breaks at a lower learning rate than `{REFERENCE}` (the article's \"training "
        f'pace"). Definition: {fr["divergence_definition"].iloc[0]}. Rules: {fr["divergence_rule"].iloc[0]}; '
        f"{fr['rule'].iloc[0]}; {fr['sensitivity_rule'].iloc[0]}. `divergence_grid_steps` is how many grid "
        f"steps a recipe's divergence lr (the smallest over its seeds) lies above (+) or below (-) "
        f"`{REFERENCE}`'s, `divergence_paired_grid_steps` the same per seed (`>=` / `<=`: a bound, one side did "
        f"not diverge on the grid); `within_margin_grid_steps` the same for the max within-margin lr (a recipe "
        f"with none counts one step below the grid).",
        "",
    ]
    for (profile, model), g in fr.groupby(["profile", "model"], sort=False):
        if fr.groupby(["profile", "model"]).ngroups > 1:
            out += [f"#### {profile} / {model}", ""]
        out += [
            f"Grid: {g['grid'].iloc[0]}; margin {g['margin_pct'].iloc[0]:g}%.",
            "",
            md_table(g[FRONTIER_VIEW], f"results/{FRONTIER_CSV}"),
            "",
        ]
        s = seeds[(seeds["profile"] == profile) & (seeds["model"] == model)] if len(seeds) else seeds
        if len(s):
            out += [
                f"Per recipe and seed (`results/{SEEDS_CSV}`): the smallest grid lr at which the run diverged "
                f"(none: not on the grid), the rule that fired, the step, and the grid steps to "
                f"`{REFERENCE}`'s at the same seed.",
                "",
                md_table(s[SEED_VIEW], f"results/{SEEDS_CSV}"),
                "",
            ]
        out += _noise_floor_line(results_dir, profile, model, float(g["margin_pct"].iloc[0]))
        c = cells[(cells["profile"] == profile) & (cells["model"] == model)]
        if len(c):
            out += [
                "Per recipe and lr (`results/frontier_cells.csv`): statuses, the divergence rules that fired, "
                "each seed's excess over the best loss at its seed (%), and the paired gap against "
                f"`{REFERENCE}` at the same seed and lr (per seed, mean, Student-t interval from 2 seeds on).",
                "",
                md_table(c[CELL_VIEW], f"results/{CELLS_CSV}"),
                "",
            ]
    out += [f"- {s}" for s in statements(fr)] + [""]
    out += _figure(fig_dir, report_dir, "lr_frontier")
    return "\n".join(out)


LONG_VIEW = [
    "method",
    "n_seeds",
    "status",
    "gaps_default_pct",
    "gap_default_mean_pct",
    "gaps_end_pct",
    "gap_end_mean_pct",
    "gap_end_ci_lo_pct",
    "gap_end_ci_hi_pct",
    "verdict_end",
    "change_mean_pct",
    "change_ci_lo_pct",
    "change_ci_hi_pct",
    "trend",
    "unchanged_early",
    "unchanged_late",
]
LONG_RUN_VIEW = [
    "method",
    "seed",
    "status",
    "steps",
    "horizon_step",
    "gap_at_default_pct",
    "gap_final_pct",
    "gap_change_pct",
    "unchanged_early",
    "unchanged_late",
    "reason",
]


def long_horizon_reading(r) -> str:
    """One recipe's long-horizon result in a sentence, from its long_horizon.csv row."""
    if r["trend"] == "diverged":
        steps = r["diverged_steps"]  # one step reads back from the CSV as a number
        steps = f"{steps:.0f}" if isinstance(steps, float) else str(steps)
        return (
            f"{r['method']}: diverged on {int(r['n_diverged'])} of {int(r['n_seeds'])} seeds (at step "
            f"{steps}; {r['status']})."
        )
    stall = (
        f"; share of FP8 weight codes unchanged by a step {fmt(r['unchanged_early'], 3)} at the default "
        f"horizon, {fmt(r['unchanged_late'], 3)} at the end"
        if pd.notna(r["unchanged_early"])
        else ""
    )
    return (
        f"{r['method']}: gap {fmt(r['gap_default_mean_pct'], 2)}% [{fmt(r['gap_default_ci_lo_pct'], 2)}, "
        f"{fmt(r['gap_default_ci_hi_pct'], 2)}] at step {int(r['horizon_step'])} -> "
        f"{fmt(r['gap_end_mean_pct'], 2)}% [{fmt(r['gap_end_ci_lo_pct'], 2)}, {fmt(r['gap_end_ci_hi_pct'], 2)}] at "
        f"step {int(r['steps'])} ({r['verdict_end']}); change {fmt(r['change_mean_pct'], 2)} "
        f"[{fmt(r['change_ci_lo_pct'], 2)}, {fmt(r['change_ci_hi_pct'], 2)}]: {r['trend']}{stall}{_sign_turn(r)}."
    )


def _sign_turn(r) -> str:
    """Where both intervals clear zero on opposite sides: the recipe led bf16-amp early and trails it at the end
    (or the reverse), which a verdict read at one horizon alone would not show."""
    lo0, hi0, lo1, hi1 = (
        r[k] for k in ("gap_default_ci_lo_pct", "gap_default_ci_hi_pct", "gap_end_ci_lo_pct", "gap_end_ci_hi_pct")
    )
    at = f"at step {int(r['horizon_step'])}"
    if hi0 < 0 < lo1:
        return f"; ahead of {REFERENCE} {at}, behind it at the end: the gap turns as the lr decays"
    if lo0 > 0 > hi1:
        return f"; behind {REFERENCE} {at}, ahead of it at the end: the gap turns as the lr decays"
    return ""


LOST_VIEW = [
    "method",
    "n_seeds",
    "early_steps",
    "late_steps",
    "lost_pred_early_frac",
    "lost_pred_late_frac",
    "stall",
    "stall_measured",
    "lr_corr_pred_rho",
    "gap_corr_mean_rho",
    "gap_tracks",
    "bias_mean_frac",
    "bias",
    "pred_vs_measured_abs_diff_frac",
]


def _signed(v, digits: int = 3) -> str:
    return "–" if v is None or not pd.notna(v) else f"{float(v):+.{digits}f}"


def _ci(r, stem: str, digits: int = 3) -> str:
    """``lo, hi`` of the interval columns ``<stem>_ci_lo_<unit>`` / ``<stem>_ci_hi_<unit>`` of a row."""
    unit = "rho" if stem.startswith("gap_corr") else "frac"
    return f"{_signed(r[f'{stem}_ci_lo_{unit}'], digits)}, {_signed(r[f'{stem}_ci_hi_{unit}'], digits)}"


COMMON_CAUSE = " (both follow the lr schedule: they move together, which does not show that one causes the other)"


def lost_updates_reading(r) -> str:
    """One recipe's lost-update mechanism in a short paragraph, from its lost_updates.csv row."""
    seeds = int(r["n_seeds"])
    text = (
        f"**{r['method']}** ({seeds} seed{'s' * (seeds > 1)}; early: steps {r['early_steps']}, late: steps "
        f"{r['late_steps']}). Predicted lost share {fmt(r['lost_pred_early_frac'], 3)} early -> "
        f"{fmt(r['lost_pred_late_frac'], 3)} late, change {_signed(r['lost_pred_change_mean_frac'])} "
        f"[{_ci(r, 'lost_pred_change')}]: **{r['stall']}** (measured unchanged {fmt(r['unchanged_early_frac'], 3)} "
        f"-> {fmt(r['unchanged_late_frac'], 3)}: {r['stall_measured']}); rank correlation of the lost share with "
        f"the step's lr {_signed(r['lr_corr_pred_rho'], 2)} (mean over seeds). "
    )
    if str(r["gap_tracks"]).startswith("n/a"):
        text += f"Loss gap: {r['gap_tracks']}. "
    else:
        text += (
            f"Loss gap against {REFERENCE} vs the lost share at the nearest probe, rank correlation over "
            f"{int(r['n_evals'])} evaluations per seed {r['gap_corrs_rho']}, mean "
            f"{_signed(r['gap_corr_mean_rho'], 2)} [{_ci(r, 'gap_corr', 2)}]: **{r['gap_tracks']}**"
            f"{COMMON_CAUSE if r['gap_tracks'] == 'tracks' else ''}. "
        )
    text += (
        f"Lost-update bias {_signed(r['bias_mean_frac'])} [{_ci(r, 'bias')}]: **{r['bias']}**"
        f"{'; ' + r['sr_statement'] if isinstance(r['sr_statement'], str) and r['sr_statement'] else ''}. "
        f"Predicted vs measured: mean |difference| {fmt(r['pred_vs_measured_abs_diff_frac'], 4)} "
        f"({r['agreement_note']})."
    )
    return text


MAX_LOST_PARAGRAPHS = 8  # beyond that (a grid of lrs), the table speaks alone


def lost_updates_part(results_dir: Path, profile: str) -> list[str]:
    """The lost-update mechanism of ``profile``'s runs (results/lost_updates.csv): its rules, table and one
    paragraph per recipe; nothing where none of its runs was probed."""
    from pipelines.analysis.lost_updates import CSV

    lu = _read(results_dir / CSV)
    lu = lu[lu["profile"] == profile] if len(lu) else lu
    if lu.empty:
        return []
    view = LOST_VIEW if lu["lr"].nunique(dropna=False) == 1 else ["lr", *LOST_VIEW]
    out = [
        f"Lost updates (`results/{CSV}`): does the share of weight updates rounded away grow as the lr decays, "
        f"does the loss gap track it, and does stochastic rounding remove the lost updates' bias? Rules: "
        f"{lu['rule'].iloc[0]}.",
        "",
        md_table(lu[view], f"results/{CSV}"),
        "",
    ]
    if len(lu) <= MAX_LOST_PARAGRAPHS:
        out += [lost_updates_reading(r) + "\n" for _, r in lu.iterrows()]
    return out


def lost_updates_subsection(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    """The lost-update mechanism of the probed runs of profiles other than long_horizon (whose runs the long
    horizon subsection reads); empty where there are none."""
    from pipelines.analysis.lost_updates import CSV, LONG_PROFILE

    lu = _read(results_dir / CSV)
    out = []
    for profile in dict.fromkeys(lu["profile"]) if len(lu) else []:
        if profile != LONG_PROFILE:
            out += [f"### Lost updates ({profile} profile)", "", *lost_updates_part(results_dir, profile)]
    return "\n".join(out)


def long_horizon_subsection(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    from pipelines.analysis.long_horizon import COMMAND as LONG_COMMAND
    from pipelines.analysis.long_horizon import LONG_CSV, RUNS_CSV
    from pipelines.analysis.long_horizon import PROFILE as LONG_PROFILE

    lh, runs = _read(results_dir / LONG_CSV), _read(results_dir / RUNS_CSV)
    head = ["### Long horizon", ""]
    if lh.empty:
        return "\n".join(
            head
            + [
                f"No long-horizon runs on disk. The `{LONG_PROFILE}` profile trains bf16-amp, fp32 (the null), "
                "fp8-naive "
                f"(plain and with stochastic rounding of its weight update), fp8-e2e and fp8-optim for 10x the default "
                f"tokens on 3 seeds (`{LONG_COMMAND}`); once its runs are on disk, this section shows them."
            ]
        )
    first = lh.iloc[0]
    steps, default = int(lh["steps"].max()), int(first["default_steps"])
    floor = (
        f"This horizon's own noise floor: {fmt(first['noise_floor_pct'], 2)}%, the largest |paired gap| of "
        f"`{first['null_method']}` at the end (per seed {first['null_gaps_end_pct']}), beside the margin "
        f"{fmt(first['margin_pct'], 2)}%."
        if pd.notna(first["noise_floor_pct"])
        else "This horizon has no noise floor: its null method (fp32) did not finish here."
    )
    out = head + [
        f"Each recipe trained {steps} steps, {steps / default:g}x the default profile's {default} (same batch "
        f"and sequence length, so {steps / default:g}x the tokens; the cosine schedule decays over the longer run), "
        f"paired by seed with `{REFERENCE}`. The gap is read at the evaluation nearest the default horizon (step "
        f"{int(first['horizon_step'])}) and at the end. At step {int(first['horizon_step'])} these runs' lr is "
        "still near its peak, while the default profile's has decayed to its end: the gap there is not the "
        "default profile's result, and a recipe can lead while the lr is high and trail once it decays. "
        f"Rules: verdict at the end: {first['verdict_rule']}; "
        f"{first['trend_rule']}. `unchanged_early` / `unchanged_late`: the share of FP8 weight codes a step left "
        f"as they were (fp8-naive's telemetry), mean over seeds, at the default horizon and at the end "
        f"(`results/{LONG_CSV}`).",
        "",
        floor,
        "",
        md_table(lh[LONG_VIEW], f"results/{LONG_CSV}"),
        "",
    ]
    out += [f"- {long_horizon_reading(r)}" for _, r in lh[lh["method"] != REFERENCE].iterrows()] + [""]
    if len(runs):
        out += [f"Per run (`results/{RUNS_CSV}`):", "", md_table(runs[LONG_RUN_VIEW], f"results/{RUNS_CSV}"), ""]
    out += _figure(fig_dir, report_dir, "long_horizon")
    out += lost_updates_part(results_dir, LONG_PROFILE)
    out += _figure(fig_dir, report_dir, "lost_updates_long")
    return "\n".join(out)


SUBSECTIONS: list[Subsection] = [
    frontier_subsection,
    *STRESS_SUBSECTIONS,
    long_horizon_subsection,
    lost_updates_subsection,
]


def stability_claims_readings(results_dir: str | Path) -> str:
    """The stability claims of results/claims.csv read in one line each: the verdict, how the recipes that decide
    the claim fail where they do (diverge, stall, or neither) with the numbers, and the recipes reported beside
    it with the second change they add. Empty where the table has no stability rows."""
    claims = _read(Path(results_dir) / "claims.csv")
    if claims.empty or "reading" not in claims:
        return ""
    rows = claims[claims["reading"].notna() | claims["decided_by"].notna()]
    if rows.empty:
        return ""
    out = [
        "How the recipes that decide each stability claim fail where they do (`results/claims.csv`: "
        "`decided_by`, `reading`, `beside`):",
        "",
    ]
    for r in rows.itertuples():
        line = f"- {r.claim}: **{r.verdict}**"
        if isinstance(r.decided_by, str) and r.decided_by:
            line += f" (decided by {r.decided_by})"
        if isinstance(r.reading, str) and r.reading:
            line += f". {r.reading}"
        if isinstance(r.beside, str) and r.beside:
            line += f". Beside, not deciding: {r.beside}"
        out.append(line + ".")
    return "\n".join(out)


def stability_section(results_dir: str | Path, fig_dir: str | Path, report_dir: str | Path) -> str:
    results_dir, fig_dir, report_dir = Path(results_dir), Path(fig_dir), Path(report_dir)
    parts = [p(results_dir, fig_dir, report_dir) for p in SUBSECTIONS]
    intro = (
        "The article warns that FP8 weights and gradients make pre-training unstable. A run that happens to "
        "survive one setting says little; this section pushes each recipe until it breaks."
    )
    return "\n\n".join(["## Where FP8 breaks", intro, *[p.strip() for p in parts if p and p.strip()]])
