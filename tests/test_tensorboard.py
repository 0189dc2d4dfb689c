"""TensorBoard export: real runs, one per method family, read back with TensorBoard's own event reader and
compared value by value with their metrics.jsonl."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.run.events import read_events
from tests.conftest import run_cli, write_small_config

pytest.importorskip("tensorboard", reason="tensorboard is pinned in requirements.txt; `make venv` installs it")
from pipelines.report.tensorboard_export import EVENTS_NAME, export  # noqa: E402
from tests.tensorboard_readback import assert_matches_metrics, expected_scalars, read_back  # noqa: E402

# Families of multi-rank methods: their runs are read back where their engine's tests run them anyway.
CHECKED_ELSEWHERE = {"zero": "tests/engines/test_zero.py", "dp": "tests/scaleout/test_data_parallel.py"}


def family_representatives() -> dict[str, str]:
    """The first registered method of every family (baseline, fp8-own, fp8-optim, torchao, te, zero, dp)."""
    from pipelines.analysis.comparison import registry_rows

    reg = registry_rows()
    return {fam: rows["method"].iloc[0] for fam, rows in reg.groupby("family", sort=False)}


def test_every_family_is_read_back_somewhere():
    from methods.registry import get_method

    reps = family_representatives()
    multi = {fam for fam, m in reps.items() if get_method(m).world_size > 1}
    assert multi == set(CHECKED_ELSEWHERE), (multi, reps)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One 4-step run per one-process family through the training CLI's ``main``, in this process (each
    saves the ~3 s a fresh interpreter spends importing torch); telemetry every 2 steps. A family that cannot
    run here (TransformerEngine without a GPU) is recorded ``skipped`` by the loop and exported all the same.
    The export is the workflow's command line."""
    import torch

    from pipelines.run import train

    root = tmp_path_factory.mktemp("tb")
    cfgfile = write_small_config(
        root, steps=4, eval_every=2, eval_tokens=256, warmup_steps=2, timing_warmup_steps=1, telemetry_every=2
    )
    reps = {fam: m for fam, m in family_representatives().items() if fam not in CHECKED_ELSEWHERE}
    threads = torch.get_num_threads()
    try:
        for fam, method in reps.items():
            rc = train.main(
                [
                    "--configfile",
                    str(cfgfile),
                    "--model",
                    "tiny",
                    "--method",
                    method,
                    "--seed",
                    "0",
                    "--out",
                    str(root / fam),
                    "--threads",
                    "1",
                ]
            )
            assert rc == 0, (fam, method, rc)
    finally:
        torch.set_num_threads(threads)
    r = run_cli("-m", "pipelines.report.tensorboard_export", *[str(root / fam) for fam in reps])
    assert r.returncode == 0, r.stderr
    return {fam: root / fam for fam in reps}


def test_every_family_reads_back_equal_to_metrics_jsonl(runs):
    for fam, run_dir in runs.items():
        events = read_events(run_dir / "metrics.jsonl")
        status = next(e for e in events if e["event"] == "run_stop")["status"]
        want = assert_matches_metrics(run_dir, export=False)  # exported by the fixture's CLI call
        if status != "ok":  # TransformerEngine has no GPU here: a skipped run, its status in the text only
            assert fam == "te" and status == "skipped" and not want, (fam, status)
            assert not read_back(run_dir).Tags()["scalars"]
    # own FP8 linears log per-layer amax and saturation (every linear of the blocks: input, weight, grad)
    tele = [t for t in expected_scalars(read_events(runs["fp8-own"] / "metrics.jsonl")) if "/layers." in t]
    assert {t.split("/")[0] for t in tele} >= {"amax", "saturated_frac"}, tele[:5]


def test_export_is_reproducible_from_metrics_jsonl_alone(runs, tmp_path):
    """The same bytes from a copy of metrics.jsonl alone, in another folder, exported again."""
    src = runs["fp8-own"]
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "metrics.jsonl").write_bytes((src / "metrics.jsonl").read_bytes())
    export(copy)
    assert (copy / EVENTS_NAME).read_bytes() == (src / EVENTS_NAME).read_bytes()
    before = (src / EVENTS_NAME).stat().st_mtime_ns
    export(src)
    assert (src / EVENTS_NAME).read_bytes() == (copy / EVENTS_NAME).read_bytes()
    assert (src / EVENTS_NAME).stat().st_mtime_ns >= before


def test_wall_time_is_the_runs_training_time(runs):
    events = read_events(runs["baseline"] / "metrics.jsonl")
    times = np.cumsum([e["step_time_s"] for e in events if e["event"] == "train_step"])
    got = [e.wall_time for e in read_back(runs["baseline"]).Scalars("train/loss")]
    assert got == pytest.approx(list(times), rel=1e-12)


def test_partial_or_missing_logs_are_refused(tmp_path):
    (tmp_path / "metrics.partial.jsonl").write_text(json.dumps({"event": "run_start"}) + "\n")
    r = run_cli("-m", "pipelines.report.tensorboard_export", str(tmp_path))
    assert r.returncode == 2 and "has not finished" in r.stderr
    assert not (tmp_path / EVENTS_NAME).exists()
    r = run_cli("-m", "pipelines.report.tensorboard_export", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such run folder" in r.stderr
