"""The workflow end to end: the smoke profile in a temporary directory, plus dry-run and lint."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, run_cli

WORKFLOW_FILES = [
    "Snakefile",
    "pipelines",
    "environment.yml",
    "environment-gpu.yml",
    "environment-gpu.post-deploy.sh",
    "requirements.txt",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow files (not results) so the test never touches the checkout's results/."""
    wd = tmp_path_factory.mktemp("wf")
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wd / name)
    return wd


def snakemake(workdir, *args, timeout=600):
    return run_cli("-m", "snakemake", "--cores", "2", *args, cwd=workdir, timeout=timeout)


def test_dry_run_and_lint_are_clean(workdir):
    r = snakemake(workdir, "-n", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    r = snakemake(workdir, "--lint")
    assert r.returncode == 0 and "Congratulations" in (r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]


def test_unknown_profile_is_refused(workdir):
    r = snakemake(workdir, "-n", "--config", "profile=nope")
    assert r.returncode != 0 and "valid profiles: " in (r.stdout + r.stderr)


# One run configured to diverge (a variant of fp32 at an absurd peak lr) rides along with the smoke profile:
# it must end `diverged` with its step while the workflow still exits 0 and the report lists it.
DIVERGING = {
    "profiles": {
        "smoke": {
            "variants": {
                "fp32-lr300": {
                    "method": "fp32",
                    "train": {"lr": 300.0, "grad_clip": 0.0},
                    "note": "configured to diverge (test)",
                }
            }
        }
    }
}


def test_smoke_workflow_end_to_end(workdir):
    (workdir / "diverging.yaml").write_text(yaml.safe_dump(DIVERGING))
    args = ("--configfile", "pipelines/config.yaml", "diverging.yaml", "--config", "profile=smoke")
    r = snakemake(workdir, *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    df = pd.read_csv(workdir / "results" / "summary.csv")
    assert set(df["method"]) == {"fp32", "bf16-amp", "bf16-pure", "fp32-lr300"}
    hot = df[df["method"] == "fp32-lr300"].iloc[0]
    assert hot["status"] == "diverged" and str(hot["reason"]).startswith("step "), hot
    step = int(str(hot["reason"]).split()[1].rstrip(":"))
    assert 0 <= step < 20
    report = (workdir / "reports" / "REPORT.md").read_text()
    assert any("fp32-lr300" in ln and "diverged" in ln and f"step {step}" in ln for ln in report.splitlines())
    df = df[df["method"] != "fp32-lr300"]
    assert (df["status"] == "ok").all(), df[["method", "status", "reason"]]
    required = [
        "profile",
        "model",
        "method",
        "seed",
        "device",
        "n_params",
        "steps",
        "tokens",
        "status",
        "reason",
        "final_train_loss",
        "final_val_loss",
        "loss_gap_pct",
        "tokens_per_s",
        "speedup",
        "state_bytes_per_param",
        "weights_bytes",
        "master_bytes",
        "grads_bytes",
        "optim_bytes",
        "peak_mem_bytes",
        "peak_mem_kind",
    ]
    assert not set(required) - set(df.columns)
    ref = df[df["method"] == "bf16-amp"].iloc[0]
    assert ref["loss_gap_pct"] == 0 and ref["speedup"] == 1
    pure = df[df["method"] == "bf16-pure"].iloc[0]
    assert pure["loss_gap_pct"] == pytest.approx(
        100 * (pure["final_val_loss"] - ref["final_val_loss"]) / ref["final_val_loss"]
    )
    for fig in ("loss_curves", "memory", "throughput"):
        assert (workdir / "reports" / "figures" / f"{fig}.png").stat().st_size > 1000
    report = (workdir / "reports" / "REPORT.md").read_text()
    assert "bf16-pure" in report and "figures/loss_curves.png" in report and "figures/train_loss.png" in report
    assert (workdir / "reports" / "figures" / "train_loss.png").stat().st_size > 1000
    assert not (workdir / "reports" / "figures" / "train_loss.empty.txt").exists()  # drawn, not a note
    # what a reader sees speaks of the project, not of how it was developed (tests/test_docs.py: the tree)
    from tests.test_docs import banned_words_in

    written = [workdir / "reports" / "REPORT.md", *sorted((workdir / "results").rglob("*.csv"))]
    assert len(written) > 10
    assert not [(p.name, w) for p in written for w in banned_words_in(p.read_text())]
    # the self-contained HTML report embeds every figure
    r = snakemake(workdir, *args, "--report", "reports/report.html")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    html = (workdir / "reports" / "report.html").read_text(errors="replace")
    from pipelines.report.figures import FIGURES

    assert all(f"{name}.png" in html for name in FIGURES), [n for n in FIGURES if f"{n}.png" not in html]
    from pipelines.report.items import tables_for
    from pipelines.report.tensorboard_export import EVENTS_NAME

    assert all(f"tables/{t}.html" in html for t in tables_for("smoke"))
    landing = (workdir / "reports" / "landing.rst").read_text()
    assert "fp8bench: the answers" in landing and not banned_words_in(landing)
    # per-method lines at the verdicts' lr (fp32-lr300, at another lr, is REPORT.md's, as in the forest figure)
    assert any(ln.startswith("- **bf16-pure** [") and "gap" in ln for ln in landing.splitlines())
    # every run has its TensorBoard event file beside metrics.jsonl (tests/test_tensorboard.py reads them back)
    runs = sorted((workdir / "results" / "runs" / "smoke").glob("*/*/seed*"))
    assert len(runs) == 4 and all((r / EVENTS_NAME).stat().st_size > 100 for r in runs), runs
    # each run's log (no terminal) has its progress lines: after the first step and every train.log_every
    # (10) of its 20 steps; the diverging run's until it stopped
    import re

    for r in runs:
        done = [int(m) for m in re.findall(r"^step (\d+)/20 \(", (r / "train.log").read_text(), flags=re.M)]
        assert done == [1, 10, 20][: len(done)] and (len(done) == 3 or r.parent.name == "fp32-lr300"), (r, done)
    # `snakemake --cores 1 report` rebuilds tables, figures and REPORT.md from the runs on disk, training nothing
    (workdir / "reports" / "REPORT.md").unlink()
    (workdir / "reports" / "figures" / "memory.png").unlink()
    r = run_cli("-m", "snakemake", "report", "--cores", "1", *args, cwd=workdir, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "rule train" not in r.stdout + r.stderr
    assert "fp32-lr300" in (workdir / "reports" / "REPORT.md").read_text()
    assert (workdir / "reports" / "figures" / "memory.png").stat().st_size > 1000
    # a second invocation has nothing to do: outputs are complete and up to date
    r = snakemake(workdir, *args, "-n")
    assert r.returncode == 0 and "Nothing to be done" in (r.stdout + r.stderr)


def test_html_report_opens_on_the_answers_in_a_browser(workdir):
    """The smoke workflow's report.html in headless Chromium: the landing page shows every claim with its
    verdict, every table and figure is a report item linked from it (pipelines/report/browser_check.py); and the
    check fails when a claim or an item is missing."""
    from pipelines.report import browser_check as report_check

    browser = report_check.find_chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; `make test` tries to install it)")
    if not (workdir / "reports" / "report.html").is_file():  # the end-to-end test builds it; alone, build it
        (workdir / "diverging.yaml").write_text(yaml.safe_dump(DIVERGING))
        args = ("--configfile", "pipelines/config.yaml", "diverging.yaml", "--config", "profile=smoke")
        r = snakemake(workdir, *args)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        r = snakemake(workdir, *args, "--report", "reports/report.html")
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    shot, dom_path = workdir / "reports" / "report_landing.png", workdir / "reports" / "report_dom.html"
    r = run_cli(
        "-m",
        "pipelines.report.browser_check",
        "reports/report.html",
        "--screenshot",
        str(shot),
        "--dom-out",
        str(dom_path),
        cwd=workdir,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    from pipelines.report.figures import FIGURES
    from pipelines.report.items import tables_for

    dom = dom_path.read_text()
    claims = pd.read_csv(workdir / "results" / "claims.csv")
    tables, figures = tables_for("smoke"), list(FIGURES)
    assert report_check.check_dom(dom, workdir / "results", tables, figures) == []
    verdict = str(claims["verdict"].iloc[0])
    cut = dom.replace(f"{verdict}</strong>", "?</strong>", 1)
    assert any(
        "claim not on the landing page" in p for p in report_check.check_dom(cut, workdir / "results", tables, figures)
    )
    absent = report_check.check_dom(dom, workdir / "results", [*tables, "no_such_table"], figures)
    assert absent == ["reports/tables/no_such_table.html is not a report item"]
