# Helpers shared by the rules. No lambdas in rules: every input/param function lives here.
import json
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from pipelines.run import config as fp8cfg
from pipelines.run import validate as fp8validate
from pipelines.report.figures import FIGURES

validate(config, "../schemas/config.schema.yaml")

PROFILE = config["profile"]
RESULTS = config["results_dir"]
try:
    RUNS = fp8cfg.runs(config, PROFILE)
    PSET = fp8cfg.profile_settings(config, PROFILE)
    # every run resolved and held to the rules `python -m pipelines.train` applies, before the DAG exists
    fp8validate.check_profile(config, PROFILE)
except fp8cfg.ConfigError as e:
    raise WorkflowError(str(e))


def base_method(name):
    """The registered method behind a run name (a profile's variant or the method itself)."""
    return PSET["variants"].get(name, {}).get("method", name)


def run_method(name):
    """The method a run uses, with its options (the experiment's method_options, then the variant's), so
    that e.g. a `ranks` option sizes the job as it sizes the run."""
    from methods.registry import get_method

    base = base_method(name)
    options = {**config.get("method_options", {}).get(base, {}), **PSET["variants"].get(name, {}).get("options", {})}
    return get_method(base, **options)


def _check_runs_fit():
    """Refuse the workflow up front if a run cannot fit here (analytic memory model; pipelines/run/fits.py).
    Skipped for CUDA profiles on a machine without CUDA (e.g. a cluster's submit node)."""
    import torch

    from models.config import get_model_config
    from pipelines.run.fits import check_fits

    train = PSET["train"]
    if train["device"] == "cuda" and not torch.cuda.is_available():
        return
    for model, method, rid in RUNS:
        m = run_method(method)
        if not m.unmet():
            try:
                check_fits(m, model, get_model_config(model).with_vocab(PSET["data"]["vocab_size"]), train)
            except fp8cfg.ConfigError as e:
                raise WorkflowError(str(e))


_check_runs_fit()
DATA_JSON = json.dumps(PSET["data"], sort_keys=True)
DATA_DIR = str(fp8cfg.resolve_run(config, PROFILE, RUNS[0][0], RUNS[0][1], 0)["data"]["dir"])
RUN_DIR = f"{RESULTS}/runs/{{profile}}/{{model}}/{{method}}/{{run}}"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
EVAL_GAPS_CSV = f"{RESULTS}/eval_gaps.csv"
ANALYSIS_JSON = json.dumps(PSET["analysis"], sort_keys=True)  # the experiment's, with the profile's overrides
REPORT_MD = "reports/REPORT.md"
FIGURE_PNGS = [f"reports/figures/{name}.png" for name in FIGURES]


wildcard_constraints:
    profile=r"[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_.\-]+",
    run=r"seed\d+(_lr[0-9.e+-]+)?",
    round=r"\d+",
    name="|".join(FIGURES),


def summaries_of(runs):
    return [f"{RESULTS}/runs/{PROFILE}/{m}/{me}/{rid}/summary.json" for m, me, rid in runs]


# Adaptive seeds (analysis.max_seeds; pipelines/analysis/seed_plan.py): round r's runs come from the plan the
# checkpoint `seed_plan` writes after the rounds before it; none when adaptive seeds are off.
from pipelines.analysis import seed_plan as fp8seeds

SEED_SETTINGS = {"seeds": PSET["seeds"], "seeds_for": PSET["seeds_for"], "methods": PSET["methods"]}
SEED_ROUNDS = fp8seeds.rounds(**SEED_SETTINGS, an=fp8seeds.Analysis.from_config(PSET["analysis"]))
SEED_SETTINGS_JSON = json.dumps(SEED_SETTINGS, sort_keys=True)


def runs_through(last_round):
    """The profile's runs and those the plans of rounds 1..last_round add (each plan read once it exists)."""
    runs = list(RUNS)
    for r in range(1, last_round + 1):
        added = fp8seeds.plan_runs(checkpoints.seed_plan.get(round=r).output[0], PSET["models"])
        if not added:  # nothing left inconclusive: later rounds would add nothing either
            break
        runs += added
    return runs


def run_summaries(wildcards=None):
    """Every run's summary.json: the profile's runs, and with adaptive seeds every round's."""
    return summaries_of(runs_through(SEED_ROUNDS))


def plan_inputs(wildcards):
    """What round r's plan is decided on: the runs of the rounds before it."""
    return summaries_of(runs_through(int(wildcards.round) - 1))


