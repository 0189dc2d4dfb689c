"""What *diverged* means, defined once for every run of the suite.

A run **diverged** when any of these holds:

1. **non-finite**: a training loss or a gradient norm is NaN or infinite, or an evaluation's val loss is
   not finite. This ends the run at once (nothing after it can be measured); ``diverged_step`` is that step.
2. **above its start**: the run finished and its final val loss is above its step-0 val loss: training left
   the model worse than its random initialisation.
3. **unrecovered spike**: the run finished and the mean training loss of its last ``spike_window`` steps is
   above ``spike_factor`` x its reference, the lower of the step-0 loss and the lowest mean of any
   ``spike_window`` consecutive steps (a run shorter than the window: its whole run is the window). A spike
   that comes back down by the end is not a divergence.

Rules 2 and 3 are judged at the end of a run that ran all its steps: the run keeps its status ``diverged``
with the reason and ``diverged_step`` (for rule 3 the step from which the windowed mean stayed above the
threshold to the end, located at the first step of its first window above the threshold; for rule 2 alone
likewise with the step-0 loss as the threshold, else the last step). A run is never stopped early for a high
loss: the learning-rate frontier's own runs show losses 20-30x the step-0 loss that recover (a multiple of the
step-0 loss as a stop would call them diverged).

The settings are ``train.spike_factor`` and ``train.spike_window`` (pipelines/config.yaml; the schema holds
them to factor > 1 and window >= 1). Window means smooth the batch-to-batch noise of single-step losses
(about +-10% on the CPU profiles), and the step-0 loss in the reference keeps a run that never got below it
(a loss that explodes within the first window) from being measured against its own explosion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the rule each part of a ``diverged`` run's reason comes from, as tables name it
KINDS = {
    "non-finite": ("non-finite", "infinite gradient norm", "NaN gradient norm"),
    "above start": ("above the step-0 val loss",),
    "unrecovered spike": ("a spike that did not recover",),
}


def kinds(reason) -> list[str]:
    """Which of the rules a diverged run's recorded reason names (``KINDS``), in their order; a reason from
    none of them (a run recorded by an earlier rule) is ``other``."""
    text = str(reason) if isinstance(reason, str) else ""
    found = [k for k, marks in KINDS.items() if any(m in text for m in marks)]
    return found or ["other"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class Divergence:
    """The rule with its settings; ``at_step`` during the run, ``at_end`` once it ran all its steps."""

    spike_factor: float = 1.5
    spike_window: int = 10

    @classmethod
    def from_train(cls, train: dict) -> Divergence:
        return cls(spike_factor=float(train["spike_factor"]), spike_window=int(train["spike_window"]))

    def text(self) -> str:
        """The definition in one sentence, as tables and the report print it."""
        return (
            f"diverged: a non-finite loss, gradient norm or val loss (the run ends there); or, at the end, a "
            f"final val loss above the step-0 val loss; or a mean loss over the last {self.spike_window} steps "
            f"above {self.spike_factor:g} x the lower of the step-0 loss and the lowest {self.spike_window}-step "
            f"mean (a spike that did not recover)"
        )

    # -- during the run --------------------------------------------------------------------------
    @staticmethod
    def at_step(loss: float, grad_norm, reports_grad_norm: bool = True) -> str:
        """Why this step ends the run (a non-finite value), or ``""``. A method that cannot know the global
        gradient norm (it steps inside backward) reports NaN for it; only its infinities count then."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if isinstance(grad_norm, float) and math.isinf(grad_norm):
            return "infinite gradient norm"
        if grad_norm != grad_norm and reports_grad_norm:  # NaN
            return "NaN gradient norm"
        return ""

    @staticmethod
    def at_eval(val_loss: float) -> str:
        return "" if math.isfinite(val_loss) else f"non-finite val loss {val_loss}"

    # -- at the end ------------------------------------------------------------------------------
    def window(self, n_steps: int) -> int:
        """The window of a run of ``n_steps``: spike_window, or the whole run where it is shorter."""
        return max(1, min(self.spike_window, n_steps))

    def window_means(self, losses: list[float]) -> list[float]:
        """mean of losses[t - w + 1 .. t] for every t >= w - 1 (w = ``window(len(losses))``)."""
        w = self.window(len(losses))
        if not losses:
            return []
        out, total = [], sum(losses[:w])
        out.append(total / w)
        for t in range(w, len(losses)):
            total += losses[t] - losses[t - w]
            out.append(total / w)
        return out

    @staticmethod
    def _stretch(above: list[bool]) -> int:
        """Index of the first window of the final run of True values (``above[-1]`` is True)."""
        start = len(above) - 1
        while start > 0 and above[start - 1]:
            start -= 1
        return start

    def _first_above(self, losses: list[float], window: int, threshold: float) -> int:
        """The first step of window ``window`` (steps window .. window + w - 1) whose loss exceeds ``threshold``:
        where the stretch that never came back began; the window's last step if no single step does."""
        w = self.window(len(losses))
        return next((t for t in range(window, window + w) if losses[t] > threshold), window + w - 1)

    def at_end(self, losses: list[float], initial_val: float | None, final_val: float | None) -> tuple[str, int] | None:
        """(reason, diverged_step) where a finished run diverged by rule 2 or 3, else None. ``losses``: the
        training loss of every step from step 0."""
        if not losses or not all(_finite(x) for x in losses):
            return None  # a non-finite loss has ended the run already (rule 1)
        reasons, steps = [], []
        w, first = self.window(len(losses)), losses[0]
        means = self.window_means(losses)
        if means:
            ref, refs = first, []
            for m in means:  # the running reference at each window's last step
                ref = min(ref, m)
                refs.append(ref)
            if means[-1] > self.spike_factor * refs[-1]:
                start = self._stretch([m > self.spike_factor * r for m, r in zip(means, refs)])
                reasons.append(
                    f"mean loss of the last {w} steps {means[-1]:.3f} > {self.spike_factor:g} x "
                    f"{refs[-1]:.3f} (the lower of the step-0 loss and the lowest {w}-step mean): a spike "
                    f"that did not recover"
                )
                steps.append(self._first_above(losses, start, self.spike_factor * refs[start]))
        if _finite(initial_val) and _finite(final_val) and final_val > initial_val:
            reasons.insert(0, f"final val loss {final_val:.3f} above the step-0 val loss {initial_val:.3f}")
            above = [m > first for m in means]
            steps.append(
                self._first_above(losses, self._stretch(above), first) if above and above[-1] else len(losses) - 1
            )
        if not reasons:
            return None
        return "; ".join(reasons), min(steps)
