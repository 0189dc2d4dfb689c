"""The on-paper GPU cost model (benchmarks/gpu_cost.py): its FLOP count, its bounds and its trend with size."""

import dataclasses

import pytest

from benchmarks import gpu_cost as gc
from models import get_model_config

SIZES = ["125m", "350m", "1b", "7b", "10b"]


@pytest.mark.parametrize("name", SIZES)
def test_flops_are_six_n_tokens_plus_attention(name):
    cfg = get_model_config(name)
    s = gc.shape(name)
    assert s.n_params() == cfg.n_params()  # the cost model's shapes are the models' own
    seq, mb = 2048, 2
    t = gc.step_time(s, seq, mb, None)
    tokens = seq * mb
    # 6 N per token over the matmul weights (everything but the embedding table and the norm weights)
    n_matmul = cfg.n_params() - cfg.vocab_size * cfg.dim - (2 * cfg.n_layers + 1) * cfg.dim
    attention = 6 * cfg.n_layers * tokens * seq * cfg.dim  # 12 L d s per token, causal half
    assert t["total_flops"] == pytest.approx(6 * n_matmul * tokens + attention, rel=1e-3)


def test_speedup_is_bounded_by_the_peak_ratio_and_grows_with_size():
    rows = gc.grid(SIZES, [2048, 4096], 8, gc.H200)
    bound = gc.H200.fp8_flops / gc.H200.bf16_flops
    assert bound == pytest.approx(2.0, rel=1e-3)
    assert all(0 < r["speedup"] < bound for r in rows)
    for recipe in gc.RECIPES:
        sp = [r["speedup"] for r in rows if r["recipe"] == recipe and r["seq_len"] == 2048]
        assert sp == sorted(sp), (recipe, sp)  # larger models: GEMMs dominate, FP8 pays more
        assert sp[-1] > 1.3 > sp[0]


def test_even_free_quantization_on_a_huge_model_stays_below_2x(monkeypatch):
    free = {
        k: dataclasses.replace(r, read_bytes=0, write_bytes=0, kernels_per_operand=0) for k, r in gc.RECIPES.items()
    }
    monkeypatch.setattr(gc, "RECIPES", free)
    huge = gc.Shape("huge", dim=16384, n_layers=4, n_heads=128, n_kv_heads=128, ffn_dim=53248, vocab_size=32000)
    sp = gc.predict(huge, 2048, 8, "tensorwise")["speedup"]
    assert 1.5 < sp < 2.0  # attention, head, element-wise and optimizer keep it below the FP8/bf16 peak ratio


def test_small_models_gain_nothing_because_quantization_bytes_dominate(monkeypatch):
    tiny = gc.shape("tiny")
    row = gc.predict(tiny, 64, 8, "tensorwise")
    assert row["speedup"] < 1.0  # the cpu profile's shape: FP8 would be slower on the GPU too
    assert row["quant_ms"] > row["bf16_gemm_ms"] - row["fp8_gemm_ms"]  # the casts cost more than the GEMMs save
    free = {
        k: dataclasses.replace(r, read_bytes=0, write_bytes=0, kernels_per_operand=0) for k, r in gc.RECIPES.items()
    }
    monkeypatch.setattr(gc, "RECIPES", free)
    assert gc.predict(tiny, 64, 8, "tensorwise")["speedup"] > row["speedup"]


def test_fewer_quantization_passes_are_faster_everywhere():
    for r in gc.grid(SIZES, [2048], 8, gc.H200):
        if r["recipe"] == "tensorwise":
            d = gc.predict(gc.shape(r["model"]), r["seq_len"], 8, "delayed")
            assert d["speedup"] > r["speedup"] and d["quant_gb"] < r["quant_gb"]


def test_anchor_verdicts_follow_their_numbers():
    rows = gc.anchor_rows()
    assert len(rows) == len(gc.ANCHORS) >= 4
    for r in rows:
        lo = r["anchor_lo"] if r["anchor_lo"] is not None else float("-inf")
        inside = lo <= r["predicted"] <= r["anchor_hi"]
        assert (r["verdict"] == "agrees") == inside, r
    assert {"tensorwise", "delayed"} <= {r["recipe"] for r in rows}


def test_bad_names_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="unknown recipe 'mx'; valid: tensorwise, delayed, blockwise"):
        gc.step_time(gc.shape("1b"), 2048, 1, "mx")
    with pytest.raises(ValueError, match="unknown model '3b'; valid: .*125m.*llama3-8b"):
        gc.shape("3b")
    with pytest.raises(SystemExit):
        gc.main(["--models", "3b"])


def test_cli_writes_the_three_tables(tmp_path):
    import pandas as pd

    paths = {k: tmp_path / f"{k}.csv" for k in ("pred", "inputs", "anchors")}
    assert (
        gc.main(
            [
                "--models",
                "125m",
                "1b",
                "--seq-lens",
                "2048",
                "--csv",
                str(paths["pred"]),
                "--inputs-csv",
                str(paths["inputs"]),
                "--anchors-csv",
                str(paths["anchors"]),
            ]
        )
        == 0
    )
    pred = pd.read_csv(paths["pred"])
    assert len(pred) == 2 * len(gc.RECIPES) and set(pred["kind"]) == {"predicted"}
    inputs = pd.read_csv(paths["inputs"]).set_index("input")
    assert float(inputs.loc["fp8_dense_peak", "value"]) == 1979 and float(inputs.loc["bf16_dense_peak", "value"]) == 989
    assert len(pd.read_csv(paths["anchors"])) == len(gc.ANCHORS)
