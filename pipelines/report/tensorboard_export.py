"""TensorBoard event files from runs' ``metrics.jsonl``, so that ``tensorboard --logdir results/runs`` shows
every run of a profile side by side (TensorBoard names a run by its folder: profile/model/method/seed).

    python -m pipelines.report.tensorboard_export results/runs/cpu/tiny/*/seed*     # run folders or summary.json files

``metrics.jsonl`` stays the source of truth: the event file (``events.out.tfevents.fp8bench`` beside it)
is derived from it alone and byte for byte the same on every export. That is why the file has a fixed name
instead of TensorBoard's time-and-host one, and why its wall times are not the time of export but the
cumulative ``step_time_s`` of the run (TensorBoard's "relative" axis then reads as seconds of training).

Tags, with the step as the number of optimizer steps done (the x axis of the report's figures too):

- ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``, ``train/step_time_s`` from
  ``train_step`` (its ``step`` is 0-based: it is logged at ``step + 1``);
- ``val/loss`` from ``eval`` (logged at its ``step``, already a count of steps done);
- ``<field>/<layer>/<tensor>`` for every numeric field of every ``telemetry`` row, e.g.
  ``amax/layers.0.attn.wq/input`` and ``saturated_frac/layers.0.attn.wq/input`` (FP8 linears) or
  ``v_flush_frac/tok_emb.weight/adam_state`` (FP8 optimizer states), at ``step + 1``;
- ``memory/<component>_bytes`` and ``memory/state_bytes_per_param`` from ``memory``;
- ``run`` (text): method, seed, status and the resolved config.

Values are TensorBoard scalars (``simple_value``, float32, as ``SummaryWriter.add_scalar`` writes them).
A value that ``metrics.jsonl`` holds as null (a non-finite loss of a diverged run) has no point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common.atomic import atomic_path
from pipelines.run.events import FINAL, read_events

EVENTS_NAME = "events.out.tfevents.fp8bench"
TRAIN_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s")
_NOT_VALUES = ("layer", "tensor")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalars(events: list[dict]) -> list[tuple[float, int, dict[str, float]]]:
    """``(wall_time, step, {tag: value})`` per source event, in the log's order: what the file holds."""
    out = []
    t = 0.0
    for ev in events:
        kind = ev.get("event")
        if kind == "train_step":
            t += ev["step_time_s"] if _number(ev.get("step_time_s")) else 0.0
            vals = {f"train/{k}": ev[k] for k in TRAIN_FIELDS if _number(ev.get(k))}
            out.append((t, ev["step"] + 1, vals))
        elif kind == "eval":
            out.append((t, ev["step"], {"val/loss": ev["val_loss"]} if _number(ev.get("val_loss")) else {}))
        elif kind == "telemetry":
            vals = {}
            for row in ev.get("layers", []):
                where = f"{row.get('layer', '?')}/{row.get('tensor', '?')}"
                vals.update({f"{k}/{where}": v for k, v in row.items() if k not in _NOT_VALUES and _number(v)})
            out.append((t, ev["step"] + 1, vals))
        elif kind == "memory":
            vals = {f"memory/{k}_bytes": v for k, v in ev.get("bytes", {}).items() if _number(v)}
            if _number(ev.get("state_bytes_per_param")):
                vals["memory/state_bytes_per_param"] = ev["state_bytes_per_param"]
            out.append((t, ev.get("after_step", 0) + 1, vals))
    return [s for s in out if s[2]]


def run_text(events: list[dict]) -> str:
    """The ``run`` text entry (markdown): what ran, how it ended, and the resolved config."""
    start = next((e for e in events if e.get("event") == "run_start"), {})
    stop = next((e for e in reversed(events) if e.get("event") == "run_stop"), {})
    cfg = start.get("config", {})
    name = cfg.get("variant") or cfg.get("method", "?")
    status = stop.get("status", "no run_stop event (incomplete log)")
    reason = f" ({stop['reason']})" if stop.get("reason") else ""
    body = json.dumps(cfg, indent=2, sort_keys=True)
    return (
        f"**{name}** seed {cfg.get('seed', '?')}, profile {cfg.get('profile', '?')}, model "
        f"{cfg.get('model', '?')}: {status}{reason}\n\n```\n{body}\n```"
    )


def _records(events: list[dict]):
    """The serialized Event protos of the file, in order."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    yield event_pb2.Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString()
    text = summary_pb2.Summary.Value(
        tag="run",
        metadata=summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")),
        tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[run_text(events).encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        ),
    )
    yield event_pb2.Event(wall_time=0.0, step=0, summary=summary_pb2.Summary(value=[text])).SerializeToString()
    for wall, step, vals in scalars(events):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in vals.items()])
        yield event_pb2.Event(wall_time=wall, step=step, summary=summary).SerializeToString()


def export(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/events.out.tfevents.fp8bench`` from ``<run_dir>/metrics.jsonl`` (atomically)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    run_dir = Path(run_dir)
    src = run_dir / FINAL
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: the run has not finished (no export from a partial log)")
    events = read_events(src)
    out = run_dir / EVENTS_NAME
    with atomic_path(out) as tmp:
        with tmp.open("wb") as f:
            writer = RecordWriter(f)
            for rec in _records(events):
                writer.write(rec)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.report.tensorboard_export", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("runs", nargs="+", help="run folders, or files inside them (summary.json, metrics.jsonl)")
    args = ap.parse_args(argv)
    try:
        for p in args.runs:
            p = Path(p)
            if not p.exists():
                raise FileNotFoundError(f"{p}: no such run folder or file")
            out = export(p if p.is_dir() else p.parent)
            print(f"wrote {out}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
