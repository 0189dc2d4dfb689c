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
