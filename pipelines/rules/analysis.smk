# From the runs on disk to tables (pipelines/analysis/): the summary, the per-method comparison with the
# noise floor and the claims, the traced-memory tables, the learning-rate frontier, the long horizon and
# the stress tables (the last three before the claims, which read them).


# The stability tables (rules frontier, long_horizon, stress_tables below); the claims (rule compare) read them.
FRONTIER_CSV = f"{RESULTS}/frontier.csv"
FRONTIER_CELLS_CSV = f"{RESULTS}/frontier_cells.csv"
FRONTIER_SEEDS_CSV = f"{RESULTS}/frontier_seeds.csv"
FRONTIER_CSVS = [FRONTIER_CSV, FRONTIER_CELLS_CSV, FRONTIER_SEEDS_CSV]
LONG_HORIZON_CSV = f"{RESULTS}/long_horizon.csv"
LONG_HORIZON_RUNS_CSV = f"{RESULTS}/long_horizon_runs.csv"
LONG_HORIZON_CURVE_CSV = f"{RESULTS}/long_horizon_curve.csv"
LOST_UPDATES_CSV = f"{RESULTS}/lost_updates.csv"
STABILITY_CSVS = [
    *FRONTIER_CSVS,
    LONG_HORIZON_CSV,
    LONG_HORIZON_RUNS_CSV,
    LONG_HORIZON_CURVE_CSV,
    LOST_UPDATES_CSV,
]
STRESS_CSVS = [
    f"{RESULTS}/stress_{name}.csv"
    for name in ("ladder", "outliers", "norm_gains", "second_moment")
]
STABILITY_CSVS += STRESS_CSVS


# Adaptive seeds: round r's plan (which inconclusive methods get which seeds) from the runs before it.
checkpoint seed_plan:
    input:
        plan_inputs,
    output:
        f"{RESULTS}/seed_plan/round{{round}}.json",
    log:
        f"{RESULTS}/logs/seed_plan_round{{round}}.log",
    conda:
        "../../environment.yml"
    params:
        settings=SEED_SETTINGS_JSON,
        analysis=ANALYSIS_JSON,
    shell:
        "python -m pipelines.analysis.seed_plan --round {wildcards.round} --settings {params.settings:q} "
        "--analysis {params.analysis:q} --out {output:q} {input:q} > {log:q} 2>&1"


rule collect:
    input:
        run_summaries,
    output:
        summary=SUMMARY_CSV,
        eval_gaps=EVAL_GAPS_CSV,
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        CPU_ENV
    shell:
        "python -m pipelines.analysis.collect --out {output.summary:q} {input:q} > {log:q} 2>&1"


rule compare:
    input:
        summary=SUMMARY_CSV,
        traced=MEMORY_TRACED_CSV,
        # the stability claims: the frontier, the long horizon and the outlier injection
        stability=[FRONTIER_CSV, LONG_HORIZON_CSV, STRESS_CSVS[1]],
    output:
        comparison=f"{RESULTS}/comparison.csv",
        comparison_md=f"{RESULTS}/comparison.md",
        noise_floor=f"{RESULTS}/noise_floor.csv",
        claims=f"{RESULTS}/claims.csv",
        memory=f"{RESULTS}/memory_model.csv",
        optim_ablation=f"{RESULTS}/optim_ablation.csv",
    log:
        f"{RESULTS}/logs/compare.log",
    conda:
        CPU_ENV
    params:
        analysis=ANALYSIS_JSON,
    shell:
        'python -m pipelines.analysis.comparison --summary {input.summary:q} --out-dir "$(dirname {output.comparison:q})" '
        "--analysis {params.analysis:q} --traced {input.traced:q} > {log:q} 2>&1"


rule memory_traced:
    input:
        parts=TRACE_PART_CSVS,
        rank_parts=TRACE_RANK_PART_CSVS,
    output:
        traced=MEMORY_TRACED_CSV,
        fit=MEMORY_FIT_CSV,
        ranks=MEMORY_TRACED_RANKS_CSV,
    log:
        f"{RESULTS}/logs/memory_traced.log",
    conda:
        CPU_ENV
    params:
        settings=MEMORY_TRACE_JSON,
    shell:
        "python -m pipelines.analysis.memory_traced merge --out {output.traced:q} --fit {output.fit:q} "
        "--ranks-out {output.ranks:q} --rank-parts {input.rank_parts:q} "
        "--settings {params.settings:q} {input.parts:q} > {log:q} 2>&1"


# Where FP8 breaks: the learning-rate frontier from the summary (pipelines/analysis/frontier.py). It runs in every
# profile; where the summary holds no recipe over a grid of lrs it falls back to the stability profile's
# runs on disk, else writes the CSVs with headers only (the report then names the profile to run).


rule frontier:
    input:
        summary=SUMMARY_CSV,
    output:
        frontier=FRONTIER_CSV,
        cells=FRONTIER_CELLS_CSV,
        seeds=FRONTIER_SEEDS_CSV,
    log:
        f"{RESULTS}/logs/frontier.log",
    conda:
        CPU_ENV
    params:
        analysis=ANALYSIS_JSON,
    shell:
        'python -m pipelines.analysis.frontier --summary {input.summary:q} --results "$(dirname {output.frontier:q})" '
        "--analysis {params.analysis:q} > {log:q} 2>&1"


# Long horizon (pipelines/analysis/long_horizon.py): the long_horizon profile's runs on disk (any profile's report
# shows them once they ran), per recipe the paired gap at the default horizon and at the end with intervals, the
# verdict at the end against this horizon's own noise floor (fp32) and the trend; and, from these runs and the
# summary's, the lost-update mechanism (pipelines/analysis/lost_updates.py); headers only if none.


rule long_horizon:
    input:
        summary=SUMMARY_CSV,
    output:
        table=LONG_HORIZON_CSV,
        runs=LONG_HORIZON_RUNS_CSV,
        curve=LONG_HORIZON_CURVE_CSV,
        lost_updates=LOST_UPDATES_CSV,
    log:
        f"{RESULTS}/logs/long_horizon.log",
    conda:
        CPU_ENV
    params:
        analysis=ANALYSIS_JSON,
    shell:
        'python -m pipelines.analysis.long_horizon --results "$(dirname {output.table:q})" --analysis {params.analysis:q} '
        "--summary {input.summary:q} > {log:q} 2>&1"


# Stress tests (pipelines/analysis/stress_tables.py): the precision ladder, outlier injection, quantized norm gains and
# the FP8 second moment, from the summary (or the stability / stress runs on disk); headers only if none ran.


rule stress_tables:
    input:
        summary=SUMMARY_CSV,
    output:
        ladder=STRESS_CSVS[0],
        outliers=STRESS_CSVS[1],
        norm_gains=STRESS_CSVS[2],
        second_moment=STRESS_CSVS[3],
    log:
        f"{RESULTS}/logs/stress_tables.log",
    conda:
        CPU_ENV
    shell:
        'python -m pipelines.analysis.stress_tables --results "$(dirname {output.ladder:q})" > {log:q} 2>&1'
