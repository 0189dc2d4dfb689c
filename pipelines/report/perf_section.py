"""REPORT.md's sections on speed: the CPU benchmarks (results/bench/fp8_linear.csv, optim.csv) and the predicted
GPU speedup with its inputs and the published anchors (results/bench/gpu_predicted.csv, gpu_cost_inputs.csv,
gpu_anchors.csv). Every number printed is a cell of one of those CSVs, formatted by ``pipelines.analysis.markdown``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.analysis.markdown import cell, fmt, md_table

BENCH = "bench"
FP8_CSV, OPTIM_CSV = f"{BENCH}/fp8_linear.csv", f"{BENCH}/optim.csv"
PRED_CSV, INPUTS_CSV, ANCHORS_CSV = (
    f"{BENCH}/gpu_predicted.csv",
    f"{BENCH}/gpu_cost_inputs.csv",
    f"{BENCH}/gpu_anchors.csv",
)
OWN_LINEAR, OWN_OPTIM = "fp8-own-tensorwise", "own_fp8_adamw_native"


def _read(results: Path, name: str) -> pd.DataFrame:
    p = results / name
    return pd.read_csv(p) if p.is_file() else pd.DataFrame()


def device_line(df: pd.DataFrame, threads_col: str) -> str:
    """Where the numbers were measured, from the CSV's own columns."""
    r = df.iloc[0]
    alone = (
        "no other workflow job ran beside it"
        if int(r["job_cores"]) >= int(r["cpu_count"])
        else "other workflow jobs may have run beside it"
        if int(r["job_cores"])
        else "run by hand"
    )
    return (
        f"Measured on {r['cpu_model']}, {cell('threads', r[threads_col])} torch thread(s); the job reserved "
        f"{cell('job_cores', r['job_cores'])} of {cell('cpu_count', r['cpu_count'])} cores ({alone}; processes "
        f"outside the workflow are not controlled); torch {r['torch']}, torchao {r['torchao']}."
    )


