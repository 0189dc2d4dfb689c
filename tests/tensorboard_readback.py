"""Read a run's TensorBoard event file back with TensorBoard's own reader and compare it with the run's
metrics.jsonl, value by value. Used by tests/test_tensorboard.py and by the multi-rank engine tests, on the
runs they make anyway (a ZeRO or DDP run costs tens of seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.run.events import read_events


def read_back(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.report.tensorboard_export import EVENTS_NAME

    acc = EventAccumulator(str(Path(run_dir) / EVENTS_NAME), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def expected_scalars(events: list[dict]) -> dict[str, dict[int, float]]:
    """What the event file must hold, written out from metrics.jsonl here rather than by the exporter's code:
    {tag: {step: value}}, steps counted as optimizer steps done."""
    want: dict[str, dict[int, float]] = {}
    for ev in events:
        if ev["event"] == "train_step":
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"):
                if ev.get(k) is not None:
                    want.setdefault(f"train/{k}", {})[ev["step"] + 1] = ev[k]
        elif ev["event"] == "eval" and ev.get("val_loss") is not None:
            want.setdefault("val/loss", {})[ev["step"]] = ev["val_loss"]
        elif ev["event"] == "telemetry":
            for row in ev["layers"]:
                for k in ("amax", "saturated_frac", "v_flush_frac"):
                    if row.get(k) is not None:
                        want.setdefault(f"{k}/{row['layer']}/{row['tensor']}", {})[ev["step"] + 1] = row[k]
    return want


def assert_matches_metrics(run_dir: Path, export: bool = True) -> dict[str, dict[int, float]]:
    """Export ``run_dir`` (unless ``export`` is False), read its event file back and check: the ``run`` text
    names seed and status; every scalar of metrics.jsonl is there at its step, equal to the logged value
    rounded to float32 (TensorBoard scalars are float32 ``simple_value``s), and no step is extra."""
    from pipelines.report.tensorboard_export import export as do_export

    if export:
        do_export(run_dir)
    events = read_events(Path(run_dir) / "metrics.jsonl")
    start = next(e for e in events if e["event"] == "run_start")
    status = next(e for e in events if e["event"] == "run_stop")["status"]
    acc = read_back(run_dir)
    text = acc.Tensors("run")[0].tensor_proto.string_val[0].decode()
    assert f"seed {start['config']['seed']}" in text and status in text, text[:300]
    want = expected_scalars(events)
    if status == "ok":
        assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss"} <= set(want)
    tags = set(acc.Tags()["scalars"])
    assert set(want) <= tags, sorted(set(want) - tags)[:5]
    for tag, by_step in want.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert sorted(got) == sorted(by_step), (tag, sorted(got), sorted(by_step))
        for step, v in by_step.items():
            assert got[step] == float(np.float32(v)), (tag, step, got[step], v)
    return want
