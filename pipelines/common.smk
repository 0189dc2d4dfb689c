# Helpers shared by the rules. No lambdas in rules: every input/param function lives here.
import json
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from pipelines import config as fp8cfg
from pipelines.figures import FIGURES

validate(config, "config.schema.yaml")

PROFILE = config["profile"]
RESULTS = config["results_dir"]
try:
    RUNS = fp8cfg.runs(config, PROFILE)
    PSET = fp8cfg.profile_settings(config, PROFILE)
except fp8cfg.ConfigError as e:
    raise WorkflowError(str(e))
DATA_JSON = json.dumps(PSET["data"], sort_keys=True)
DATA_DIR = str(fp8cfg.resolve_run(config, PROFILE, RUNS[0][0], RUNS[0][1], RUNS[0][2])["data"]["dir"])
RUN_DIR = f"{RESULTS}/runs/{{profile}}/{{model}}/{{method}}/seed{{seed}}"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
REPORT_MD = "reports/REPORT.md"
FIGURE_PNGS = [f"reports/figures/{name}.png" for name in FIGURES]


wildcard_constraints:
    profile=r"[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_.\-]+",
    seed=r"\d+",


def run_summaries(wildcards=None):
    return [f"{RESULTS}/runs/{PROFILE}/{m}/{me}/seed{s}/summary.json" for m, me, s in RUNS]


def run_config(wildcards):
    """The resolved config of one run; a change to it reruns that run (params are a rerun trigger)."""
    return fp8cfg.resolve_run(config, wildcards.profile, wildcards.model, wildcards.method, int(wildcards.seed))


def run_threads(wildcards):
    """Cores one run occupies: torch threads per rank times ranks (ZeRO runs several ranks)."""
    from methods.registry import get_method

    return PSET["train"]["threads"] * get_method(wildcards.method).world_size
