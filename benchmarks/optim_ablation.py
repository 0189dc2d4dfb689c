"""The FP8 optimizer-state ablation: which format/transform for Adam's second moment, and what the
recipes around it cost in loss, on the tiny model with the one training loop.

    python -m benchmarks.optim_ablation --seeds 0 1 --steps 300 --out results/ablation/fp8_optim --jobs 2
    python -m benchmarks.optim_ablation --out results/ablation/fp8_optim --summarize   # table only

Each variant is an ordinary run of ``python -m pipelines.train`` (cpu profile defaults) with method
options, so the runs are the same as the workflow's except for the options. Finished runs
(``summary.json`` present) are not repeated. The table (markdown) gives the final validation loss, its
gap to ``bf16-amp`` at the same seed, and the status; it is what ``benchmarks/OPTIM_ABLATION.md``
records.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (label, method, options). The first row is the reference.
VARIANTS = [
    ("bf16-amp (reference)", "bf16-amp", {}),
    ("fp32 m, v; bf16 weights, SR (bf16-pure)", "bf16-pure", {"stochastic_rounding": True}),
    ("v E4M3, plain", "fp8-optim", {"v_transform": "none"}),
    ("v E5M2, plain", "fp8-optim", {"v_format": "e5m2", "v_transform": "none"}),
    ("v E4M3, sqrt", "fp8-optim", {"v_transform": "sqrt"}),
    ("v E5M2, sqrt", "fp8-optim", {"v_format": "e5m2", "v_transform": "sqrt"}),
    ("v E4M3, DRE", "fp8-optim", {"v_transform": "dre"}),
    ("m and v E4M3, DRE (COAT)", "fp8-optim", {"m_transform": "dre", "v_transform": "dre"}),
    ("torchao AdamWFp8 (v E4M3 plain)", "fp8-optim-torchao", {}),
    ("fp8-optim-master (fp32 master)", "fp8-optim-master", {}),
    ("fp8-lean (step in backward)", "fp8-lean", {}),
    ("int8 m, v (torchao AdamW8bit)", "int8-optim-torchao", {}),
    ("fp8-e2e (FP8 linears + FP8 m, v)", "fp8-e2e", {}),
]


def slug(label: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in label.lower())
    return "-".join(p for p in keep.split("-") if p)


def run_one(out: Path, label: str, method: str, opts: dict, seed: int, steps: int) -> Path:
    run_dir = out / f"{slug(label)}" / f"seed{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir
    cmd = [
        sys.executable,
        "-m",
        "pipelines.train",
        "--model",
        "tiny",
        "--method",
        method,
        "--seed",
        str(seed),
        "--steps",
        str(steps),
        "--out",
        str(run_dir),
    ]
    for k, v in opts.items():
        cmd += ["--method-option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(run_dir / "stderr.log", "w") as err:
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, check=False)
    print(f"{label} seed {seed}: {time.time() - t:.0f} s", file=sys.stderr)
    return run_dir


def load_rows(out: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for label, method, opts in VARIANTS:
        for seed in seeds:
            f = out / slug(label) / f"seed{seed}" / "summary.json"
            if not f.exists():
                continue
            s = json.loads(f.read_text())
            rows.append(
                {
                    "label": label,
                    "method": method,
                    "options": opts,
                    "seed": seed,
                    **{
                        k: s.get(k)
                        for k in (
                            "status",
                            "reason",
                            "final_val_loss",
                            "final_train_loss",
                            "initial_val_loss",
                            "state_bytes_per_param",
                            "optim_bytes",
                            "n_params",
                            "tokens_per_s",
                            "diverged_step",
                        )
                    },
                }
            )
    ref = {r["seed"]: r["final_val_loss"] for r in rows if r["method"] == "bf16-amp" and r["final_val_loss"]}
    for r in rows:
        base = ref.get(r["seed"])
        r["gap_pct"] = (100 * (r["final_val_loss"] - base) / base) if base and r["final_val_loss"] else None
        r["max_grad_norm"] = _max_grad_norm(out / slug(r["label"]) / f"seed{r['seed']}")
    return rows


def _max_grad_norm(run_dir: Path) -> float | None:
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return None
    norms = [
        e["grad_norm"]
        for e in map(json.loads, f.read_text().splitlines())
        if e.get("event") == "train_step" and e.get("step", 0) >= 30 and e["grad_norm"] == e["grad_norm"]
    ]
    return max(norms) if norms else None


def markdown(rows: list[dict], seeds: list[int]) -> str:
    lines = [
        "| variant | method, options | "
        + " | ".join(f"val loss s{s} (gap)" for s in seeds)
        + " | status | optim B/param | max grad norm (step>=30) |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for label, method, opts in VARIANTS:
        rs = {r["seed"]: r for r in rows if r["label"] == label}
        if not rs:
            continue
        cells = []
        for s in seeds:
            r = rs.get(s)
            if r is None:
                cells.append("-")
            elif r["final_val_loss"] is None:
                cells.append(f"{r['status']}")
            else:
                gap = "" if r["gap_pct"] is None else f" ({r['gap_pct']:+.2f}%)"
                cells.append(f"{r['final_val_loss']:.4f}{gap}")
        statuses = ", ".join(
            sorted(
                {
                    f"{r['status']}" + (f" at step {r['diverged_step']}" if r.get("diverged_step") is not None else "")
                    for r in rs.values()
                }
            )
        )
        any_r = next(iter(rs.values()))
        ob = any_r["optim_bytes"] / any_r["n_params"] if any_r.get("optim_bytes") and any_r.get("n_params") else None
        gn = max((r["max_grad_norm"] for r in rs.values() if r["max_grad_norm"] is not None), default=None)
        opt_s = ", ".join(f"{k}={v}" for k, v in opts.items())
        lines.append(
            f"| {label} | `{method}`{' ' + opt_s if opt_s else ''} | "
            + " | ".join(cells)
            + f" | {statuses} | {'' if ob is None else f'{ob:.3f}'} | {'' if gn is None else f'{gn:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/ablation/fp8_optim")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses the profile's threads)")
    ap.add_argument("--only", nargs="*", help="labels (slugs) to run")
    ap.add_argument("--summarize", action="store_true", help="only print the table of finished runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.summarize:
        todo = [(lab, m, o, s) for s in args.seeds for lab, m, o in VARIANTS if not args.only or slug(lab) in args.only]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda t: run_one(out, *t, args.steps), todo))
    rows = load_rows(out, args.seeds)
    (out / "ablation.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
