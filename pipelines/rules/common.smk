# Helpers shared by the rules. No lambdas in rules: every input/param function lives here.
import functools
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
    options = {
        **config.get("method_options", {}).get(base, {}),
        **PSET["variants"].get(name, {}).get("options", {}),
    }
    return get_method(base, **options)


def _check_runs_fit():
    """Refuse the workflow up front if a run cannot fit here (analytic memory model; pipelines/run/fits.py).
    Skipped for CUDA profiles on a machine without CUDA (e.g. a cluster's submit node).
    """
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
                check_fits(
                    m,
                    model,
                    get_model_config(model).with_vocab(PSET["data"]["vocab_size"]),
                    train,
                )
            except fp8cfg.ConfigError as e:
                raise WorkflowError(str(e))


_check_runs_fit()
DATA_JSON = json.dumps(PSET["data"], sort_keys=True)
DATA_DIR = str(
    fp8cfg.resolve_run(config, PROFILE, RUNS[0][0], RUNS[0][1], 0)["data"]["dir"]
)
RUN_DIR = f"{RESULTS}/runs/{{profile}}/{{model}}/{{method}}/{{run}}"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
EVAL_GAPS_CSV = f"{RESULTS}/eval_gaps.csv"
ANALYSIS_JSON = json.dumps(
    PSET["analysis"], sort_keys=True
)  # the experiment's, with the profile's overrides
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
    return [
        f"{RESULTS}/runs/{PROFILE}/{m}/{me}/{rid}/summary.json" for m, me, rid in runs
    ]


# Adaptive seeds (analysis.max_seeds; pipelines/analysis/seed_plan.py): round r's runs come from the plan the
# checkpoint `seed_plan` writes after the rounds before it; none when adaptive seeds are off.
from pipelines.analysis import seed_plan as fp8seeds

SEED_SETTINGS = {
    "seeds": PSET["seeds"],
    "seeds_for": PSET["seeds_for"],
    "methods": PSET["methods"],
}
SEED_ROUNDS = fp8seeds.rounds(
    **SEED_SETTINGS, an=fp8seeds.Analysis.from_config(PSET["analysis"])
)
SEED_SETTINGS_JSON = json.dumps(SEED_SETTINGS, sort_keys=True)


def runs_through(last_round):
    """The profile's runs and those the plans of rounds 1..last_round add (each plan read once it exists)."""
    runs = list(RUNS)
    for r in range(1, last_round + 1):
        added = fp8seeds.plan_runs(
            checkpoints.seed_plan.get(round=r).output[0], PSET["models"]
        )
        if (
            not added
        ):  # nothing left inconclusive: later rounds would add nothing either
            break
        runs += added
    return runs


def run_summaries(wildcards=None):
    """Every run's summary.json: the profile's runs, and with adaptive seeds every round's."""
    return summaries_of(runs_through(SEED_ROUNDS))


def plan_inputs(wildcards):
    """What round r's plan is decided on: the runs of the rounds before it."""
    return summaries_of(runs_through(int(wildcards.round) - 1))


@functools.lru_cache(maxsize=None)
def _resolved_run(profile, model, method, run):
    seed, lr = fp8cfg.parse_run_id(run)
    return json.dumps(
        fp8cfg.resolve_run(config, profile, model, method, seed, lr=lr), sort_keys=True
    )


def run_config(wildcards):
    """The resolved config of one run; a change to it reruns that run (params are a rerun trigger)."""
    return json.loads(
        _resolved_run(
            wildcards.profile, wildcards.model, wildcards.method, wildcards.run
        )
    )


def figure_caption(wildcards):
    """The caption of one figure (pipelines/report/captions/<name>.rst), shown in the HTML report."""
    return FIGURES[wildcards.name][1]


# Where jobs run and what they ask for (docs/cluster.md). The same DAG runs on this machine (--cores), on one
# multi-GPU node (a `gpu` total, one device per run: pipelines/run/launch/devices.py) and on SLURM
# (pipelines/profiles/slurm: every rule below that is not a localrule states threads, mem_mb and runtime).
from pipelines.run.launch import devices as fp8devices
from pipelines.run.fits import host_mem_mb

JOBS = PSET["jobs"]
# The conda environment of the training runs under --use-conda: CUDA torch and TransformerEngine where the
# profile trains on CUDA, else the pinned CPU one (every other rule: the CPU one; they need no GPU).
CPU_ENV = "../../environment.yml"
TRAIN_ENV = (
    "../../environment-gpu.yml" if PSET["train"]["device"] == "cuda" else CPU_ENV
)


def on_cluster():
    """Whether the jobs go to a cluster's scheduler (or this is one of its jobs) rather than run on this
    machine. Known once the DAG is built (in rule functions), not while the Snakefile is read.
    """
    return not workflow.local_exec or fp8devices.under_slurm()


def _gpu_total():
    """This machine's GPUs (pipelines/run/launch/devices.py: FP8BENCH_GPUS, else CUDA_VISIBLE_DEVICES, else
    nvidia-smi) when the jobs run here, and then the workflow's `gpu` total: no more GPU runs start at once than
    there are GPUs (`--resources gpu=N` wins). It must be set while the Snakefile is read, before the scheduler exists;
    `workflow.nodes` (a number of cluster jobs) is set exactly when the jobs go elsewhere, or in a dry run
    with --jobs; inside a SLURM job the scheduler has assigned the GPUs already."""
    if workflow.nodes is not None or fp8devices.under_slurm():
        return []
    pool = fp8devices.pool()
    if pool and "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", len(pool))
    return pool


LOCAL_GPUS = _gpu_total()


