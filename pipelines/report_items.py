"""What the HTML report (``snakemake --report``) holds besides the landing text: the results tables and the
group each figure belongs to.

A table is one entry in ``TABLES``: its CSV (relative to the results folder), its caption, and, when the CSV
exists only in some profiles, those profiles. The workflow renders every table of the running profile to a
self-contained sortable HTML page (``pipelines/html_table.py``) and marks it for the report under
"Tables"; an entry whose profiles exclude the running one is left out, so a table that only some profiles
produce never breaks the report. Adding a table (e.g. ``results/memory_traced.csv`` or one of
``results/bench/*.csv``) is one entry here, once a rule produces the CSV.

Every figure of ``pipelines.figures.FIGURES`` has a group (``FIGURE_GROUPS``), the subcategory under which
the report lists it.
"""
from __future__ import annotations

from dataclasses import dataclass

TABLES_DIR = "reports/tables"
GROUPS = ("loss", "memory", "speed", "stability")


@dataclass(frozen=True)
class Table:
    source: str                           # CSV path relative to the results folder
    title: str
    caption: str                          # reStructuredText, shown in the report beside the table
    profiles: tuple[str, ...] | None = None  # None: every profile writes it


TABLES: dict[str, Table] = {
    "claims": Table(
        "claims.csv", "The seed's claims and their verdicts",
        "The seed's four claims, what was measured, on how many seeds, and the verdict with the rule it follows "
        "from (``results/claims.csv``). A claim never rests on fewer than ``analysis.min_seeds`` seeds."),
    "comparison": Table(
        "comparison.csv", "Per-method comparison against bf16-amp",
        "One row per method (``results/comparison.csv``): status, seeds, mean final val loss, the paired gap "
        "against bf16-amp at the same seed with its 95% Student-t interval, the verdict against the margin, "
        "median tokens/s and speedup, persistent bytes per parameter by component, peak memory."),
    "noise_floor": Table(
        "noise_floor.csv", "Noise floor",
        "The yardstick for every gap (``results/noise_floor.csv``): the largest absolute paired gap of fp32 against "
        "bf16-amp over the seeds, a change that should not matter, next to the margin and bf16-amp's own "
        "spread over seeds."),
    "memory_model": Table(
        "memory_model.csv", "Memory model at 10B parameters",
        "The analytic bytes per parameter of the seed's accounting, of every method and of reference recipes, "
        "scaled to 10B parameters, next to the bytes per parameter measured from live tensors in these runs "
        "(``results/memory_model.csv``)."),
    "memory_traced": Table(
        "memory_traced.csv", "Traced memory of one training step at full size",
        "One row per method, model and sequence length (``results/memory_traced.csv``): the peak of a real "
        "training step traced under fake tensors (methods/memory_trace.py), by component and phase, next to the "
        "analytic model's persistent bytes; methods that cannot be traced here say why."),
    "memory_traced_ranks": Table(
        "memory_traced_ranks.csv", "Traced memory of one rank of a sharded step",
        "The multi-rank methods, rank 0 of 8 in a fake process group under FSDPMemTracker "
        "(``results/memory_traced_ranks.csv``): FSDP2, ZeRO-2/3 through their FSDP2 stand-ins (``traced_as``), "
        "with DeepSpeed's own analytic estimate beside them; the others say why they are not traced."),
    "memory_fit": Table(
        "memory_fit.csv", "Largest micro-batch that fits a GPU",
        "Per method, model and device, the largest micro-batch whose traced peak fits the device's usable memory "
        "at the fit sequence length (``results/memory_fit.csv``)."),
    "optim_ablation": Table(
        "optim_ablation.csv", "FP8 optimizer-state formats (ablation)",
        "Paired gaps and optimizer-state telemetry of the FP8 and int8 optimizer variants "
        "(``results/optim_ablation.csv``)."),
    "summary": Table(
        "summary.csv", "All runs",
        "One row per run (``results/summary.csv``): status and reason, losses, paired gap, throughput, memory."),
}

FIGURE_GROUPS: dict[str, str] = {
    "forest": "loss",
    "loss_curves": "loss",
    "loss_gap": "loss",
    "lr_sweep": "loss",
    "memory": "memory",
    "memory_scaling": "memory",
    "throughput": "speed",
    "gpu_scaling": "speed",
    "divergence": "stability",
    "fp8_telemetry": "stability",
    "memory_traced": "memory",
    "activation_seq": "memory",
}


def tables_for(profile: str) -> list[str]:
    """The tables the given profile writes, in the order of ``TABLES``."""
    return [name for name, t in TABLES.items() if t.profiles is None or profile in t.profiles]


def figure_group(name: str) -> str:
    """The report subcategory of a figure; a figure without one is refused by name, so a new figure cannot
    land in the report ungrouped."""
    try:
        return FIGURE_GROUPS[name]
    except KeyError:
        raise KeyError(f"figure {name!r} has no group in pipelines/report_items.py FIGURE_GROUPS "
                       f"(one of: {', '.join(GROUPS)})") from None


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; registered in pipelines/report_items.py: {', '.join(TABLES)}") from None
