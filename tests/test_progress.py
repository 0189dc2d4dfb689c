"""Progress lines (pipelines/run/progress.py) with a fake clock: when a line is due (the first step, every N
steps, the last step, 60 s after the previous line), what it says (tokens/s from the steps' own timing without
the probed ones, elapsed, ETA), and how durations and rates are written."""

import math

import pytest

from pipelines.run.progress import Progress, duration, rate


def feed_all(p: Progress, steps, t0=0.0, wall_per_step=1.0, tokens=512, step_time_s=0.5, probed=()):
    """Feed steps ``steps`` (counts of steps done), each ``wall_per_step`` s after the previous; the lines."""
    out = {}
    for i, done in enumerate(steps, start=1):
        line = p.feed(done, 5.0 - done / 100, tokens, step_time_s, t0 + i * wall_per_step, probed=done in probed)
        if line:
            out[done] = line
    return out


def test_a_line_after_the_first_step_every_n_steps_and_at_the_last():
    p = Progress(total=25, start_step=0, now=0.0, every_steps=10)
    lines = feed_all(p, range(1, 26))
    assert sorted(lines) == [1, 10, 20, 25]
    assert lines[10] == "step 10/25 (40%)  loss 4.900  tok/s 1.0k  elapsed 10s  eta 15s"
    assert lines[25].startswith("step 25/25 (100%)  loss 4.750") and lines[25].endswith("eta 0s")


def test_a_slow_run_writes_a_line_every_60_seconds_between_the_n_step_ones():
    p = Progress(total=1000, start_step=0, now=100.0, every_steps=500)
    lines = feed_all(p, range(1, 200), t0=100.0, wall_per_step=25.0)  # 25 s a step: a line every 3rd step
    assert sorted(lines)[:5] == [1, 4, 7, 10, 13]
    assert lines[4] == "step 4/1000 (0%)  loss 4.960  tok/s 1.0k  elapsed 1m40s  eta 6h55m"
    # the clock restarts at every line, whatever made it due
    p = Progress(total=100, start_step=0, now=0.0, every_steps=10)
    assert p.feed(1, 1.0, 1, 1.0, now=0.1)
    assert p.feed(5, 1.0, 1, 1.0, now=59.0) is None
    assert p.feed(6, 1.0, 1, 1.0, now=60.5)
    assert p.feed(9, 1.0, 1, 1.0, now=120.0) is None
    assert p.feed(10, 1.0, 1, 1.0, now=120.2)  # every 10 steps
    assert p.feed(11, 1.0, 1, 1.0, now=170.0) is None  # 60 s counted from step 10's line


def test_tokens_per_second_leave_out_probed_steps_and_eta_counts_from_the_resume():
    p = Progress(total=100, start_step=40, now=1000.0, every_steps=10)
    assert p.feed(41, 3.0, 1000, 0.5, now=1002.0).startswith("step 41/100 (41%)  loss 3.000  tok/s 2.0k  elapsed 2s")
    for done in range(42, 50):
        assert p.feed(done, 3.0, 1000, 0.25, now=1000.0 + 2 * (done - 40)) is None
    # step 50 was probed (4 s for the same tokens): left out of the rate, which is that of steps 42-49
    line = p.feed(50, 2.5, 1000, 4.0, now=1020.0, probed=True)
    assert line == "step 50/100 (50%)  loss 2.500  tok/s 4.0k  elapsed 20s  eta 1m40s"  # 10 steps in 20 s, 50 left
    # where every step since the last line was probed, the rate is theirs
    for done in range(51, 61):
        line = p.feed(done, 2.0, 1000, 2.0, now=1020.0 + done - 50, probed=True)
    assert "tok/s 500  " in line


def test_a_non_finite_loss_is_written_as_it_is():
    p = Progress(total=10, start_step=0, now=0.0)
    assert p.feed(1, float("nan"), 10, 1.0, now=1.0).startswith("step 1/10 (10%)  loss nan  tok/s 10  ")
    assert "loss inf" in Progress(total=10, start_step=0, now=0.0).feed(1, math.inf, 10, 1.0, now=1.0)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (42.4, "42s"),
        (59.6, "1m00s"),
        (62, "1m02s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (11_100, "3h05m"),
        (-3, "0s"),
    ],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "x, text",
    [(0, "0"), (840.4, "840"), (8_400, "8.4k"), (999_949, "999.9k"), (1_254_000, "1.25M"), (float("nan"), "?")],
)
def test_rate(x, text):
    assert rate(x) == text
