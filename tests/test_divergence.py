"""What "diverged" means (pipelines/run/divergence.py), on loss curves shaped like the learning-rate frontier's
runs (a healthy fall, a spike that recovers, one that does not, a run left above its start), and the training
loop's use of it: a non-finite value ends a run, the end rules turn a finished run into ``diverged``."""

import math
import random

import pytest

from pipelines.run.divergence import Divergence
from pipelines.run.train import Run

D = Divergence(spike_factor=1.5, spike_window=10)
L0 = 8.37  # ~ln(4096): the step-0 loss of the tiny model


def curve(n=80, floor=5.0, seed=0, spike=None):
    """A falling loss from L0 towards ``floor`` with +-5% batch noise; ``spike``: (start, stop, height) adds
    a loss of ``height`` over steps start .. stop - 1."""
    rng = random.Random(seed)
    out = [L0]
    for t in range(1, n):
        base = floor + (L0 - floor) * math.exp(-t / 8)
        out.append(base * (1 + rng.uniform(-0.05, 0.05)))
    if spike:
        a, b, h = spike
        out[a:b] = [h * (1 + rng.uniform(-0.05, 0.05)) for _ in range(a, b)]
    return out


def test_window_means_are_the_moving_average():
    losses = [float(x) for x in range(1, 16)]
    means = D.window_means(losses)
    assert len(means) == 6 and means[0] == pytest.approx(5.5) and means[-1] == pytest.approx(10.5)
    # a run shorter than the window is one window
    assert D.window_means(losses[:6]) == [pytest.approx(3.5)] and D.window(6) == 6 and D.window(80) == 10


def test_a_healthy_run_and_a_spike_that_recovers_are_not_diverged():
    assert D.at_end(curve(), L0, 5.3) is None
    # the lr-1 runs of the frontier: the loss jumps to ~25x its start around step 15 and comes back
    assert D.at_end(curve(spike=(12, 20, 200.0)), L0, 6.4) is None
    # a run still falling fast at its end after a late spike: mean of the last 10 within 1.5x its best window
    late = curve(floor=6.0, spike=(60, 66, 150.0))
    late[66:] = [7.5 - 0.1 * i for i in range(14)]
    assert D.at_end(late, L0, 6.9) is None


def test_an_unrecovered_spike_is_diverged_from_where_it_began():
    # the lr-3.16 runs: the loss never falls below its start and ends ~20x above it
    losses = [L0, 9.0, 30.0] + [150.0 + i for i in range(77)]
    reason, step = D.at_end(losses, L0, 154.0)
    assert reason.startswith("final val loss 154.000 above the step-0 val loss 8.370; mean loss of the last 10 steps")
    assert "> 1.5 x 8.370" in reason and "a spike that did not recover" in reason
    assert step == 1  # 9.0 > 1.5 x 8.37 is false, 9.0 > L0 is true: the val rule's step is the earlier one
    # a spike after a good start, back below the step-0 loss but not near the best: only the spike rule
    losses = curve()
    losses[50:] = [8.0] * 30  # best 10-step mean ~5.1: 8.0 > 1.5 x 5.1
    reason, step = D.at_end(losses, L0, 7.9)
    assert "above the step-0 val loss" not in reason and "spike that did not recover" in reason
    assert step == 50
    # the reference is the lowest window mean, not the luckiest single step
    best = min(D.window_means(losses))
    assert f"1.5 x {best:.3f}" in reason


def test_a_run_shorter_than_the_window_is_judged_on_all_its_steps():
    # lr 300 without clipping for 6 steps: the val loss ends near its start, the training loss far above it
    reason, step = D.at_end([6.24, 9.0, 4000.0, 2e5, 3e5, 1e6], 6.24, 6.238)
    assert "spike that did not recover" in reason and step == 2  # 9.0 is below 1.5 x 6.24, 4000 is not
    assert D.at_end([6.24, 6.1, 6.0, 5.9, 5.95, 5.85], 6.24, 6.0) is None


