# fp8bench: identical LLM pre-training runs under many precision recipes.
#   snakemake --cores all                         # the default profile (cpu)
#   snakemake --cores all --config profile=smoke  # quick look
#   snakemake --cores 1 report                    # rebuild tables, figures, REPORT.md from results on disk
from snakemake.utils import min_version

min_version("9.0")


configfile: "pipelines/config.yaml"


# `snakemake --report` opens on this text: claims, verdicts, headline figure, noise floor (rule landing).
report: "reports/landing.rst"


include: "pipelines/rules/common.smk"
include: "pipelines/rules/run.smk"
include: "pipelines/rules/memory.smk"
include: "pipelines/rules/bench.smk"
include: "pipelines/rules/analysis.smk"
include: "pipelines/rules/report.smk"


# On a cluster (pipelines/profiles/slurm) only data preparation and training are jobs; the rest is light.
localrules:
    all,
    run_config,
    collect,
    compare,
    memory_traced,
    figure,
    report_md,
    report,
    table,
    landing,
    tensorboard,
    gpu_predicted,
    frontier,
    seed_plan,
    long_horizon,
    stress_tables,


rule all:
    default_target: True
    input:
        SUMMARY_CSV,
        f"{RESULTS}/comparison.md",
        REPORT_MD,
        FIGURE_PNGS,
        TABLE_HTMLS,
        LANDING_RST,
        TB_EVENTS,
        BENCH_CSVS,
        STABILITY_CSVS,