def _counts(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Counts read back as floats (a column with gaps) printed as the integers they are."""
    return df.astype({c: "Int64" for c in cols if c in df})


def fp8_part(fp8: pd.DataFrame) -> list[str]:
    src = f"results/{FP8_CSV}"
    ok = fp8[fp8["status"] == "ok"]
    lines = [
        "### Own FP8 linear vs torchao tensorwise vs bf16 (CPU)",
        "",
        device_line(fp8, "torch_threads"),
        "",
        "The methods take turns in one process, on the same initial weights and batch, so load from other "
        "processes hits all alike; each ratio is formed from medians of that one run. `speedup_vs_bf16` = "
        "bf16's time / the method's; `own_speedup_vs_this` = the method's time / fp8-own-tensorwise's (above 1: "
        "the own path is faster). FP8 on this CPU is emulated (codes dequantized, fp32 accumulate): the "
        "ratios price the emulation, they are no forecast of GPU speed.",
        "",
    ]
    for sec, what in (
        ("train_step", "the tiny model's training step"),
        ("linears", "one block's seven projections, forward + backward"),
    ):
        t = ok[ok["section"] == sec]
        if t.empty:
            continue
        own = t[t["method"] == OWN_LINEAR]
        if len(own):
            others = t[t["method"] != OWN_LINEAR]
            said = "; ".join(
                f"{cell('own_speedup_vs_this', r.own_speedup_vs_this)}x {r.method}'s speed" for r in others.itertuples()
            )
            lines += [f"- {what}: fp8-own-tensorwise runs at {said}."]
        cols = [
            c
            for c in ("method", "time_ms", "tokens_per_s", "n_timed", "speedup_vs_bf16", "own_speedup_vs_this")
            if c in t
        ]
        lines += ["", f"{what.capitalize()}:", "", md_table(_counts(t[cols], ["n_timed"]), src), ""]
    act = ok[ok["section"] == "saved_activations"]
    if not act.empty:
        lines += [
            "Bytes autograd saves for backward in one forward (`saved_vs_bf16` against bf16-amp):",
            "",
            md_table(_counts(act[["method", "saved_bytes", "saved_vs_bf16"]], ["saved_bytes"]), src),
            "",
        ]
    bad = fp8[fp8["status"] != "ok"]
    lines += [f"- {r.section} / {r.method}: {r.status}: {r.note}" for r in bad.itertuples()]
    return lines + [""]


def optim_part(opt: pd.DataFrame) -> list[str]:
    src = f"results/{OPTIM_CSV}"
    lines = [
        "### Own FP8 AdamW vs torchao AdamWFp8 vs fp32 AdamW (CPU), with a roofline",
        "",
        device_line(opt, "threads"),
        "",
        "One optimizer step on the same parameters and gradients, the optimizers round-robin in one process. "
        "Bytes per parameter from the tensors each optimizer holds: read weight + gradient + state, write "
        "weight + state. `gb_per_s` = bytes/param x params / median step time; `frac_of_copy` its fraction of "
        "the copy bandwidth measured in the same process (`copy_gb_per_s`, the larger of a copy before and "
        "after the steps): 1.0 streams the data once at copy speed. `own_over_this` = own FP8 AdamW's step "
        "time / the row's (below 1: the own step is faster).",
        "",
    ]
    ok = opt[opt["median_ms"].notna()] if "median_ms" in opt else opt.iloc[0:0]
    for shape, t in ok.groupby("shape", sort=False):
        r0 = t.iloc[0]
        own = t[t["optimizer"] == OWN_OPTIM]
        if len(own):
            said = "; ".join(
                f"{cell('own_over_this', r.own_over_this)}x {r.optimizer}'s step time"
                for r in t[t["optimizer"] != OWN_OPTIM].itertuples()
            )
            kernel = own.iloc[0].get("kernel") if "kernel" in own else None
            build = f" (native kernel: {kernel})" if isinstance(kernel, str) else ""
            lines += [f"- {shape} ({cell('n_params', r0['n_params'])} parameters): own FP8 AdamW{build} takes {said}."]
        cols = [
            "optimizer",
            "param_dtype",
            "median_ms",
            "bytes_per_param",
            "gb_per_s",
            "copy_gb_per_s",
            "frac_of_copy",
            "own_over_this",
        ]
        lines += ["", md_table(t[cols], src), ""]
    over = ok[ok["frac_of_copy"] > 1] if "frac_of_copy" in ok else ok.iloc[0:0]
    for r in over.itertuples():
        lines.append(
            f"- {r.shape} / {r.optimizer} moves its bytes faster than the measured copy "
            f"({cell('frac_of_copy', r.frac_of_copy)} of it): the one-thread `Tensor.copy_` is no ceiling for "
            "this kernel, so read `frac_of_copy` as relative, not as a fraction of the hardware's bandwidth."
        )
    skipped = opt[opt["median_ms"].isna()] if "median_ms" in opt else opt
    lines += [
        f"- {r.shape} / {r.optimizer}: skipped: {r.skipped}"
        for r in skipped.itertuples()
        if isinstance(getattr(r, "skipped", None), str)
    ]
    return lines


def performance_section(results: str | Path, enabled_note: str | None = None) -> str:
    results = Path(results)
    fp8, opt = _read(results, FP8_CSV), _read(results, OPTIM_CSV)
    head = ["## Kernel and optimizer performance", ""]
    if fp8.empty and opt.empty:
        return "\n".join(
            head
            + [
                "The CPU benchmarks did not run in this profile (`pipelines/config.yaml` "
                "`bench.enabled`); `snakemake --cores all` (the cpu profile) runs them."
            ]
        )
    return "\n".join(
        head + (fp8_part(fp8) if not fp8.empty else []) + (optim_part(opt) if not opt.empty else [])
    ).rstrip()


def speedup_pivot(pred: pd.DataFrame) -> pd.DataFrame:
    """Model x sequence length rows, one predicted-speedup column per recipe (values are the CSV's)."""
    wide = pred.pivot_table(
        index=["model", "n_params", "seq_len"], columns="recipe", values="speedup", aggfunc="first", sort=False
    )
    wide = wide[list(dict.fromkeys(pred["recipe"]))]
    wide.columns = [f"speedup_{c}" for c in wide.columns]
    lin = pred.drop_duplicates(["model", "seq_len"]).set_index(["model", "n_params", "seq_len"])
    wide.insert(0, "linear_flop_frac", lin["linear_flop_frac"])
    wide.insert(1, "bf16_mfu", lin["bf16_mfu"])
    return wide.reset_index().sort_values(["n_params", "seq_len"], kind="stable")


def predicted_section(results: str | Path) -> str:
    results = Path(results)
    pred, inputs, anchors = (_read(results, n) for n in (PRED_CSV, INPUTS_CSV, ANCHORS_CSV))
    head = ["## Predicted GPU speed (on paper, not measured)", ""]
    if pred.empty:
        return "\n".join(head + [f"No prediction (results/{PRED_CSV} is missing)."])
    dev = pred["device"].iloc[0]
    tw = pred[pred["recipe"] == "tensorwise"].sort_values("n_params")
    lines = head + [
        f"A cost model (`benchmarks/gpu_cost.py`), not a measurement: every operation of one training step on "
        f"an {dev} takes max(FLOPs / (peak x mm_eff), bytes / (bandwidth x bw_eff)) plus a fixed gap per kernel, "
        "and the step is their sum. The FP8 recipes change only the blocks' seven projections: their three GEMMs "
        "each run at the FP8 rate on 1-byte operands, and each operand (input, weight, output gradient) is first "
        "quantized with the transposed copy Hopper's FP8 GEMM needs: two passes (amax, then cast) under current "
        "per-tensor scaling, one under delayed or blockwise scaling. Attention, the output head, the element-wise "
        "ops and the optimizer cost the same in every recipe, which keeps the speedup below the 2x peak ratio; "
        "communication is not modelled. The inputs (none fitted to the anchors):",
        "",
        md_table(inputs, f"results/{INPUTS_CSV}"),
        "",
        f"Predicted speedup over bf16 (micro-batch {cell('micro_batch', pred['micro_batch'].iloc[0])}, one GPU; "
        "`linear_flop_frac`: the blocks' linears' share of the step's FLOPs; `bf16_mfu`: the bf16 step's predicted "
        "model FLOP utilization):",
        "",
        md_table(speedup_pivot(pred), f"results/{PRED_CSV}"),
        "",
    ]
    if len(tw) >= 2:
        s, b = tw.iloc[0], tw.iloc[-1]
        lines += [
            "Under tensorwise scaling the quantization passes take "
            f"{cell('quant_frac_of_fp8_step', s['quant_frac_of_fp8_step'])} "
            f"of the FP8 step at {s['model']} (seq {cell('seq_len', s['seq_len'])}) and "
            f"{cell('quant_frac_of_fp8_step', b['quant_frac_of_fp8_step'])} at {b['model']}: they grow with "
            "the activations (tokens x width) like the GEMMs' bytes, but not like their FLOPs (tokens x width²), "
            "so at small widths they eat what the faster GEMMs save.",
            "",
        ]
    if not anchors.empty:
        cols = [
            "anchor",
            "recipe",
            "device",
            "model",
            "seq_len",
            "micro_batch",
            "ranks",
            "anchor_lo",
            "anchor_hi",
            "predicted",
            "verdict",
            "settings",
        ]
        lines += [
            "### Prediction beside published anchors",
            "",
            "Each anchor at its own shape, device and parallelism (sources in `results/bench/gpu_anchors.csv`); "
            '`anchor_lo` empty means "no speedup" (at most `anchor_hi`).',
            "",
            md_table(anchors[cols], f"results/{ANCHORS_CSV}"),
            "",
        ]
        bad = anchors[anchors["verdict"] != "agrees"]
        good = anchors[anchors["verdict"] == "agrees"]
        lines += [f"The prediction agrees with {len(good)} of {len(anchors)} anchors."]
        for r in bad.itertuples():
            rng = (
                f"{fmt(r.anchor_lo, 2)}-{fmt(r.anchor_hi, 2)}"
                if not pd.isna(r.anchor_lo)
                else f"at most {fmt(r.anchor_hi, 2)}"
            )
            why = WHY_ABOVE if r.verdict.endswith("above the anchor") else WHY_BELOW
            lines.append(
                f"- Disagrees: {r.anchor}: predicted {cell('predicted', r.predicted)} against {rng} "
                f"({r.verdict}). {why}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


WHY_ABOVE = (
    "Real runs pay what the roofline leaves out: communication not hidden behind compute, casts that "
    "torch.compile does not fuse as assumed, and GEMMs below the assumed fraction of peak at these shapes."
)
WHY_BELOW = (
    "The anchor gained what the model leaves out: casts fused into the op before them (TE's "
    "LayerNormLinear), FP8 weight all-gathers, a larger batch in the memory FP8 frees, or a bf16 baseline "
    "further below peak than the assumed mm_eff; its micro-batch and rank count are also assumed here."
)