def test_a_final_val_loss_above_the_start_alone_is_diverged_at_the_last_step():
    reason, step = D.at_end(curve(), L0, L0 + 0.01)
    assert reason == "final val loss 8.380 above the step-0 val loss 8.370" and step == 79


def test_non_finite_values_end_the_run_at_once():
    assert D.at_step(float("nan"), 1.0) == "non-finite loss nan"
    assert D.at_step(float("inf"), 1.0) == "non-finite loss inf"
    assert D.at_step(5.0, float("inf")) == "infinite gradient norm"
    assert D.at_step(5.0, float("nan")) == "NaN gradient norm"
    # a method stepping inside backward cannot know the global norm: its NaN is no divergence
    assert D.at_step(5.0, float("nan"), reports_grad_norm=False) == ""
    assert D.at_step(50.0 * L0, 1e6) == ""  # no multiple of the step-0 loss stops a run
    assert D.at_eval(float("nan")).startswith("non-finite val loss") and D.at_eval(5.0) == ""
    assert D.at_end([L0, float("nan")], L0, None) is None  # rule 1 ended it already


def test_settings_come_from_the_train_section_and_are_printed():
    d = Divergence.from_train({"spike_factor": 2.0, "spike_window": 5})
    assert d == Divergence(2.0, 5)
    assert "above 2 x the lower of the step-0 loss and the lowest 5-step mean" in d.text()
    losses = curve()
    losses[70:] = [8.0] * 10  # a 5-step window sees it, a factor of 2 over ~5.1 does not
    assert d.at_end(losses, L0, 7.0) is None and D.at_end(losses, L0, 7.0) is not None


def _run(steps, losses, vals, status="ok"):
    rc = {
        "profile": "p",
        "model": "tiny",
        "method": "fp32",
        "seed": 0,
        "train": {
            "lr": 1.0,
            "steps": steps,
            "spike_factor": 1.5,
            "spike_window": 10,
            "batch_size": 2,
            "seq_len": 4,
            "timing_warmup_steps": 0,
        },
    }
    r = Run(rc, out=None)
    r.events_train = [{"step": i, "loss": v, "tokens_per_s": 1.0, "step_time_s": 1.0} for i, v in enumerate(losses)]
    r.evals = [{"step": s, "val_loss": v} for s, v in vals]
    r.summary["status"] = status
    return r.finalize()


def test_the_loop_turns_a_finished_run_diverged_and_keeps_its_summary():
    losses = [L0, 9.0, 30.0] + [150.0] * 77
    s = _run(80, losses, [(0, L0), (80, 154.0)])
    assert s["status"] == "diverged" and s["diverged_step"] == 1 and s["reason"].startswith("step 1: final val loss")
    assert s["steps"] == 80 and s["final_train_loss"] == pytest.approx(150.0) and s["initial_val_loss"] == L0
    assert "final_val_loss" not in s  # as for every diverged run: no final loss enters a comparison
    ok = _run(80, curve(), [(0, L0), (80, 5.3)])
    assert ok["status"] == "ok" and ok["final_val_loss"] == 5.3
    # a run that stopped early (failed, or diverged on a non-finite value) is not judged again
    failed = _run(80, losses[:40], [(0, L0)], status="failed")
    assert failed["status"] == "failed"


def test_the_rule_a_reason_comes_from_is_named():
    from pipelines.run.divergence import kinds

    reason, _ = D.at_end([L0, 9.0, 30.0] + [150.0] * 77, L0, 154.0)
    assert kinds(reason) == ["above start", "unrecovered spike"]
    assert kinds("step 8: " + D.at_step(5.0, float("inf"))) == ["non-finite"]
    assert kinds("step 3: non-finite val loss nan") == ["non-finite"]
    assert kinds("step 2: loss 30.0 > 3.0 x step-0 loss 8.4") == ["other"] and kinds(None) == ["other"]
