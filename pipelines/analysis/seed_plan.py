"""Adaptive seeds (opt-in, ``analysis.max_seeds``): which methods get more seeds in the next round.

Three seeds decide a method's verdict only where its paired gaps are tight; on another corpus or regime they may
not be. With ``analysis.max_seeds`` set, the profile's own seeds are round 0; after each round, every judged
method (one the profile runs on at least ``analysis.min_seeds`` seeds) whose verdict is still ``inconclusive``
gets ``analysis.seed_batch`` more seeds, until its verdict is decided or it has ``max_seeds``. The reference
(``bf16-amp``) runs every seed any method runs, so each new seed is paired. Seeds of round r follow the
profile's largest seed: with seeds 0-2 and a batch of 2, round 1 runs seeds 3 and 4, round 2 seeds 5 and 6.

The workflow decides round r in a Snakemake checkpoint (rule ``seed_plan``) from the runs of the rounds before
it, then adds round r's runs; the comparison table's ``n_seeds`` is then the seeds each method needed.

    python -m pipelines.analysis.seed_plan --round 1 --settings JSON --analysis JSON --out plan.json SUMMARY...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common.atomic import write_json
from pipelines.analysis.stats import Analysis, base_verdict


def judged_methods(seeds: list[int], seeds_for: dict, methods: list[str], an: Analysis) -> list[str]:
    """The run names the profile judges: on at least ``an.min_seeds`` seeds of their own, the reference aside."""
    return [m for m in methods if m != an.reference and len(seeds_for.get(m, seeds)) >= an.min_seeds]


def base_seeds(seeds: list[int], seeds_for: dict, methods: list[str]) -> list[int]:
    """Every seed round 0 runs (any method)."""
    return sorted({s for m in methods for s in seeds_for.get(m, seeds)})


def round_seeds(base: list[int], r: int, batch: int) -> list[int]:
    """The seeds of adaptive round ``r`` >= 1: the next ``batch`` after the base seeds and earlier rounds."""
    start = max(base) + 1 + (r - 1) * batch
    return list(range(start, start + batch))


def rounds(seeds: list[int], seeds_for: dict, methods: list[str], an: Analysis) -> int:
    """How many adaptive rounds the profile may need: enough to bring its least-seeded judged method to
    ``max_seeds`` (0 when adaptive seeds are off or no method is judged)."""
    judged = judged_methods(seeds, seeds_for, methods, an)
    if an.max_seeds is None or not judged:
        return 0
    fewest = min(len(seeds_for.get(m, seeds)) for m in judged)
    return max(0, math.ceil((an.max_seeds - fewest) / an.seed_batch))


def plan(summary, r: int, seeds: list[int], seeds_for: dict, methods: list[str], an: Analysis) -> dict:
    """Round ``r``'s plan from the runs of rounds < r (``summary``: the tidy table of
    ``pipelines.analysis.collect``): per method still inconclusive, the seeds it runs now; the reference at
    their union. Verdicts as the comparison draws them (``pipelines.analysis.comparison.aggregate``)."""
    from pipelines.analysis.comparison import aggregate

    new = round_seeds(base_seeds(seeds, seeds_for, methods), r, an.seed_batch)
    judged = judged_methods(seeds, seeds_for, methods, an)
    agg = aggregate(summary, an) if len(summary) else None
    out: dict[str, list[int]] = {}
    why: dict[str, str] = {}
    for m in judged:
        rows = agg[agg["method"] == m] if agg is not None else []
        if len(rows) == 0:
            continue  # nothing finished: nothing to decide on (a failed method stays as it is)
        v, n = str(rows.iloc[0]["verdict"]), int(rows.iloc[0]["n_seeds"])
        if base_verdict(v) != "inconclusive":
            continue
        ran = set(summary[summary["method"] == m]["seed"].astype(int))
        room = an.max_seeds - len(ran)
        take = [s for s in new if s not in ran][: max(0, room)]
        if take:
            out[m] = take
            why[m] = f"{v} on {n} seeds"
    if out:
        out[an.reference] = sorted({s for v in out.values() for s in v})
    return {"round": r, "seeds": new, "methods": out, "why": why}


def plan_runs(path: str | Path, models: list[str]) -> list[tuple[str, str, str]]:
    """The (model, method, run id) a written plan adds, in the workflow's order."""
    from pipelines.run.config import run_id

    p = json.loads(Path(path).read_text())
    return [(model, m, run_id(s)) for model in models for m, ss in p["methods"].items() for s in ss]


def main(argv=None) -> int:
    from pipelines.analysis.collect import collect

    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.seed_plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="*", help="summary.json of every run of the rounds before this one")
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--settings", required=True, help='JSON {"seeds": [...], "seeds_for": {...}, "methods": [...]}')
    ap.add_argument("--analysis", required=True, help="the profile's analysis settings as JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    s = json.loads(args.settings)
    an = Analysis.from_config(json.loads(args.analysis))
    p = plan(collect(args.summaries), args.round, s["seeds"], s["seeds_for"], s["methods"], an)
    write_json(args.out, p)
    print(json.dumps(p, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
