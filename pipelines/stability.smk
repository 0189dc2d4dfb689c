# Where FP8 breaks: the learning-rate frontier from the summary (pipelines/frontier.py). It runs in every
# profile; where the summary holds no recipe over a grid of lrs it falls back to the stability profile's
# runs on disk, else writes the CSVs with headers only (the report then names the profile to run).

FRONTIER_CSV = f"{RESULTS}/frontier.csv"
FRONTIER_CELLS_CSV = f"{RESULTS}/frontier_cells.csv"
FRONTIER_CSVS = [FRONTIER_CSV, FRONTIER_CELLS_CSV]


rule frontier:
    input:
        summary=SUMMARY_CSV,
    output:
        frontier=FRONTIER_CSV,
        cells=FRONTIER_CELLS_CSV,
    params:
        analysis=ANALYSIS_JSON,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/frontier.log",
    shell:
        'python -m pipelines.frontier --summary {input.summary:q} --results "$(dirname {output.frontier:q})" '
        "--analysis {params.analysis:q} > {log:q} 2>&1"


# Long horizon (pipelines/long_horizon.py): the long_horizon profile's runs on disk (any profile's report
# shows them once they ran), their paired gap at the default horizon and at the end; headers only if none.
LONG_HORIZON_CSV = f"{RESULTS}/long_horizon.csv"
LONG_HORIZON_CURVE_CSV = f"{RESULTS}/long_horizon_curve.csv"
STABILITY_CSVS = [*FRONTIER_CSVS, LONG_HORIZON_CSV, LONG_HORIZON_CURVE_CSV]


rule long_horizon:
    input:
        summary=SUMMARY_CSV,
        noise_floor=f"{RESULTS}/noise_floor.csv",
    output:
        table=LONG_HORIZON_CSV,
        curve=LONG_HORIZON_CURVE_CSV,
    params:
        analysis=ANALYSIS_JSON,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/long_horizon.log",
    shell:
        'python -m pipelines.long_horizon --results "$(dirname {output.table:q})" --analysis {params.analysis:q} '
        "> {log:q} 2>&1"


# Stress tests (pipelines/report_stress.py): the precision ladder, outlier injection, quantized norm gains and
# the FP8 second moment, from the summary (or the stability / stress runs on disk); headers only if none ran.
STRESS_CSVS = [f"{RESULTS}/stress_{name}.csv" for name in ("ladder", "outliers", "norm_gains", "second_moment")]
STABILITY_CSVS += STRESS_CSVS


rule stress_tables:
    input:
        summary=SUMMARY_CSV,
    output:
        ladder=STRESS_CSVS[0],
        outliers=STRESS_CSVS[1],
        norm_gains=STRESS_CSVS[2],
        second_moment=STRESS_CSVS[3],
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/stress_tables.log",
    shell:
        'python -m pipelines.report_stress --results "$(dirname {output.ladder:q})" > {log:q} 2>&1'
