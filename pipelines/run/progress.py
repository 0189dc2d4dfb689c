"""Progress lines for a run's log, one every ``every_steps`` steps or ``every_s`` seconds, whichever comes first:

    step 120/500 (24%)  loss 5.123  tok/s 8.4k  elapsed 1m02s  eta 3m15s

Plain lines, the same on a terminal and in a file (``train.log``, where the workflow sends the run's stderr),
so a run that nobody watches still says how far it is. ``Progress`` is fed each finished step and decides;
the clock is passed in (``now``), so the decision and the text are testable without waiting.

- the step is the count of steps done (the event log's ``step`` is 0-based);
- loss: the last step's;
- tok/s: tokens over the loop's own timing of the steps since the previous line (``step_time_s``, the
  train step alone), leaving out the steps the loop marks as probed (they measure more and run slower,
  as the summary's median leaves them out); all of them where every step since was probed;
- elapsed: wall time since this process began the loop (a resumed run counts from its resume);
- eta: the steps left at the wall-clock rate of the steps this process did, evaluations included.
"""

from __future__ import annotations

import math

#: steps between lines where the run config has no ``train.log_every`` (configs written before it existed)
EVERY_STEPS = 10
EVERY_S = 60.0


def duration(seconds: float) -> str:
    """42s, 1m02s, 3h05m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate(x: float) -> str:
    """840, 8.4k, 1.25M."""
    if not math.isfinite(x):
        return "?"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


class Progress:
    """Decides when a progress line is due and writes it (``feed`` returns it, or None)."""

    def __init__(
        self, total: int, start_step: int, now: float, every_steps: int = EVERY_STEPS, every_s: float = EVERY_S
    ):
        self.total, self.start, self.t0 = total, start_step, now
        self.every_steps, self.every_s = max(1, int(every_steps)), every_s
        self.last_line_t = now
        self._tokens = self._time = 0.0  # since the last line, unprobed steps
        self._tokens_all = self._time_all = 0.0  # since the last line, every step

    def feed(
        self, done: int, loss: float, tokens: int, step_time_s: float, now: float, probed: bool = False
    ) -> str | None:
        """A step finished: ``done`` steps are done, the last one trained ``tokens`` tokens in ``step_time_s``
        and ended at loss ``loss`` (wall clock ``now``). Returns the line to print, if one is due: after the
        first step of this process, every ``every_steps`` steps, the last step, or ``every_s`` seconds after
        the previous line."""
        self._tokens_all += tokens
        self._time_all += step_time_s
        if not probed:
            self._tokens += tokens
            self._time += step_time_s
        due = (
            done == self.start + 1
            or done % self.every_steps == 0
            or done >= self.total
            or now - self.last_line_t >= self.every_s
        )
        if not due:
            return None
        line = self.line(done, loss, now)
        self.last_line_t = now
        self._tokens = self._time = self._tokens_all = self._time_all = 0.0
        return line

    def line(self, done: int, loss: float, now: float) -> str:
        tokens, spent = (self._tokens, self._time) if self._time > 0 else (self._tokens_all, self._time_all)
        tps = tokens / spent if spent > 0 else float("nan")
        elapsed = now - self.t0
        did = done - self.start
        eta = elapsed / did * (self.total - done) if did > 0 else float("nan")
        pct = 100 * done / self.total if self.total else 100.0
        loss_s = f"{loss:.3f}" if loss is not None and math.isfinite(loss) else str(loss)
        eta_s = duration(eta) if math.isfinite(eta) else "?"
        return (
            f"step {done}/{self.total} ({pct:.0f}%)  loss {loss_s}  tok/s {rate(tps)}  "
            f"elapsed {duration(elapsed)}  eta {eta_s}"
        )