def run_config(wildcards):
    """The resolved config of one run; a change to it reruns that run (params are a rerun trigger)."""
    seed, lr = fp8cfg.parse_run_id(wildcards.run)
    return fp8cfg.resolve_run(config, wildcards.profile, wildcards.model, wildcards.method, seed, lr=lr)


def run_threads(wildcards):
    """Cores one run occupies: torch threads per rank times ranks (ZeRO, DDP, FSDP2 run several ranks)."""
    return PSET["train"]["threads"] * run_method(wildcards.method).world_size


def figure_caption(wildcards):
    """The caption of one figure (pipelines/report/captions/<name>.rst), shown in the HTML report."""
    return FIGURES[wildcards.name][1]


def run_gpus(wildcards):
    """GPUs one run needs: one per rank when the profile trains on CUDA, none otherwise."""
    if PSET["train"]["device"] == "cpu":
        return 0
    return run_method(wildcards.method).world_size



# Traced memory (pipelines/analysis/memory_traced.py): one job per (model, seq_len) of the profile's grid, then a merge.
MEMORY_TRACE = PSET["memory_trace"]
MEMORY_TRACE_JSON = json.dumps(MEMORY_TRACE, sort_keys=True)
MEMORY_TRACED_CSV = f"{RESULTS}/memory_traced.csv"
MEMORY_FIT_CSV = f"{RESULTS}/memory_fit.csv"


TRACE_PART_CSVS = [f"{RESULTS}/memory_traced/{m}.csv" for m in MEMORY_TRACE["models"]]
# the multi-rank methods, rank 0 of MEMORY_TRACE["ranks"] (0: none traced, the table lists them untraced)
TRACE_RANKS = MEMORY_TRACE.get("ranks", 0)
MEMORY_TRACED_RANKS_CSV = f"{RESULTS}/memory_traced_ranks.csv"
TRACE_RANK_PART_CSVS = [f"{RESULTS}/memory_traced_ranks/{m}.csv" for m in MEMORY_TRACE["models"]] if TRACE_RANKS else []
TRACE_SEQ_ARG = " ".join(str(s) for s in MEMORY_TRACE["seq_lens"])
TRACE_METHODS_ARG = "" if MEMORY_TRACE["methods"] == "all" else "--methods " + " ".join(MEMORY_TRACE["methods"])
TRACE_VARIANTS_JSON = json.dumps(MEMORY_TRACE.get("variants", {}), sort_keys=True)


# The HTML report's items besides the figures (pipelines/report/items.py) and the runs' TensorBoard files.
from pipelines.report.items import TABLES_DIR, figure_group, table, tables_for
from pipelines.report.tensorboard_export import EVENTS_NAME

# Benchmarks (pipelines/rules/bench.smk): the CPU timings where the profile enables them, the GPU prediction always.
BENCH = PSET["bench"]
BENCH_FP8_CSV = f"{RESULTS}/bench/fp8_linear.csv"
BENCH_OPTIM_CSV = f"{RESULTS}/bench/optim.csv"
GPU_PREDICTED_CSV = f"{RESULTS}/bench/gpu_predicted.csv"
GPU_INPUTS_CSV = f"{RESULTS}/bench/gpu_cost_inputs.csv"
GPU_ANCHORS_CSV = f"{RESULTS}/bench/gpu_anchors.csv"
BENCH_CSVS = ([BENCH_FP8_CSV, BENCH_OPTIM_CSV] if BENCH["enabled"] else []) + [GPU_PREDICTED_CSV, GPU_INPUTS_CSV,
                                                                              GPU_ANCHORS_CSV]
TABLE_NAMES = tables_for(PROFILE, bench=BENCH["enabled"])
TABLE_HTMLS = [f"{TABLES_DIR}/{name}.html" for name in TABLE_NAMES]
LANDING_RST = "reports/landing.rst"
TB_EVENTS = [f"{RESULTS}/runs/{PROFILE}/{m}/{me}/{rid}/{EVENTS_NAME}" for m, me, rid in RUNS]


wildcard_constraints:
    table="|".join(TABLE_NAMES),


def table_source(wildcards):
    """The CSV a table item is rendered from."""
    return f"{RESULTS}/{table(wildcards.table).source}"


def table_caption(wildcards):
    return table(wildcards.table).caption


def gpu_reference_files(wildcards=None):
    """The committed GPU reference the landing text describes, where it exists (a new one reruns the rule)."""
    from pipelines.report.landing import GPU_REFERENCE

    return sorted(str(p) for p in Path(GPU_REFERENCE).glob("*") if p.is_file())


def figure_subcategory(wildcards):
    """The report group of a figure (loss, memory, speed, stability)."""
    return figure_group(wildcards.name)
