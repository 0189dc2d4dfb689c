"""REPORT.md's speed sections from benchmark CSVs (the benchmarks' own row writers on fixed inputs, the real cost
model): every number printed must be the one in the CSV it came from, and the GPU figure shows the prediction."""

import math

import pandas as pd
import pytest

from benchmarks import fp8_bench, gpu_cost, optim_bench
from benchmarks.bench_csv import run_env, write_csv
from pipelines.analysis.markdown import cell
from pipelines.report.perf_section import (
    ANCHORS_CSV,
    FP8_CSV,
    OPTIM_CSV,
    PRED_CSV,
    performance_section,
    predicted_section,
)

# A fixed benchmark result, as the benchmarks return it (times in seconds / ms), so the expected ratios are known.
FP8_RES = {
    "cpu_step": {
        "batch_size": 8,
        "seq_len": 64,
        "threads": 1,
        "failed": {},
        "notes": {"torchao-tensorwise": "fp8-torchao-tensorwise"},
        "methods": {
            "bf16-amp": {"median_step_s": 0.10, "tokens_per_s": 5120.0, "steps_timed": 18},
            "fp8-own-tensorwise": {"median_step_s": 0.25, "tokens_per_s": 2048.0, "steps_timed": 18},
            "torchao-tensorwise": {"median_step_s": 0.40, "tokens_per_s": 1280.0, "steps_timed": 18},
        },
    },
    "cpu_linears": {
        "tokens": 512,
        "rounds": 8,
        "median_ms": {"fp8-own-tensorwise": 50.0, "nn.Linear bf16-autocast": 10.0, "torchao-tensorwise": 80.0},
    },
    "activation_memory": {
        "batch_size": 8,
        "seq_len": 64,
        "saved_bytes": {"bf16-amp": {"total": 1000}, "fp8-own-tensorwise": {"total": 800}},
    },
    "gpu": {"skipped": "no CUDA device"},
}


def optim_res():
    def r(ms, bpp, n=5_000_000):
        return {
            "median_s": ms / 1e3,
            "n_params": n,
            "bytes_per_param": bpp,
            "param_dtype": "bfloat16",
            "gb_per_s": bpp * n / (ms / 1e3) / 1e9,
            "frac_of_copy": bpp * n / (ms / 1e3) / 20e9,
        }

    sec = {
        "device": "cpu",
        "threads": 1,
        "model": "tiny",
        "copy_gb_per_s": 20.0,
        "results": {
            "own_fp8_adamw_native": {**r(30, 10.08), "kernel": "avx512"},
            "torchao_adamw_fp8": r(90, 10.06),
            "torch_fused_adamw_fp32": r(6, 28.0),
            "fp32_state_adamw_nearest": {"skipped": "Boom: simulated"},
        },
    }
    return {"cpu": [sec], "gpu": {"skipped": "no CUDA device"}}


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "results"
    env = run_env(2)
    write_csv(root / FP8_CSV, [{**r, **env} for r in fp8_bench.csv_rows(FP8_RES)])
    write_csv(root / OPTIM_CSV, [{**r, **env} for r in optim_bench.rows(optim_res())])
    gpu_cost.main(
        [
            "--csv",
            str(root / PRED_CSV),
            "--inputs-csv",
            str(root / "bench/gpu_cost_inputs.csv"),
            "--anchors-csv",
            str(root / ANCHORS_CSV),
        ]
    )
    return root


def tables(text: str, source: str) -> list[list[dict]]:
    """The markdown tables printed under `<!-- source: ... -->` as rows of {column: printed cell}."""
    out, lines = [], text.splitlines()
    for i, ln in enumerate(lines):
        if ln == f"<!-- source: {source} -->":
            cols = [c.strip() for c in lines[i + 1].strip("|").split("|")]
            rows, j = [], i + 3
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(dict(zip(cols, (c.strip() for c in lines[j].strip("|").split("|")))))
                j += 1
            out.append(rows)
    return out


