"""The one training loop through its CLI: determinism, identical batches, statuses, bad input."""

import json
from pathlib import Path

import pytest
import yaml

from pipelines.run.events import read_events
from tests.conftest import run_cli, train_argv, write_small_config


@pytest.fixture(scope="module")
def configfile(tmp_path_factory) -> Path:
    """The real config with a small corpus, a small vocabulary and results in a temp folder."""
    return write_small_config(
        tmp_path_factory.mktemp("train"), steps=6, eval_every=3, eval_tokens=256, warmup_steps=2, timing_warmup_steps=1
    )


def train(configfile, out, method="fp32", seed=0, *extra):
    return run_cli(*train_argv(configfile, method, out, *extra, seed=seed))


def refused(capsys, *argv):
    """``pipelines.run.train`` in this process (a refusal exits before any work, so no subprocess is needed to
    see it; saves the ~3 s start of one per case): its exit code and stderr."""
    from pipelines.run import train as T

    capsys.readouterr()
    try:
        rc = T.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    return rc, capsys.readouterr().err


def steps(out):
    return [e for e in read_events(Path(out) / "metrics.jsonl") if e["event"] == "train_step"]


def summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="module")
def fp32_run(configfile, tmp_path_factory) -> Path:
    """One fp32 run of the module's config, which the tests below read (each run is a ~5 s process)."""
    out = tmp_path_factory.mktemp("fp32") / "a"
    r = train(configfile, out)
    assert r.returncode == 0, r.stderr
    (out.parent / "stderr.txt").write_text(r.stderr)  # a pipe, not a terminal: what a run's log gets
    return out


def test_same_method_same_seed_is_bit_identical(configfile, fp32_run, tmp_path):
    r = train(configfile, tmp_path / "b")
    assert r.returncode == 0, r.stderr
    la = [e["loss"] for e in steps(fp32_run)]
    lb = [e["loss"] for e in steps(tmp_path / "b")]
    assert len(la) == 6 and la == lb
    s = summary(fp32_run)
    assert s["status"] == "ok" and s["final_val_loss"] < s["initial_val_loss"]
    assert {"config.json", "metrics.jsonl", "summary.json"} <= {p.name for p in fp32_run.iterdir()}


def test_every_method_sees_the_same_batches(configfile, fp32_run, tmp_path):
    dirs = {"fp32": fp32_run, "bf16-amp": tmp_path / "bf16-amp", "bf16-pure": tmp_path / "bf16-pure"}
    hashes = {}
    for m, out in dirs.items():
        if m != "fp32":
            r = train(configfile, out, m)
            assert r.returncode == 0, r.stderr
        hashes[m] = [e["batch_hash"] for e in steps(out)]
    assert hashes["fp32"] == hashes["bf16-amp"] == hashes["bf16-pure"]
    assert len(set(hashes["fp32"])) == 6  # and they differ from step to step
    s = {m: summary(out) for m, out in dirs.items()}
    assert s["bf16-pure"]["state_bytes_per_param"] == pytest.approx(12.0, abs=0.1)


def test_progress_lines_reach_a_log_that_is_no_terminal(fp32_run):
    """Without a terminal (the workflow sends stderr to train.log) the run still says how far it is: a line
    after its first step, every train.log_every steps (10 here, more than the run's 6) and after its last."""
    import re

    err = (fp32_run.parent / "stderr.txt").read_text()
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    pattern = r"step (\d+)/6 \(\d+%\)  loss \d+\.\d{3}  tok/s [\d.]+k?  elapsed \S+  eta \S+"
    assert all(re.fullmatch(pattern, ln) for ln in lines), lines
    assert [int(re.match(pattern, ln).group(1)) for ln in lines] == [1, 6]
    losses = [e["loss"] for e in steps(fp32_run)]
    assert lines[-1].split("loss ")[1].startswith(f"{losses[-1]:.3f} ")  # the last step's loss


