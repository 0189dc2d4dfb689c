# Results tables, figures and the report, rebuilt from the run outputs alone.


rule collect:
    input:
        run_summaries,
    output:
        SUMMARY_CSV,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/collect.log",
    shell:
        "python -m pipelines.collect --out {output:q} {input:q} > {log:q} 2>&1"


rule figures:
    input:
        SUMMARY_CSV,
    output:
        report(FIGURE_PNGS, category="Figures"),
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/figures.log",
    shell:
        "python -m pipelines.figures --summary {input:q} --out reports/figures > {log:q} 2>&1"


rule report_md:
    input:
        summary=SUMMARY_CSV,
        figures=FIGURE_PNGS,
    output:
        REPORT_MD,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/report.log",
    shell:
        "python -m pipelines.report --summary {input.summary:q} --figures reports/figures --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        REPORT_MD,
        FIGURE_PNGS,
