"""REPORT.md's section on memory traced at full size (results/memory_traced.csv, results/memory_fit.csv)."""

from __future__ import annotations

import pandas as pd

GIB = 2**30
PEAK_PARTS = ["weights", "master", "grads", "optim", "meta", "activations", "temporaries", "other"]


def _gib(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        out[c] = out[c] / GIB
    return out


def traced_table(traced: pd.DataFrame, model: str, seq: int) -> pd.DataFrame:
    t = traced[(traced["model"] == model) & (traced["seq_len"] == seq) & (traced["status"] == "ok")]
    t = t.sort_values("peak_bytes", ascending=False)
    cols = {
        "persistent_bytes": "persistent_gib",
        "peak_bytes": "peak_gib",
        **{f"peak_{c}_bytes": f"{c}_at_peak_gib" for c in PEAK_PARTS},
        "act_peak_bytes": "activations_max_gib",
    }
    view = _gib(t, list(cols)).rename(columns=cols)
    return view[
        [
            "method",
            "persistent_gib",
            "persistent_vs_analytic_pct",
            "peak_gib",
            "peak_phase",
            *[f"{c}_at_peak_gib" for c in PEAK_PARTS],
            "activations_max_gib",
            "trace_s",
        ]
    ]


def fit_view(fit: pd.DataFrame) -> pd.DataFrame:
    if fit.empty:
        return fit
    f = fit.assign(col=fit["model"] + " · " + fit["device"])
    if "ranks" in f:  # a per-rank row: the micro-batch of each of its ranks, each on its own device
        ranks = f["ranks"].fillna(1).astype(int)
        f["method"] = f["method"].where(ranks <= 1, f["method"] + " (per rank of " + ranks.astype(str) + ")")
    order = list(dict.fromkeys(f["col"]))
    wide = f.pivot_table(index="method", columns="col", values="max_micro_batch", aggfunc="first")[order]
    return wide.sort_values(order[-1], ascending=False).reset_index().rename_axis(columns=None)


def saved_activations(traced: pd.DataFrame, model: str, seq: int, methods: list[str]) -> list[str]:
    t = traced[(traced["model"] == model) & (traced["seq_len"] == seq) & (traced["status"] == "ok")].set_index("method")
    if "bf16-amp" not in t.index:
        return []
    ref = float(t.loc["bf16-amp", "act_peak_bytes"])
    out = []
    for m in methods:
        if m in t.index:
            a = float(t.loc[m, "act_peak_bytes"])
            out.append(
                f"- `{m}`: {a / GIB:.1f} GiB of activations at most ({100 * (a - ref) / ref:+.0f}% against "
                f"bf16-amp's {ref / GIB:.1f} GiB)"
            )
    return out


RANK_PARTS = ["weights", "grads", "optim", "gathered", "activations", "temporaries"]


def rank_table(ranks: pd.DataFrame, model: str, seq: int) -> pd.DataFrame:
    t = ranks[(ranks["model"] == model) & (ranks["seq_len"] == seq) & (ranks["status"] == "ok")]
    t = t.sort_values(["peak_bytes", "method"], ascending=[False, True])
    cols = {
        "persistent_bytes": "persistent_gib",
        "method_analytic_bytes": "own_layout_analytic_gib",
        "deepspeed_estimate_bytes": "deepspeed_estimate_gib",
        "peak_bytes": "peak_gib",
        **{f"peak_{c}_bytes": f"{c}_at_peak_gib" for c in RANK_PARTS},
    }
    view = _gib(t, list(cols)).rename(columns=cols)
    return view[
        [
            "method",
            "traced_as",
            "persistent_gib",
            "own_layout_analytic_gib",
            "deepspeed_estimate_gib",
            "peak_gib",
            "peak_phase",
            *[f"{c}_at_peak_gib" for c in RANK_PARTS],
            "trace_s",
        ]
    ]


def rank_section(ranks: pd.DataFrame, md_table) -> list[str]:
    """The multi-rank methods, one rank traced (results/memory_traced_ranks.csv)."""
    if ranks.empty:
        return []
    ok = ranks[ranks["status"] == "ok"]
    bad = ranks[ranks["status"] != "ok"].drop_duplicates("method")
    n = int(ranks["ranks"].max())
    lines = [f"### Sharded methods: one rank of {n}", ""]
    if not ok.empty:
        big = ok.sort_values("n_params").iloc[-1]
        model, seq = big["model"], int(ok[ok["model"] == big["model"]]["seq_len"].max())
        lines += [
            f"Rank 0 of {n} (one 8-GPU node) in a fake process group (`torch.testing._internal.distributed.fake_pg`: "
            "collectives allocate their buffers but communicate nothing) under PyTorch's `FSDPMemTracker`, "
            f"at {model}, micro-batch 1 per rank × seq {seq}. `gathered` is what a rank holds beyond its shards: "
            "FSDP2's all-gathered weights and its all-gather and reduce-scatter buffers. `deepspeed.initialize` does "
            "not run under fake tensors, so ZeRO-2 and ZeRO-3 are traced through an FSDP2 stand-in (`traced_as`): "
            "ZeRO-3 as FSDP2's full sharding, ZeRO-2 as FSDP2 keeping each block's gathered weights from its "
            "forward to its backward. The stand-in's layout differs from DeepSpeed's: FSDP2 shards fp32 weights "
            "and gathers bf16 ones; ZeRO-2 keeps its bf16 weights whole on every rank at all times "
            "(`own_layout_analytic_gib`, from `methods.memory` at this many ranks). `deepspeed_estimate_gib` is "
            "DeepSpeed's own analytic figure for one GPU's model states "
            "(`estimate_zero2/3_model_states_mem_needs`, no offload; analytic, not traced). Persistent state "
            "agrees with the analytic model of the configuration traced within "
            f"{ok['persistent_vs_analytic_pct'].abs().max():.3f}% in every one of {len(ok)} rows; "
            "tests/test_memory_trace.py checks a traced rank against a real one (real tensors in a fake process "
            "group) on the tiny model.",
            "",
            md_table(rank_table(ranks, model, seq), "results/memory_traced_ranks.csv"),
            "",
        ]
    if not bad.empty:
        lines += ["Not traced per rank, and why:", "", *[f"- `{r.method}`: {r.reason}" for r in bad.itertuples()], ""]
    return lines


def paired_option_cost(summary: pd.DataFrame, variant: str, base: str, confidence: float = 0.95):
    """The loss cost of an option: per seed, the variant's final validation loss against its base recipe's
    (100 (variant − base) / base, same seed, same batches), with a t interval over the seeds."""
    from pipelines.analysis.stats import paired_gap_pct, t_interval

    ok = summary[summary["status"] == "ok"]
    v = ok[ok["method"] == variant].set_index("seed")["final_val_loss"]
    b = ok[ok["method"] == base].set_index("seed")["final_val_loss"]
    seeds = sorted(set(v.index) & set(b.index))
    return t_interval([paired_gap_pct(float(v[s]), float(b[s])) for s in seeds], confidence), seeds


def coat_section(
    traced: pd.DataFrame,
    summary: pd.DataFrame | None,
    comp: pd.DataFrame | None,
    variant: str = "fp8-own-tensorwise-coat",
    base: str = "fp8-own-tensorwise",
) -> list[str]:
    """What keeping the non-linear layers' saved inputs in FP8 (COAT) saves at 7b, and costs in loss."""
    ok = traced[traced["status"] == "ok"] if not traced.empty else traced
    if ok.empty or variant not in set(ok["method"]):
        return []
    model = "7b" if (ok["model"] == "7b").any() else ok.sort_values("n_params").iloc[-1]["model"]
    seq = int(ok[ok["model"] == model]["seq_len"].max())
    t = ok[(ok["model"] == model) & (ok["seq_len"] == seq)].set_index("method")
    if base not in t.index:
        return []
    lines = [
        f"### FP8-saved non-linear inputs (COAT) at {model}, micro-batch 1 × seq {seq}",
        "",
        f"`{variant}` is `{base}` with option `fp8_saved_nonlinear`: every block's RMSNorm and SwiGLU keep "
        "their inputs for backward in E4M3 with one scale per 1 × 128 values (`methods/fp8/saved.py`) and "
        "recompute their backward from them.",
        "",
    ]
    for m in ("bf16-amp", base, variant):
        if m in t.index:
            a, bw = float(t.loc[m, "act_peak_bytes"]), float(t.loc[m, "peak_backward_bytes"])
            lines.append(
                f"- `{m}`: activations at most {a / GIB:.1f} GiB; backward peak {bw / GIB:.1f} GiB; "
                f"step peak {float(t.loc[m, 'peak_bytes']) / GIB:.1f} GiB ({t.loc[m, 'peak_phase']})"
            )
    a_b, a_v = float(t.loc[base, "act_peak_bytes"]), float(t.loc[variant, "act_peak_bytes"])
    lines.append(f"- saved by the option: {(a_b - a_v) / GIB:.1f} GiB of activations ({100 * (a_v - a_b) / a_b:+.0f}%)")
    row = (
        comp[comp["method"] == variant].iloc[0]
        if comp is not None and not comp.empty and variant in set(comp["method"])
        else None
    )
    # the yardstick beside every gap: the noise floor (max |fp32 gap| over seeds) and the margin
    yard = (
        f"; noise floor {row['noise_floor_pct']:.3f}%, margin ±{row['margin_pct']:.2f}%"
        if row is not None and {"noise_floor_pct", "margin_pct"} <= set(row.index)
        else ""
    )
    if summary is not None and not summary.empty:
        iv, seeds = paired_option_cost(summary, variant, base)
        if iv.n >= 2:
            lines.append(
                f"- its cost in loss (cpu runs, final validation loss against `{base}` paired by seed, "
                f"{iv.n} seeds {seeds}): {iv.mean:+.3f}% [95% CI {iv.lo:+.3f}, {iv.hi:+.3f}]{yard}"
            )
        else:
            lines.append(f"- its cost in loss: not measured ({iv.n} paired seed(s) of `{variant}` and `{base}`)")
    if row is not None:
        r = row
        ci = (
            f", gap {r['gap_mean_pct']:+.3f}% [95% CI {r['gap_ci_lo_pct']:+.3f}, {r['gap_ci_hi_pct']:+.3f}]"
            if {"gap_mean_pct", "gap_ci_lo_pct", "gap_ci_hi_pct"} <= set(r.index)
            else ""
        )
        lines.append(f"- against bf16-amp (the comparison table): verdict `{r.get('verdict', 'n/a')}`{ci}{yard}")
    return lines + [""]


def traced_section(
    traced: pd.DataFrame,
    fit: pd.DataFrame,
    md_table,
    ranks: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
    comp: pd.DataFrame | None = None,
) -> str:
    if traced.empty:
        return "## Memory traced at full size\n\nNo trace ran (results/memory_traced.csv is missing)."
    ok = traced[traced["status"] == "ok"]
    big = ok.sort_values("n_params").iloc[-1]
    model, seq = big["model"], int(ok[ok["model"] == big["model"]]["seq_len"].max())
    bad = traced[traced["status"] != "ok"].drop_duplicates("method")
    worst = ok["persistent_vs_analytic_pct"].abs().max()
    lines = [
        "## Memory traced at full size",
        "",
        "Every method's own training step on the full-size model (one step to make the optimizer state, then one per "
        "sequence length), under PyTorch's `FakeTensorMode` "
        "(shapes and storages, no data) inside `MemTracker`, which counts every storage the step creates and frees "
        "(`methods/memory_trace.py`; one method: `python -m methods.memory trace --model 10b --method fp8-e2e "
        "--batch-size 1 --seq-len 4096`). Where code takes a CPU shortcut on real tensors, the trace takes the "
        "device path, so this is the step a GPU would run; the CUDA context, library workspaces and allocator "
        "fragmentation are not seen. GiB = 2^30 bytes.",
        "",
        f"Persistent state agrees with the analytic model (`methods.memory`) within {worst:.3f}% in every one of "
        f"{len(ok)} traced rows (`persistent_vs_analytic_pct`).",
        "",
        f"### At {model}, micro-batch 1 × seq {seq}",
        "",
        md_table(traced_table(traced, model, seq), "results/memory_traced.csv"),
        "",
    ]
    if not bad.empty:
        lines += ["Not traced, and why:", "", *[f"- `{r.method}`: {r.reason}" for r in bad.itertuples()], ""]
    lines += rank_section(ranks if ranks is not None else pd.DataFrame(), md_table)
    seven = "7b" if (ok["model"] == "7b").any() else None
    if seven:
        s7 = int(ok[ok["model"] == seven]["seq_len"].max())
        act = saved_activations(
            traced,
            seven,
            s7,
            ["fp8-own-tensorwise", "fp8-own-blockwise", "fp8-torchao-tensorwise", "fp8-e2e", "bf16-pure"],
        )
        if act:
            lines += [
                f"What the FP8 linears' saved inputs change at {seven} (micro-batch 1 × seq {s7}; the own linears "
                "keep only FP8 copies of their inputs for backward):",
                "",
                *act,
                "",
            ]
    lines += coat_section(traced, summary, comp)
    if not fit.empty:
        f0 = fit.iloc[0]
        lines += [
            f"### Does it fit: the largest micro-batch at seq {int(f0['seq_len'])}",
            "",
            f"A micro-batch fits a device when the traced peak of every phase (forward, backward, optimizer step) "
            f"stays within the usable memory: {', '.join(f'{d} {u:.1f} GiB' for d, u in _usable(fit))} "
            "(capacity less a reserve for the CUDA context and workspaces, divided by 1 + the allocator margin; "
            "pipelines/config.yaml `memory_trace`). Each phase's peak is a fixed part plus a part per token, "
            "separated by the two traced sequence lengths (the prediction at micro-batch 2 is checked against its "
            "trace in tests/test_memory_trace.py); 0 means not even one sequence fits. A sharded method's row "
            "is the micro-batch of each of its ranks, each rank on its own device.",
            "",
            md_table(fit_view(fit), "results/memory_fit.csv"),
            "",
        ]
    return "\n".join(lines)


def _usable(fit: pd.DataFrame):
    return fit.drop_duplicates("device")[["device", "usable_gib"]].itertuples(index=False, name=None)