def assert_cells_match(printed: list[dict], csv: pd.DataFrame, key: list[str]):
    assert printed, "no rows printed"
    for row in printed:
        sel = csv
        for k in key:
            sel = sel[sel[k].astype(str).map(lambda v, c=k: cell(c, v if c not in ("seq_len",) else int(v))) == row[k]]
        assert len(sel) >= 1, (row, key)
        src = sel.iloc[0]
        for col, shown in row.items():
            if col in src.index:
                v = src[col]
                if isinstance(v, str) or pd.isna(v):
                    assert shown == cell(col, v), (col, shown, v)
                else:  # the printed number is the CSV's to the printed precision
                    mant, _, exp = shown.partition("e")
                    step = 10 ** (-len(mant.partition(".")[2]) + (int(exp) if exp else 0))
                    assert float(shown) == pytest.approx(float(v), abs=0.51 * step), (col, shown, v)


def test_fp8_rows_carry_ratios_from_the_same_run():
    rows = {(r["section"], r["method"]): r for r in fp8_bench.csv_rows(FP8_RES)}
    own, ao = rows[("train_step", "fp8-own-tensorwise")], rows[("train_step", "torchao-tensorwise")]
    assert own["speedup_vs_bf16"] == pytest.approx(0.10 / 0.25) and ao["own_speedup_vs_this"] == pytest.approx(
        0.40 / 0.25
    )
    assert rows[("linears", "torchao-tensorwise")]["own_speedup_vs_this"] == pytest.approx(80 / 50)
    assert rows[("saved_activations", "fp8-own-tensorwise")]["saved_vs_bf16"] == pytest.approx(0.8)
    assert rows[("gpu", "all")]["status"] == "skipped" and rows[("gpu", "all")]["note"] == "no CUDA device"


def test_performance_section_prints_the_csv_cells(res):
    text = performance_section(res)
    assert text.startswith("## Kernel and optimizer performance")
    fp8 = pd.read_csv(res / FP8_CSV)
    printed = tables(text, f"results/{FP8_CSV}")
    assert len(printed) == 3  # train step, linears, saved activations
    for rows, sec in zip(printed, ("train_step", "linears", "saved_activations")):
        assert_cells_match(rows, fp8[fp8["section"] == sec], ["method"])
    ao = fp8[(fp8["section"] == "train_step") & (fp8["method"] == "torchao-tensorwise")].iloc[0]
    assert f"{cell('own_speedup_vs_this', ao['own_speedup_vs_this'])}x torchao-tensorwise's speed" in text
    assert cell("own_speedup_vs_this", ao["own_speedup_vs_this"]) == "1.60"
    opt = pd.read_csv(res / OPTIM_CSV)
    (orows,) = tables(text, f"results/{OPTIM_CSV}")
    assert_cells_match(orows, opt, ["optimizer"])
    assert {r["optimizer"] for r in orows} == {"own_fp8_adamw_native", "torchao_adamw_fp8", "torch_fused_adamw_fp32"}
    tao = opt[opt["optimizer"] == "torchao_adamw_fp8"].iloc[0]
    assert tao["own_over_this"] == pytest.approx(30 / 90)
    assert f"{cell('own_over_this', tao['own_over_this'])}x torchao_adamw_fp8's step time" in text
    assert "tiny / fp32_state_adamw_nearest: skipped: Boom: simulated" in text
    assert "own FP8 AdamW (native kernel: avx512) takes" in text  # which build of the kernel ran
    env = fp8.iloc[0]  # the device line: CPU model, threads, cores reserved, from the CSV
    assert f"Measured on {env['cpu_model']}, 1 torch thread(s); the job reserved 2 of {env['cpu_count']} cores" in text


def test_without_benchmarks_the_section_says_so(tmp_path):
    assert "did not run in this profile" in performance_section(tmp_path)
    assert "No prediction" in predicted_section(tmp_path)


