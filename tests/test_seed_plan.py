"""Adaptive seeds: how many seeds a method's interval would need (projected from its spread), which methods a
round gives more seeds, and the workflow's checkpoint that runs them (a tiny real workflow of 2-step runs)."""

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from pipelines.analysis import seed_plan as sp
from pipelines.analysis.stats import Analysis, decided, seeds_to_decide, t_quantile
from pipelines.run import config as config_mod
from tests.conftest import ROOT, run_cli, write_small_config

AN = Analysis(margin_pct=0.5, min_seeds=3, max_seeds=7, seed_batch=2)


def test_decided_is_the_verdict_rule():
    assert decided(0.1, 0.3, 0.5)  # [-0.2, 0.4] inside ±0.5: equivalent
    assert decided(0.9, 0.3, 0.5)  # [0.6, 1.2] above +0.5: worse
    assert decided(-0.9, 0.3, 0.5)  # better
    assert not decided(0.4, 0.3, 0.5)  # [0.1, 0.7] straddles +0.5
    assert decided(0.2, 0.3, 0.5)  # [-0.1, 0.5]: the edge counts as inside


def test_seeds_to_decide_by_hand():
    # mean 0.2, sd 0.2: equivalent once the half-width t_{n-1} 0.2 / sqrt(n) is at most 0.5 - 0.2 = 0.3;
    # n = 3: 4.303 x 0.2 / 1.732 = 0.497; n = 4: 3.182 x 0.2 / 2 = 0.318; n = 5: 2.776 x 0.2 / 2.236 = 0.248
    n = seeds_to_decide([0.0, 0.2, 0.4], AN)
    assert n == 5
    for k in range(3, int(n)):
        assert t_quantile(0.95, k - 1) * 0.2 / math.sqrt(k) > 0.3
    assert t_quantile(0.95, int(n) - 1) * 0.2 / math.sqrt(n) <= 0.3


def test_seeds_to_decide_edges():
    assert seeds_to_decide([0.1, 0.11, 0.12], AN) == 3  # already tight: the minimum
    assert math.isnan(seeds_to_decide([0.3], AN))  # one gap: no spread to project
    assert math.isinf(seeds_to_decide([0.4, 0.6, 0.5], AN))  # mean at the margin: no n decides it


def _summary(gaps: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, gs in gaps.items():
        for seed, g in enumerate(gs):
            rows.append(
                {
                    "profile": "p",
                    "model": "tiny",
                    "method": method,
                    "seed": seed,
                    "lr": 1e-3,
                    "status": "ok",
                    "final_val_loss": 5.0 * (1 + g / 100),
                    "loss_gap_pct": g,
                    "reason": "",
                    "state_bytes_per_param": 16.0,
                    "n_params": 1,
                    "peak_mem_bytes": 1,
                    "peak_mem_kind": "x",
                    "initial_val_loss": 8.0,
                    "tokens_per_s": 1.0,
                    "speedup": 1.0,
                    **{f"{c}_bytes": 1 for c in ("weights", "master", "grads", "optim", "meta")},
                }
            )
    return pd.DataFrame(rows)


def test_plan_gives_inconclusive_methods_more_seeds_and_the_reference_their_union():
    seeds, methods = [0, 1, 2], ["bf16-amp", "fp32", "bf16-pure", "fp8-naive", "one-seed"]
    seeds_for = {"one-seed": [0]}
    summary = _summary(
        {
            "bf16-amp": [0, 0, 0],
            "fp32": [0.01, -0.02, 0.0],  # equivalent: done
            "bf16-pure": [0.2, 0.9, 0.5],  # inconclusive: more seeds
            "fp8-naive": [2.0, 2.2, 2.1],  # worse: done
            "one-seed": [0.3],
        }
    )  # not judged (1 seed)
    p = sp.plan(summary, 1, seeds, seeds_for, methods, AN)
    assert p["seeds"] == [3, 4]
    assert p["methods"] == {"bf16-pure": [3, 4], "bf16-amp": [3, 4]}
    assert "inconclusive" in p["why"]["bf16-pure"]
    # round 2 (seeds 5, 6) when those seeds already ran: nothing new to run
    more = _summary({"bf16-amp": [0] * 7, "bf16-pure": [0.2, 0.9, 0.5, 0.1, 0.8, 0.6, 0.3]})
    p2 = sp.plan(more, 2, seeds, seeds_for, methods, Analysis(margin_pct=0.5, max_seeds=8, seed_batch=2))
    assert p2["seeds"] == [5, 6] and p2["methods"] == {}  # 5 and 6 ran already: nothing new in this round's seeds
    assert sp.rounds(seeds, seeds_for, methods, AN) == 2  # from 3 to 7 seeds, 2 a round
    assert sp.rounds(seeds, seeds_for, methods, Analysis()) == 0  # off by default


def test_adaptive_seeds_need_one_lr_and_at_least_min_seeds(tmp_path):
    cfg = config_mod.load(overrides={"profiles": {"cpu": {"analysis": {"max_seeds": 6}}}})
    assert config_mod.profile_settings(cfg, "cpu")["analysis"]["max_seeds"] == 6
    bad = config_mod.load(overrides={"profiles": {"sweep": {"analysis": {"max_seeds": 6}}}})
    with pytest.raises(config_mod.ConfigError, match="works on one lr"):
        config_mod.profile_settings(bad, "sweep")
    low = config_mod.load(overrides={"analysis": {"max_seeds": 2}})
    with pytest.raises(config_mod.ConfigError, match="below min_seeds"):
        config_mod.profile_settings(low, "cpu")


@pytest.mark.slow
def test_the_workflow_runs_the_rounds_its_checkpoint_plans(tmp_path):
    """2 seeds of fp32 and bf16-amp (min_seeds 2), a margin no interval can fall inside or beyond at 99.9999%
    confidence: fp32 stays inconclusive, so round 1 runs seed 2 of both, then max_seeds (3) ends it."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for name in ("Snakefile", "pipelines", "environment.yml", "requirements.txt"):
        src = ROOT / name
        (
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, wd / name)
        )
    cfg = yaml.safe_load(
        write_small_config(
            tmp_path, steps=2, eval_every=2, eval_tokens=256, warmup_steps=1, timing_warmup_steps=0, checkpoint_every=0
        ).read_text()
    )
    cfg["results_dir"] = "results"
    cfg["analysis"].update(margin_pct=1e-6, confidence=0.999999, min_seeds=2, max_seeds=3, seed_batch=1)
    cfg["profiles"]["adaptive"] = {
        "models": ["tiny"],
        "methods": ["fp32", "bf16-amp"],
        "seeds": [0, 1],
        "bench": {"enabled": False},
        "memory_trace": {"models": ["tiny"], "methods": ["bf16-amp"], "seq_lens": [64], "fit_seq_len": 64, "ranks": 0},
    }
    (wd / "pipelines" / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli(
        "-m", "snakemake", "--cores", "2", "results/summary.csv", "--config", "profile=adaptive", cwd=wd, timeout=600
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    plan = json.loads((wd / "results" / "seed_plan" / "round1.json").read_text())
    assert plan["methods"] == {"fp32": [2], "bf16-amp": [2]}
    summary = pd.read_csv(wd / "results" / "summary.csv")
    assert sorted(summary[summary["method"] == "fp32"]["seed"]) == [0, 1, 2]
    assert sorted(summary[summary["method"] == "bf16-amp"]["seed"]) == [0, 1, 2]
    assert not (wd / "results" / "seed_plan" / "round2.json").exists()  # max_seeds reached: no round 2