def _run_shape(wildcards):
    """(ranks, nodes, whether it trains on a GPU) of one run. `auto` is a GPU where the machine that plans
    the jobs has one (locally); on a cluster name the device (`cuda`), the submit node cannot tell.
    """
    m = run_method(wildcards.method)
    device = run_config(wildcards)["train"]["device"]
    gpu = device == "cuda" or (
        device == "auto" and not on_cluster() and bool(LOCAL_GPUS)
    )
    # a multi-rank method's `nodes` option (pipelines/run/launch/nodes.py starts one torchrun per node)
    return m.world_size, int(getattr(m, "nodes", 1) or 1), gpu


def ranks_here(wildcards):
    """Ranks of one run on one machine: all of them locally, one node's share on a cluster."""
    ranks, nodes, _gpu = _run_shape(wildcards)
    return -(-ranks // nodes) if on_cluster() else ranks


def run_threads(wildcards):
    """Cores one run occupies on a machine: torch threads per rank times its ranks there (ZeRO, DDP, FSDP2 run
    several ranks). On a cluster this is per node (sbatch --cpus-per-task of each node's one task).
    """
    return run_config(wildcards)["train"]["threads"] * ranks_here(wildcards)


def run_gpus(wildcards):
    """GPUs one run holds: one per rank when it trains on a GPU, none otherwise. Locally this counts against
    the `gpu` total (_gpu_total). On a cluster a run over several nodes asks per node instead (run_gres).
    """
    ranks, nodes, gpu = _run_shape(wildcards)
    if not gpu:
        return 0
    if not on_cluster():
        return ranks
    return ranks if nodes == 1 else 0


def run_gres(wildcards):
    """On a cluster, a GPU run over several nodes: its GPUs per node (sbatch --gres=gpu:N); else none."""
    _ranks, nodes, gpu = _run_shape(wildcards)
    return (
        f"gpu:{ranks_here(wildcards)}" if gpu and nodes > 1 and on_cluster() else None
    )


def run_nodes(wildcards):
    """Nodes of one run (1 keeps a single-node run's GPUs on one node)."""
    return _run_shape(wildcards)[1]


def run_tasks(wildcards):
    """A run over several nodes is one task per node (its torchrun); with `mpi` set the job-step executor
    runs the command in the job itself, which then starts its nodes with srun. None: a plain job.
    """
    nodes = run_nodes(wildcards)
    return nodes if nodes > 1 else None


def run_mpi(wildcards):
    """Set for a run over several nodes (its value names the launcher; the training command calls it)."""
    return "srun" if run_nodes(wildcards) > 1 else None


def run_tasks_per_gpu(wildcards):
    """0 keeps the SLURM executor from turning `tasks` into --ntasks-per-gpu for a multi-node GPU run."""
    return 0 if run_gres(wildcards) else None


def run_mem_mb(wildcards):
    """Host memory of one run per node (pipelines/run/fits.py host_mem_mb, jobs.train.process_mb)."""
    from models.config import get_model_config

    train = run_config(wildcards)["train"]
    cfg = get_model_config(wildcards.model).with_vocab(PSET["data"]["vocab_size"])
    return host_mem_mb(
        run_method(wildcards.method),
        cfg,
        train,
        ranks_here(wildcards),
        JOBS["train"]["process_mb"],
    )


def bench_threads(wildcards):
    """A timing job's cores. Locally every core Snakemake was given, so that no other job starts beside it;
    on a cluster the job has its node to itself (the slurm profile's --exclusive) and asks for the timed
    process's threads (there is no total of cores there)."""
    return BENCH["threads"] if on_cluster() else workflow.cores


# Traced memory (pipelines/analysis/memory_traced.py): one job per (model, seq_len) of the profile's grid, then a merge.
MEMORY_TRACE = PSET["memory_trace"]
MEMORY_TRACE_JSON = json.dumps(MEMORY_TRACE, sort_keys=True)
MEMORY_TRACED_CSV = f"{RESULTS}/memory_traced.csv"
MEMORY_FIT_CSV = f"{RESULTS}/memory_fit.csv"


TRACE_PART_CSVS = [f"{RESULTS}/memory_traced/{m}.csv" for m in MEMORY_TRACE["models"]]
# the multi-rank methods, rank 0 of MEMORY_TRACE["ranks"] (0: none traced, the table lists them untraced)
TRACE_RANKS = MEMORY_TRACE.get("ranks", 0)
MEMORY_TRACED_RANKS_CSV = f"{RESULTS}/memory_traced_ranks.csv"
TRACE_RANK_PART_CSVS = (
    [f"{RESULTS}/memory_traced_ranks/{m}.csv" for m in MEMORY_TRACE["models"]]
    if TRACE_RANKS
    else []
)
TRACE_SEQ_ARG = " ".join(str(s) for s in MEMORY_TRACE["seq_lens"])
TRACE_METHODS_ARG = (
    ""
    if MEMORY_TRACE["methods"] == "all"
    else "--methods " + " ".join(MEMORY_TRACE["methods"])
)
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
BENCH_CSVS = ([BENCH_FP8_CSV, BENCH_OPTIM_CSV] if BENCH["enabled"] else []) + [
    GPU_PREDICTED_CSV,
    GPU_INPUTS_CSV,
    GPU_ANCHORS_CSV,
]
TABLE_NAMES = tables_for(PROFILE, bench=BENCH["enabled"])
TABLE_HTMLS = [f"{TABLES_DIR}/{name}.html" for name in TABLE_NAMES]
LANDING_RST = "reports/landing.rst"
TB_EVENTS = [
    f"{RESULTS}/runs/{PROFILE}/{m}/{me}/{rid}/{EVENTS_NAME}" for m, me, rid in RUNS
]


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