def test_predicted_section_prints_the_csv_cells_and_names_every_disagreement(res):
    text = predicted_section(res)
    assert "on paper, not measured" in text
    pred, anchors = pd.read_csv(res / PRED_CSV), pd.read_csv(res / ANCHORS_CSV)
    _inputs, pivot = tables(text, "results/bench/gpu_cost_inputs.csv")[0], tables(text, f"results/{PRED_CSV}")[0]
    assert len(pivot) == pred[["model", "seq_len"]].drop_duplicates().shape[0]
    for row in pivot:
        for recipe in gpu_cost.RECIPES:
            src = pred[
                (pred["model"] == row["model"]) & (pred["seq_len"] == int(row["seq_len"])) & (pred["recipe"] == recipe)
            ].iloc[0]
            assert row[f"speedup_{recipe}"] == cell("speedup", src["speedup"])
            assert row["linear_flop_frac"] == cell("linear_flop_frac", src["linear_flop_frac"])
    (arows,) = tables(text, f"results/{ANCHORS_CSV}")
    assert_cells_match(arows, anchors, ["anchor"])
    bad = anchors[anchors["verdict"] != "agrees"]
    assert f"agrees with {len(anchors) - len(bad)} of {len(anchors)} anchors" in text
    for r in bad.itertuples():
        assert f"- Disagrees: {r.anchor}: predicted {cell('predicted', r.predicted)}" in text
    fp8_peak = pd.read_csv(res / "bench/gpu_cost_inputs.csv").set_index("input").loc["fp8_dense_peak", "value"]
    assert float(fp8_peak) == 1979


def test_gpu_scaling_draws_the_prediction_and_measured_points(res):
    from pipelines.report.figures import FigureData, fig_gpu_scaling

    pred = pd.read_csv(res / PRED_CSV)
    fig = fig_gpu_scaling(FigureData(pd.DataFrame(), predicted=pred))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum(lb.startswith("predicted: ") for lb in labels) == len(gpu_cost.RECIPES)
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("predicted: tensorwise"))
    tw = pred[(pred["recipe"] == "tensorwise") & (pred["seq_len"] == pred["seq_len"].min())].sort_values("n_params")
    assert list(line.get_ydata()) == pytest.approx(list(tw["speedup"]))
    ref = pd.DataFrame(
        {
            "model": ["125m", "1b", "1b"],
            "method": ["fp8-own-tensorwise", "fp8-own-tensorwise", "bf16-amp"],
            "status": ["ok"] * 3,
            "n_params": [1.2e8, 1.1e9, 1.1e9],
            "speedup": [0.9, 1.2, 1.0],
            "device_dir": ["h200"] * 3,
        }
    )
    fig = fig_gpu_scaling(FigureData(pd.DataFrame(), reference=ref, predicted=pred))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "measured: fp8-own-tensorwise (h200)" in labels and not any("bf16-amp" in lb for lb in labels)
    assert isinstance(fig_gpu_scaling(FigureData(pd.DataFrame())), str)


def test_bench_tables_follow_the_profiles_bench_setting():
    from pipelines.report.items import TABLES, tables_for
    from pipelines.run import config as cfgmod

    bench_tables = {n for n, t in TABLES.items() if t.bench}
    assert bench_tables == {"bench_fp8_linear", "bench_optim"}
    # the first run (cpu) leaves the benchmarks to cpu_full
    assert not bench_tables & set(tables_for("smoke")) and not bench_tables & set(tables_for("cpu"))
    assert bench_tables <= set(tables_for("cpu_full"))
    assert {"gpu_predicted", "gpu_anchors"} <= set(tables_for("smoke"))  # the prediction runs everywhere
    cfg = cfgmod.load()
    assert cfgmod.bench_enabled("cpu_full") and not cfgmod.bench_enabled("cpu") and not cfgmod.bench_enabled("smoke")
    cfg["bench"]["optim_optimizers"] = ["adamw_magic"]
    with pytest.raises(
        cfgmod.ConfigError, match="unknown bench optimizer 'adamw_magic'; valid bench optimizers: own_fp8_adamw_native"
    ):
        cfgmod.bench_settings(cfg, "cpu_full")
    assert not math.isnan(gpu_cost.H200.mm_eff)
