"""What the HTML report (``snakemake --report``) holds besides the landing text: the results tables and the
group each figure belongs to.

A table is one entry in ``TABLES``: its CSV (relative to the results folder), its caption, and, when the CSV
exists only in some profiles, those profiles. The workflow renders every table of the running profile to a
self-contained sortable HTML page (``pipelines/report/html_table.py``) and marks it for the report under
"Tables"; an entry whose profiles exclude the running one is left out, so a table that only some profiles
produce never breaks the report. Adding a table (e.g. ``results/memory_traced.csv`` or one of
``results/bench/*.csv``) is one entry here, once a rule produces the CSV.

Every figure of ``pipelines.report.figures.FIGURES`` has a group (``FIGURE_GROUPS``), the subcategory under which
the report lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLES_DIR = "reports/tables"
GROUPS = ("loss", "memory", "speed", "stability")


@dataclass(frozen=True)
class Table:
    source: str  # CSV path relative to the results folder
    title: str
    caption: str  # reStructuredText, shown in the report beside the table
    profiles: tuple[str, ...] | None = None  # None: every profile writes it
    bench: bool = False  # written only where the profile runs the CPU benchmarks (config `bench`)


TABLES: dict[str, Table] = {
    "claims": Table(
        "claims.csv",
        "The article's claims and their verdicts",
        "The article's claims, what was measured, on how many seeds, and the verdict with the rule it follows "
        "from (``results/claims.csv``); the stability claims name the recipes that decide them, those reported "
        "beside them and how they fail (diverge, stall, or neither). A claim never rests on fewer than "
        "``analysis.min_seeds`` seeds.",
    ),
    "comparison": Table(
        "comparison.csv",
        "Per-method comparison against bf16-amp",
        "One row per method (``results/comparison.csv``): status, seeds, mean final val loss, the paired gap "
        "against bf16-amp at the same seed with its 95% Student-t interval, the verdict against the margin, "
        "median tokens/s and speedup, persistent bytes per parameter by component, peak memory.",
    ),
    "noise_floor": Table(
        "noise_floor.csv",
        "Noise floor",
        "The yardstick for every gap (``results/noise_floor.csv``): the largest absolute paired gap of fp32 against "
        "bf16-amp over the seeds, a change that should not matter, next to the margin and bf16-amp's own "
        "spread over seeds.",
    ),
    "memory_model": Table(
        "memory_model.csv",
        "Memory model at 10B parameters",
        "The analytic bytes per parameter of the article's accounting, of every method and of reference recipes, "
        "scaled to 10B parameters, next to the bytes per parameter measured from live tensors in these runs "
        "(``results/memory_model.csv``).",
    ),
    "memory_traced": Table(
        "memory_traced.csv",
        "Traced memory of one training step at full size",
        "One row per method, model and sequence length (``results/memory_traced.csv``): the peak of a real "
        "training step traced under fake tensors (methods/memory_trace.py), by component and phase, next to the "
        "analytic model's persistent bytes; methods that cannot be traced here say why.",
    ),
    "memory_traced_ranks": Table(
        "memory_traced_ranks.csv",
        "Traced memory of one rank of a sharded step",
        "The multi-rank methods, rank 0 of 8 in a fake process group under FSDPMemTracker "
        "(``results/memory_traced_ranks.csv``): FSDP2, ZeRO-2/3 through their FSDP2 stand-ins (``traced_as``), "
        "with DeepSpeed's own analytic estimate beside them; the others say why they are not traced.",
    ),
    "memory_fit": Table(
        "memory_fit.csv",
        "Largest micro-batch that fits a GPU",
        "Per method, model and device, the largest micro-batch whose traced peak fits the device's usable memory "
        "at the fit sequence length (``results/memory_fit.csv``).",
    ),
    "optim_ablation": Table(
        "optim_ablation.csv",
        "FP8 optimizer-state formats (ablation)",
        "Paired gaps and optimizer-state telemetry of the FP8 and int8 optimizer variants "
        "(``results/optim_ablation.csv``).",
    ),
    "bench_fp8_linear": Table(
        "bench/fp8_linear.csv",
        "CPU benchmark: own FP8 linear vs torchao tensorwise vs bf16",
        "The tiny model's training step and one block's seven projections (forward + backward) under "
        "fp8-own-tensorwise, torchao tensorwise float8 and bf16 autocast, interleaved in one process on the same "
        "weights and batch (``results/bench/fp8_linear.csv``, ``benchmarks/fp8_bench.py``); ratios within the run. "
        "CPU FP8 is emulated: these say how costly the emulation is, not how fast FP8 is on a GPU.",
        bench=True,
    ),
    "bench_optim": Table(
        "bench/optim.csv",
        "CPU benchmark: FP8 AdamW step and its roofline",
        "One optimizer step of own FP8 AdamW (fused), torchao AdamWFp8, the fp32-state AdamW of bf16-pure and "
        "torch's fused fp32 AdamW on the same parameters and gradients, interleaved in one process "
        "(``results/bench/optim.csv``, ``benchmarks/optim_bench.py``): bytes per parameter moved, GB/s, and the "
        "fraction of the copy bandwidth measured in the same process.",
        bench=True,
    ),
    "gpu_predicted": Table(
        "bench/gpu_predicted.csv",
        "Predicted FP8 speedup on a GPU (on paper)",
        "Not measured: a roofline per operation of one training step (``benchmarks/gpu_cost.py``) predicts the "
        "FP8 speedup over bf16 per model size, sequence length and scaling recipe "
        "(``results/bench/gpu_predicted.csv``); its inputs are in ``results/bench/gpu_cost_inputs.csv``.",
    ),
    "gpu_anchors": Table(
        "bench/gpu_anchors.csv",
        "Predicted speedup beside published anchors",
        "The cost model's prediction at each published anchor's own shape, device and parallelism, beside the "
        "speedup the source reports, and whether they agree (``results/bench/gpu_anchors.csv``).",
    ),
    "frontier": Table(
        "frontier.csv",
        "Learning-rate frontier per recipe",
        "Per recipe (``results/frontier.csv``): the divergence learning rate (the smallest grid lr at which a seed "
        "diverged) and how many grid steps it lies from bf16-amp's, paired by seed; the max within-margin learning "
        "rate; the lr sensitivity (Wortsman et al. 2023) and the seeds, with the rules; empty where no recipe ran "
        "over a grid of learning rates (the ``stability`` profile does). Per seed: ``results/frontier_seeds.csv``.",
    ),
    "lost_updates": Table(
        "lost_updates.csv",
        "Lost updates over training per recipe",
        "Per recipe whose weights live in a low-precision format (``results/lost_updates.csv``), paired by seed: the "
        "share of weight updates predicted lost (and measured unchanged) early and late in training, whether it "
        "grows as the lr decays, its rank correlation with the lr, whether the loss gap against bf16-amp tracks "
        "it, the lost updates' bias with and without stochastic rounding, and how far predicted and measured "
        "differ; the rules are in the ``rule`` column. Empty where no run was probed.",
    ),
    "summary": Table(
        "summary.csv",
        "All runs",
        "One row per run (``results/summary.csv``): status and reason, losses, paired gap, throughput, memory.",
    ),
}

FIGURE_GROUPS: dict[str, str] = {
    "forest": "loss",
    "loss_curves": "loss",
    "train_loss": "loss",
    "loss_gap": "loss",
    "lr_sweep": "loss",
    "memory": "memory",
    "memory_scaling": "memory",
    "throughput": "speed",
    "gpu_scaling": "speed",
    "divergence": "stability",
    "fp8_telemetry": "stability",
    "lost_updates": "stability",
    "lost_updates_long": "stability",
    "lr_frontier": "stability",
    "long_horizon": "stability",
    "stress_ladder": "stability",
    "stress_outliers": "stability",
    "memory_traced": "memory",
    "activation_seq": "memory",
}


def tables_for(profile: str, bench: bool | None = None) -> list[str]:
    """The tables the given profile writes, in the order of ``TABLES``. ``bench``: whether it runs the CPU
    benchmarks; None reads it from pipelines/config.yaml (the workflow passes its own, possibly overridden, value)."""
    if bench is None:
        from pipelines.run.config import bench_enabled

        bench = bench_enabled(profile)
    return [
        name for name, t in TABLES.items() if (t.profiles is None or profile in t.profiles) and (bench or not t.bench)
    ]


def figure_group(name: str) -> str:
    """The report subcategory of a figure; a figure without one is refused by name, so a new figure cannot
    land in the report ungrouped."""
    try:
        return FIGURE_GROUPS[name]
    except KeyError:
        raise KeyError(
            f"figure {name!r} has no group in pipelines/report/items.py FIGURE_GROUPS (one of: {', '.join(GROUPS)})"
        ) from None


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(
            f"unknown table {name!r}; registered in pipelines/report/items.py: {', '.join(TABLES)}"
        ) from None
