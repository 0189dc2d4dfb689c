"""MLPerf-style event log of one run.

Events are appended to ``metrics.partial.jsonl`` while the run is alive (flushed per line, so a crash
loses at most the line being written). Only when the run ends is that file renamed to
``metrics.jsonl`` and ``summary.json`` written, both atomically: a reader that finds
``summary.json`` finds a complete run, and a reader never opens the partial file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from common.atomic import write_json

PARTIAL = "metrics.partial.jsonl"
FINAL = "metrics.jsonl"
SUMMARY = "summary.json"
STATUSES = ("ok", "diverged", "skipped", "failed")


def _clean(v):
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunWriter:
    """Appends events; ``resume_offset`` reopens a partial log cut back to a checkpoint's length."""

    def __init__(self, out_dir: str | Path, resume_offset: int | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in (FINAL, SUMMARY):  # a rerun must not leave the previous result readable
            (self.dir / stale).unlink(missing_ok=True)
        self.path = self.dir / PARTIAL
        if resume_offset is not None:
            if not self.path.is_file() or self.path.stat().st_size < resume_offset:
                raise ValueError("event log is shorter than the checkpoint says")
            self._f = self.path.open("r+", encoding="utf-8")
            self._f.truncate(resume_offset)  # drop events of steps after the checkpoint
            self._f.seek(resume_offset)
        else:
            self._f = self.path.open("w", encoding="utf-8")

    def offset(self) -> int:
        """Bytes written so far, flushed to disk (a checkpoint records it)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def _write(self, ev: dict) -> None:
        self._f.write(json.dumps(_clean(ev), allow_nan=False) + "\n")
        self._f.flush()

    def event(self, kind: str, **fields) -> None:
        self._write({"event": kind, **fields})

    def finish(self, summary: dict) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {summary.get('status')!r}")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.path, self.dir / FINAL)
        write_json(self.dir / SUMMARY, _clean(summary))


def read_events(path: str | Path) -> list[dict]:
    """Events of a finished run (``metrics.jsonl``) or a partial one."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