def test_events_are_complete(fp32_run):
    events = read_events(fp32_run / "metrics.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_stop"
    start = events[0]
    assert start["config"]["method"] == "fp32" and start["environment"]["versions"]["torch"]
    assert "nvte_env" in start["environment"]
    mem = next(e for e in events if e["event"] == "memory")
    assert set(mem["bytes"]) == {"weights", "master", "grads", "optim", "meta"}
    st = steps(fp32_run)[0]
    assert {"step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "batch_hash"} <= set(st)
    assert [e["step"] for e in events if e["event"] == "eval"] == [0, 3, 6]
    s = summary(fp32_run)
    assert s["peak_mem_kind"] == "cpu_peak_rss" and s["peak_mem_bytes"] > 0
    assert s["compile_status"] == "off" == events[-1]["compile_status"]  # train.compile is false (cpu profile)
    assert not (fp32_run / "metrics.partial.jsonl").exists()


def test_diverging_run_is_recorded_and_exits_zero(configfile, tmp_path):
    r = train(configfile, tmp_path / "d", "fp32", 0, "--lr", "300", "--set", "grad_clip=0")
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path / "d")
    assert s["status"] == "diverged", s
    assert s["reason"].startswith(f"step {s['diverged_step']}:")
    assert "final_val_loss" not in s or s["final_val_loss"] is None


def test_failing_run_is_recorded(configfile, tmp_path, monkeypatch):
    from methods.base import Trainee
    from pipelines.run import train as T

    def boom(self, x, y, lr):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(Trainee, "train_step", boom)
    rc = T.main(
        [
            "--configfile",
            str(configfile),
            "--model",
            "tiny",
            "--method",
            "fp32",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert rc == 0
    s = summary(tmp_path / "f")
    assert s["status"] == "failed" and "simulated kernel failure" in s["reason"]


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--method", "fp33", "unknown method 'fp33'; valid methods: "),
        ("--model", "huge", "unknown model 'huge'; valid models: tiny, small"),
        ("--profile", "cpux", "unknown profile 'cpux'; valid profiles: "),
    ],
)
def test_unknown_names_fail_before_work(configfile, tmp_path, flag, value, message, capsys):
    args = {"--method": "fp32", "--model": "tiny", "--profile": "cpu", flag: value}
    argv = ["--configfile", configfile, "--seed", "0", "--out", tmp_path / "x", *[a for kv in args.items() for a in kv]]
    rc, err = refused(capsys, *argv)
    assert rc == 2 and message in err
    assert not (tmp_path / "x" / "metrics.partial.jsonl").exists()
    if flag == "--method":  # and once as a process: the exit status the workflow sees
        r = run_cli("-m", "pipelines.train", *map(str, argv))
        assert r.returncode == 2 and message in r.stderr


def test_malformed_config_names_the_bad_key(configfile, tmp_path, capsys):
    cfg = yaml.safe_load(configfile.read_text())
    cfg["train"]["stepz"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    argv = ["--configfile", bad, "--model", "tiny", "--method", "fp32", "--seed", "0", "--out", tmp_path / "x"]
    rc, err = refused(capsys, *argv)
    assert rc == 2 and "config key train" in err and "'stepz' was unexpected" in err
    cfg["train"].pop("stepz")
    cfg["train"]["lr"] = "fast"
    bad.write_text(yaml.safe_dump(cfg))
    rc, err = refused(capsys, *argv)
    assert rc == 2 and "config key train.lr" in err


def test_bad_run_config_json_names_the_key(tmp_path, fp32_run, capsys):
    rc = json.loads((fp32_run / "config.json").read_text())
    rc["train"]["batchsize"] = 3
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(rc))
    code, err = refused(capsys, "--config", p, "--out", tmp_path / "y")
    assert code == 2 and "run config key train" in err and "batchsize" in err


@pytest.mark.parametrize(
    "args,message",
    [
        # the table of issue 14, row by row
        (["--steps", "-3"], "config key train.steps = -3: -3 is less than the minimum of 1; valid: an integer >= 1"),
        (["--lr", "nan"], "config key train.lr = nan: must be a finite number; valid: a number > 0"),
        (
            ["--batch-size", "0"],
            "config key train.batch_size = 0: 0 is less than the minimum of 1; valid: an integer >= 1",
        ),
        (
            ["--method", "fp8-optim", "--method-option", "block_size=-1"],
            "method fp8-optim: option block_size = -1; valid: a whole number >= 1",
        ),
        (
            ["--seq-len", "100000"],
            "config key train.seq_len = 100000: exceeds tiny's max_seq_len 1024; valid: an integer in [2, 1024]",
        ),
        # and the other ways in
        (["--set", "eval_every=0"], "config key train.eval_every = 0"),
        (
            ["--set", "device=tpu"],
            "config key train.device = 'tpu': 'tpu' is not one of ['cpu', 'cuda', 'auto']; "
            "valid: one of cpu, cuda, auto",
        ),
        (
            ["--method", "zero2-bf16", "--batch-size", "7"],
            "train.batch_size = 7: method zero2-bf16 runs as 2 ranks; valid: a multiple of 2",
        ),
    ],
)
def test_bad_flags_are_refused_before_any_work(configfile, tmp_path, args, message, capsys):
    """Flags, --set overrides and method options meet one set of rules: exit 2, one line naming the key, the
    value and what is valid, and nothing written (no summary.json, no event log, not even the folder)."""
    out = tmp_path / "x"
    rc, err = refused(
        capsys, "--configfile", configfile, "--model", "tiny", "--method", "fp32", "--seed", "0", "--out", out, *args
    )
    assert rc == 2, err[-1500:]
    assert message in err
    assert err.strip().count("\n") == 0 and err.startswith("error: "), err  # one line, no traceback
    assert not out.exists()


def test_a_corpus_too_small_for_one_batch_is_refused_naming_the_file(tmp_path):
    """Exit 2, the file named, before the model is built; no summary.json is written for refused input."""
    src = tmp_path / "tiny.txt"
    src.write_text("".join(f"line {i} of a small text\n" for i in range(400)), encoding="utf-8")
    (tmp_path / "cfg").mkdir()
    cfg = yaml.safe_load(write_small_config(tmp_path / "cfg").read_text())
    cfg["data"]["files"] = [str(src)]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "x"
    r = train(path, out, "fp32", 0, "--batch-size", "64", "--set", "eval_tokens=64")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"error: data.files {src} is too small: its training split" in r.stderr
    assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()


def test_telemetry_steps_probe_lost_updates_into_events_summary_and_figure(configfile, tmp_path):
    """bf16-pure's weights are bf16: on the telemetry steps (0, 3 and the last) the loop has the step measure
    which updates round away; those steps carry the shares, are marked `probed` and stay out of the tokens/s
    median; the summary holds their means (after step 0) and the figure draws them."""
    import pandas as pd

    from pipelines.analysis.collect import collect
    from pipelines.report.figures import FigureData, fig_lost_updates, load_events

    r = train(configfile, tmp_path / "pure", "bf16-pure", 0, "--set", "telemetry_every=3")
    assert r.returncode == 0, r.stderr
    ev = steps(tmp_path / "pure")
    probed = [e["step"] for e in ev if e.get("probed")]
    assert probed == [0, 3, 5]
    for e in ev:
        if e.get("probed"):
            assert 0 <= e["lost_pred_frac"] <= 1 and 0 <= e["unchanged_frac"] <= 1
            # nearest rounding of bf16: the prediction is the measurement (methods.fp8.lost_updates)
            assert e["lost_pred_frac"] == pytest.approx(e["unchanged_frac"], abs=1e-6)
        else:
            assert "lost_pred_frac" not in e
    s = summary(tmp_path / "pure")
    later = [e for e in ev if e.get("probed") and e["step"] > 0]
    assert s["lost_pred_frac_mean"] == pytest.approx(sum(e["lost_pred_frac"] for e in later) / len(later))
    timed = sorted(e["tokens_per_s"] for e in ev[1:] if not e.get("probed"))  # timing_warmup_steps 1
    assert s["tokens_per_s"] == pytest.approx(
        timed[len(timed) // 2] if len(timed) % 2 else (timed[len(timed) // 2 - 1] + timed[len(timed) // 2]) / 2
    )
    table = collect([tmp_path / "pure" / "summary.json"])
    assert table["lost_pred_frac_mean"].iloc[0] == pytest.approx(s["lost_pred_frac_mean"])
    curves, tele, probes = load_events(table)
    assert list(probes["step"]) == [0, 3, 5]
    assert not isinstance(fig_lost_updates(FigureData(table, curves, tele, probes)), str)
    assert isinstance(fig_lost_updates(FigureData(pd.DataFrame(columns=table.columns))), str)
