"""Driver of the GPU reference (``pipelines/gpu/h200.sh``): benchmarks, short training runs, one summary.

Everything lands in ``--out`` as a few flat files:
``meta.json`` (device, date, versions, settings), ``summary.csv`` (one row per run, the columns of
``results/summary.csv``; ``run_dir`` points into the archive), ``fp8_bench.json``, ``optim_bench.json``,
``runs.tar.gz`` (each run's config, metrics and summary), ``driver.log`` and ``log.txt``. Commit them under
``results/reference/<device>/``; the report presents them there.

A time budget bounds the whole script: each step gets what is left, and a run that no longer fits is
recorded as skipped with that reason rather than cut off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from common.atomic import write_json

GPU_METHODS = [
    "bf16-amp",
    "fp8-torchao-tensorwise",
    "fp8-torchao-rowwise",
    "fp8-own-tensorwise",
    "fp8-own-blockwise",
    "fp8-optim",
    "fp8-e2e",
    "fp8-te-delayed",
    "fp8-te-current",
    "fp8-te-block",
]


def run(cmd: list[str], timeout: float, log) -> int:
    print("$", " ".join(cmd), file=log, flush=True)
    try:
        return subprocess.run(cmd, timeout=max(5.0, timeout), stdout=log, stderr=subprocess.STDOUT).returncode
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout:.0f}s", file=log, flush=True)
        return 124


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.gpu.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry", action="store_true", help="CPU, tiny model, few steps: exercise the code path")
    ap.add_argument("--budget-s", type=float, default=540, help="wall-clock budget for everything")
    ap.add_argument("--models", nargs="*", help="model sizes (default: 1b; dry: tiny)")
    ap.add_argument("--methods", nargs="*", default=GPU_METHODS)
    ap.add_argument("--steps", type=int, help="training steps per run (default 40; dry 3)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models (slow to warm up)")
    ap.add_argument("--configfile", help="experiment config passed to every run (default: pipelines/config.yaml)")
    args = ap.parse_args(argv)

    t0 = time.time()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    dry = args.dry
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry to exercise the script on a CPU)", file=sys.stderr)
        return 2
    models = args.models or (["tiny"] if dry else ["1b"])
    steps = args.steps or (3 if dry else 40)
    from common.environment import environment
    from methods.registry import method_names
    from pipelines.run.config import check_choice

    for m in args.methods:
        check_choice("method", m, method_names())
    left = lambda: args.budget_s - (time.time() - t0)  # noqa: E731
    env = environment(torch.device(device))
    meta = {
        "device": env["device_name"],
        "date": dt.date.today().isoformat(),
        "dry": dry,
        "versions": env["versions"],
        "python": env["python"],
        "git_revision": env["git_revision"],
        "models": models,
        "steps": steps,
        "compile": args.compile,
        "budget_s": args.budget_s,
    }
    write_json(out / "meta.json", meta)
    log = (out / "driver.log").open("w")
    py = sys.executable

    # 1. kernel and optimizer benchmarks, GPU sections only (the same commands in dry mode, where they
    #    record that there is no CUDA device; the CPU sections belong to the CPU benchmarks)
    bench = [py, "-m", "benchmarks.fp8_bench", "--out", str(out / "fp8_bench.json"), "--skip-cpu"]
    run(bench, min(120, left() * 0.2), log)
    obench = [py, "-m", "benchmarks.optim_bench", "--out", str(out / "optim_bench.json"), "--no-cpu"]
    run(obench, min(90, left() * 0.2), log)

    # 2. short training runs, one process each, the same batches and initial weights for every method
    summaries = []
    plan = [(mo, me) for mo in models for me in args.methods]
    for i, (model, method) in enumerate(plan):
        rdir = out / "runs" / model / method / "seed0"
        share = left() / max(1, len(plan) - i)
        # The gpu profile's settings in both modes; the dry mode only shrinks the batch to fit a CPU.
        cmd = [
            py,
            "-m",
            "pipelines.train",
            "--profile",
            "gpu",
            "--model",
            model,
            "--method",
            method,
            "--seed",
            "0",
            "--out",
            str(rdir),
            "--steps",
            str(steps),
            "--set",
            f"device={device}",
            "--set",
            f"compile={'true' if args.compile else 'false'}",
            "--set",
            f"eval_every={steps}",
            "--set",
            "checkpoint_every=0",
            "--set",
            f"timing_warmup_steps={max(1, steps // 4)}",
        ]
        if dry:
            cmd += ["--set", "batch_size=2", "--set", "seq_len=64", "--set", "eval_tokens=128", "--set", "threads=1"]
        if args.configfile:
            cmd += ["--configfile", args.configfile]
        if share < (10 if dry else 45):
            from pipelines.run.events import RunWriter

            w = RunWriter(rdir)
            w.event("run_start", config={"method": method, "model": model})
            reason = f"time budget: {share:.0f}s left for this run"
            w.event("run_stop", status="skipped", reason=reason)
            w.finish(
                {
                    "profile": "gpu-reference",
                    "model": model,
                    "method": method,
                    "seed": 0,
                    "status": "skipped",
                    "reason": reason,
                    "run_dir": str(rdir),
                }
            )
        else:
            rc = run(cmd, share, log)
            if rc != 0 and not (rdir / "summary.json").exists():
                from pipelines.run.events import RunWriter

                w = RunWriter(rdir)
                w.finish(
                    {
                        "profile": "gpu-reference",
                        "model": model,
                        "method": method,
                        "seed": 0,
                        "status": "failed",
                        "reason": f"exit code {rc} (see log.txt)",
                        "run_dir": str(rdir),
                    }
                )
        summaries.append(rdir / "summary.json")

    # 3. one table in the report's format, and the run folders in one archive
    from pipelines.analysis.collect import collect, write_csv

    df = collect(summaries)
    df["run_dir"] = [str(Path(p).parent.relative_to(out)) for p in summaries]
    write_csv(df, out / "summary.csv")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        tar.add(out / "runs", arcname="runs")
    import shutil

    shutil.rmtree(out / "runs")  # the archive holds them: the output stays a few flat files
    log.close()
    meta["wall_s"] = round(time.time() - t0, 1)
    write_json(out / "meta.json", meta)
    cols = ["model", "method", "status", "tokens_per_s", "speedup", "state_bytes_per_param", "peak_mem_bytes", "reason"]
    print(df[[c for c in cols if c in df]].to_string(index=False))
    for name in ("fp8_bench.json", "optim_bench.json"):
        p = out / name
        if p.is_file():
            print(f"{name}: {json.dumps(json.loads(p.read_text()))[:1500]}")
    print(f"done in {meta['wall_s']}s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
