# Results tables, figures and the report. `rule all` reaches them through the runs; `rule report`
# rebuilds them from the runs already on disk and never trains.


rule figure:
    input:
        summary=SUMMARY_CSV,
        tables=[
            EVAL_GAPS_CSV,
            f"{RESULTS}/comparison.csv",
            f"{RESULTS}/noise_floor.csv",
            MEMORY_TRACED_CSV,
            GPU_PREDICTED_CSV,
            *STABILITY_CSVS,
        ],
        caption="pipelines/report/captions/{name}.rst",
    output:
        png=report(
            "reports/figures/{name}.png",
            caption="../report/captions/figure.rst",
            category="Figures",
            subcategory=figure_subcategory,
        ),
        svg="reports/figures/{name}.svg",
    log:
        f"{RESULTS}/logs/figure_{{name}}.log",
    conda:
        CPU_ENV
    params:
        caption=figure_caption,
    shell:
        'python -m pipelines.report.figures --summary {input.summary:q} --out "$(dirname {output.png:q})" --only {wildcards.name} > {log:q} 2>&1'


rule report_md:
    input:
        tables=[
            SUMMARY_CSV,
            f"{RESULTS}/comparison.csv",
            f"{RESULTS}/noise_floor.csv",
            f"{RESULTS}/claims.csv",
            f"{RESULTS}/memory_model.csv",
            f"{RESULTS}/optim_ablation.csv",
            EVAL_GAPS_CSV,
            MEMORY_TRACED_CSV,
            MEMORY_FIT_CSV,
            MEMORY_TRACED_RANKS_CSV,
        ],
        figures=FIGURE_PNGS,
        bench=BENCH_CSVS,
        stability=STABILITY_CSVS,
    output:
        REPORT_MD,
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        CPU_ENV
    shell:
        'python -m pipelines.report.report_md --results "$(dirname {input.tables[0]:q})" --figures "$(dirname {input.figures[0]:q})" --out {output:q} > {log:q} 2>&1'


rule table:
    input:
        table_source,
    output:
        report(
            f"{TABLES_DIR}/{{table}}.html",
            caption="../report/captions/table.rst",
            category="Tables",
        ),
    log:
        f"{RESULTS}/logs/table_{{table}}.log",
    conda:
        CPU_ENV
    params:
        caption=table_caption,
        results=RESULTS,
    shell:
        'python -m pipelines.report.html_table --results {params.results:q} --out-dir "$(dirname {output:q})" {wildcards.table} > {log:q} 2>&1'


# The text `snakemake --report` opens on (`report:` in the Snakefile), written from the results.
rule landing:
    input:
        tables=[
            SUMMARY_CSV,
            f"{RESULTS}/comparison.csv",
            f"{RESULTS}/noise_floor.csv",
            f"{RESULTS}/claims.csv",
        ],
        forest="reports/figures/forest.png",
        reference=gpu_reference_files,
    output:
        LANDING_RST,
    log:
        f"{RESULTS}/logs/landing.log",
    conda:
        CPU_ENV
    params:
        tables=TABLE_NAMES,
        figures=list(FIGURES),
    shell:
        'python -m pipelines.report.landing --results "$(dirname {input.tables[0]:q})" --figures "$(dirname {input.forest:q})" '
        "--out {output:q} --tables {params.tables} --figure-names {params.figures} > {log:q} 2>&1"


# TensorBoard event files beside each run's metrics.jsonl, derived from it alone (one job: it takes ~1 s).
rule tensorboard:
    input:
        run_summaries,
    output:
        TB_EVENTS,
    log:
        f"{RESULTS}/logs/tensorboard.log",
    conda:
        CPU_ENV
    shell:
        "python -m pipelines.report.tensorboard_export {input:q} > {log:q} 2>&1"


rule report:
    log:
        f"{RESULTS}/logs/report_from_disk.log",
    localrule: True
    conda:
        CPU_ENV
    params:
        profile=PROFILE,
        results=RESULTS,
        tables=TABLE_NAMES,
        figures=list(FIGURES),
    shell:
        "(python -m pipelines.report.report_md --from-disk --profile {params.profile} --results {params.results:q}"
        " && python -m pipelines.report.html_table --results {params.results:q} {params.tables}"
        " && python -m pipelines.report.landing --results {params.results:q} --tables {params.tables} --figure-names {params.figures}"
        " && python -m pipelines.report.tensorboard_export {params.results:q}/runs/{params.profile}/*/*/*/summary.json) > {log:q} 2>&1"
