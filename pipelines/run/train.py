"""The one training loop, for every method.

    python -m pipelines.train --model tiny --method fp32 --seed 0 --steps 50 --out DIR
    python -m pipelines.train --config DIR/config.json          # what Snakemake runs

Flags override the profile's defaults (``--profile``, default ``cpu``). The loop never asks which
method it runs: it builds the seeded fp32 model, hands it to ``method.build`` and drives the returned
Trainee. Outputs in ``--out``: ``config.json`` (resolved), ``metrics.jsonl`` (events), ``summary.json``.
A run that fails or diverges still ends with status and reason written, and exits 0: one bad recipe
must not take the other runs of a workflow down. Bad input exits 2 before any work, and so does a run
folder that another process is writing (``pipelines.run.dirlock``: one writer per folder). Progress lines
(``pipelines.run.progress``) go to stderr every ``train.log_every`` steps or 60 seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from common.atomic import write_json
from common.environment import environment
from pipelines.run import checkpoint, dirlock, dist_checkpoint, launch
from pipelines.run import config as config_mod
from pipelines.run import progress as progress_mod
from pipelines.run.config import ConfigError
from pipelines.run.data import Batches, Corpus, CorpusError, batch_hash, check_corpus, prepare
from pipelines.run.divergence import Divergence
from pipelines.run.events import RunWriter
from pipelines.run.progress import Progress
from pipelines.run.validate import check_run, load_run_config

#: what a probed step measures of the low-precision weights' update (methods.fp8.lost_updates), averaged into
#: the summary as ``<key>_mean``
LOST_UPDATE_KEYS = ("lost_pred_frac", "unchanged_frac", "lost_bias")

TRAIN_FLAGS = {  # CLI flag → train key
    "steps": "steps",
    "lr": "lr",
    "batch_size": "batch_size",
    "seq_len": "seq_len",
    "threads": "threads",
    "device": "device",
    "eval_every": "eval_every",
}


def lr_at(step: int, train: dict) -> float:
    """Linear warm-up to ``lr``, then cosine to ``lr * min_lr_ratio`` at the last step."""
    lr, warm, total = train["lr"], train["warmup_steps"], train["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = lr * train["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    """State of one training run; ``execute`` returns the summary dict."""

    def __init__(self, rc: dict, out: Path):
        self.rc, self.out, self.train = rc, out, rc["train"]
        self.events_train: list[dict] = []
        self.evals: list[dict] = []
        self.first_loss: float | None = None
        self.rank, self.world = launch.rank_info()  # (0, 1) unless one of a multi-rank run's ranks
        self.summary: dict = {k: rc[k] for k in ("profile", "model", "method", "seed")}
        if rc.get("variant"):  # reported under the variant's name; the registered method is kept beside it
            self.summary.update(method=rc["variant"], base_method=rc["method"], method_options=rc["method_options"])
        self.summary.update(status="ok", reason="", run_dir=str(out), lr=rc["train"]["lr"])

    # -- pieces -------------------------------------------------------------------------------
    def setup(self, writer: RunWriter, resumed: bool = False):
        from methods.base import HParams, RunContext
        from methods.registry import get_method
        from models.config import get_model_config
        from models.llama import build_model

        rc, train = self.rc, self.train
        self.method = get_method(rc["method"], **rc["method_options"])
        self.device = launch.rank_device(pick_device(train["device"]))
        torch.manual_seed(rc["seed"])
        self.env = environment(self.device)
        self.summary["device"] = self.env["device_name"]
        if resumed:
            writer.event("resume", environment=self.env)
        else:
            writer.event(
                "run_start",
                config=rc,
                environment=self.env,
                method_options=self.method.options(),
                world_size=self.method.world_size,
            )
        unmet = self.method.unmet()
        if unmet:
            return "; ".join(unmet)
        self.corpus = Corpus.open(prepare(rc["data"], rc["data"]["dir"]))
        check_corpus(self.corpus, train)  # too small for a batch or the eval set: refused before the model
        mcfg = get_model_config(rc["model"]).with_vocab(self.corpus.vocab_size)
        if train["seq_len"] > mcfg.max_seq_len:
            raise ConfigError(
                f"train.seq_len {train['seq_len']} exceeds {rc['model']}'s max_seq_len {mcfg.max_seq_len}"
            )
        self.model_cfg = mcfg
        model = build_model(mcfg, seed=rc["seed"], device=self.device)  # fp32, before any conversion
        ctx = RunContext(
            device=self.device,
            seed=rc["seed"],
            threads=train["threads"],
            compile=train["compile"],
            rank=self.rank,
            world_size=self.world,
            extra={"batch_size": train["batch_size"]},
        )
        self.trainee = self.method.build(model, HParams.from_train(train), ctx)
        self.batches = Batches(self.corpus, train["batch_size"], train["seq_len"], train["data_seed"])
        self.val = [(x.to(self.device), y.to(self.device)) for x, y in self.batches.val_batches(train["eval_tokens"])]
        self.summary["n_params"] = self.trainee.n_params()
        if not resumed:
            writer.event("model", model_config=mcfg.to_dict(), n_params=self.summary["n_params"])
        return None

    def evaluate(self, writer: RunWriter, step: int) -> float:
        # mean over tokens: the last batch of the set may hold fewer rows than the others
        val = sum(self.trainee.eval_loss(x, y) * x.shape[0] for x, y in self.val) / sum(x.shape[0] for x, _ in self.val)
        self.evals.append({"step": step, "val_loss": val})
        writer.event("eval", step=step, val_loss=val)
        return val

    def record_memory(self, writer: RunWriter) -> None:
        mem = self.trainee.memory()
        n = self.summary["n_params"]
        total = sum(mem.values())
        self.summary.update({f"{k}_bytes": v for k, v in mem.items()})
        self.summary["state_bytes"] = total
        self.summary["state_bytes_per_param"] = total / n
        writer.event("memory", after_step=0, bytes=mem, state_bytes=total, state_bytes_per_param=total / n, n_params=n)

    # -- the loop -----------------------------------------------------------------------------
    def loop_state(self) -> dict:
        return {
            "events_train": self.events_train,
            "evals": self.evals,
            "summary": self.summary,
            "first_loss": self.first_loss,
        }

    def restore(self, ck: dict) -> int:
        """Load a checkpoint into the built trainee; returns the step to continue from."""
        if "sharded" in ck:  # a multi-rank run's: each rank loads its share through its engine
            self.trainee.load_sharded(*ck["sharded"])
        else:
            self.trainee.load_state_dict(ck["trainee"])
        loop = ck["loop"]
        self.events_train, self.evals, self.first_loss = loop["events_train"], loop["evals"], loop["first_loss"]
        self.summary.update({k: v for k, v in loop["summary"].items() if k not in ("device",)})
        checkpoint.set_rng_states(ck["rng"])
        return ck["step"]

    def loop(self, writer: RunWriter, start: int = 0) -> None:
        train = self.train
        tokens_per_step = train["batch_size"] * train["seq_len"]
        # Engines whose state is partitioned over ranks (ZeRO, DDP, FSDP2) have no single-file checkpoint:
        # they save their shares through their engine (pipelines.run.dist_checkpoint); others cannot resume.
        single = getattr(self.trainee, "checkpointable", True)
        sharded = not single and hasattr(self.trainee, "save_sharded")
        every = train.get("checkpoint_every", 0) if single or sharded else 0
        if start == 0:
            self.evaluate(writer, 0)
        # Plain progress lines on stderr (the run's log under the workflow), terminal or not; rank 0's only
        progress = (
            Progress(
                train["steps"], start, time.monotonic(), every_steps=train.get("log_every", progress_mod.EVERY_STEPS)
            )
            if self.rank == 0
            else None
        )
        for step in range(start, train["steps"]):
            x, y = self.batches.get(step)
            h = batch_hash(x)
            x, y = x.to(self.device), y.to(self.device)
            lr = lr_at(step, train)
            # on telemetry steps a recipe with low-precision weights also measures which updates round away
            # (methods.fp8.lost_updates); the probe leaves the trajectory bit for bit as it is, but costs time,
            # so probed steps are marked and left out of the tokens/s median
            self.trainee.probe_updates = self.telemetry_step(step)
            _sync(self.device)
            t0 = time.perf_counter()
            res = self.trainee.train_step(x, y, lr)
            _sync(self.device)
            dt = time.perf_counter() - t0
            self.trainee.probe_updates = False
            ev = {
                "step": step,
                "loss": res.loss,
                "lr": lr,
                "grad_norm": res.grad_norm,
                "step_time_s": dt,
                "tokens_per_s": tokens_per_step / dt,
                "batch_hash": h,
            }
            if res.extra:
                ev.update(res.extra, probed=True)
            writer.event("train_step", **ev)
            self.events_train.append(ev)
            if step == 0:
                self.record_memory(writer)
                self.first_loss = res.loss
            if self.telemetry_step(step):
                rows = self.trainee.telemetry()
                if rows:
                    writer.event("telemetry", step=step, layers=rows)
                    self.digest_telemetry(rows)
            why = self.divergence(res, self.first_loss)
            if why:
                self.summary.update(status="diverged", reason=f"step {step}: {why}", diverged_step=step)
                break
            done = step + 1
            line = progress and progress.feed(
                done, res.loss, tokens_per_step, dt, time.monotonic(), probed=bool(res.extra)
            )
            if line:
                print(line, file=sys.stderr, flush=True)
            if done % train["eval_every"] == 0 or done == train["steps"]:
                val = self.evaluate(writer, done)
                if not math.isfinite(val):
                    self.summary.update(
                        status="diverged", reason=f"step {step}: non-finite val loss", diverged_step=step
                    )
                    break
            if every and done % every == 0 and done < train["steps"] and sharded:
                dist_checkpoint.save(
                    self.out, self.rc, done, self.trainee, self.loop_state(), writer.offset(), self.rank, self.world
                )
            elif every and done % every == 0 and done < train["steps"]:
                checkpoint.save(self.out, self.rc, done, self.trainee.state_dict(), self.loop_state(), writer.offset())

    def telemetry_step(self, step: int) -> bool:
        return step % self.train["telemetry_every"] == 0 or step == self.train["steps"] - 1

    def digest_telemetry(self, rows: list[dict]) -> None:
        """Keep the worst value of each numeric telemetry field over layers and steps in the summary
        (``telemetry_max_<field>``), so tables can show e.g. how many v values an FP8 optimizer flushed
        without reading every run's event log. Lives in the summary, hence in checkpoints too."""
        for row in rows:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    key = f"telemetry_max_{k}"
                    self.summary[key] = max(self.summary.get(key, v), v)

    def divergence(self, res, first_loss: float | None) -> str:
        # what ends a run at once: a non-finite value (pipelines.run.divergence defines "diverged")
        return Divergence.at_step(res.loss, res.grad_norm, self.method_has_grad_norm())

    def judge_end(self) -> None:
        """The divergence rules judged once a run ran all its steps (pipelines.run.divergence): a final val
        loss above the step-0 one, or a loss spike that did not recover, make the finished run ``diverged``."""
        s = self.summary
        if s["status"] != "ok" or len(self.events_train) != self.train["steps"] or len(self.evals) < 2:
            return
        found = Divergence.from_train(self.train).at_end(
            [e["loss"] for e in self.events_train], self.evals[0]["val_loss"], self.evals[-1]["val_loss"]
        )
        if found:
            s.update(status="diverged", reason=f"step {found[1]}: {found[0]}", diverged_step=found[1])

    def method_has_grad_norm(self) -> bool:
        # Methods that step inside backward (fp8-lean) cannot know the global norm and report NaN.
        return getattr(self.trainee, "reports_grad_norm", True)

    def finalize(self) -> dict:
        self.judge_end()
        s, train = self.summary, self.train
        steps = self.events_train
        s["steps"] = len(steps)
        s["tokens"] = len(steps) * train["batch_size"] * train["seq_len"]
        if steps:
            tail = [e["loss"] for e in steps[-min(10, len(steps)) :]]
            s["final_train_loss"] = sum(tail) / len(tail)
            after = steps[train["timing_warmup_steps"] :] or steps
            timed = [e for e in after if not e.get("probed")] or after
            s["tokens_per_s"] = statistics.median(e["tokens_per_s"] for e in timed)
            s["step_time_s"] = statistics.median(e["step_time_s"] for e in timed)
            # the lost-update measure over the probed steps after the first (step 0's update is Adam's sign step)
            probed = [e for e in steps if e.get("probed") and e["step"] > 0]
            for k in LOST_UPDATE_KEYS:
                vals = [e[k] for e in probed if e.get(k) is not None and math.isfinite(e[k])]
                if vals:
                    s[f"{k}_mean"] = sum(vals) / len(vals)
        if self.evals:
            s["initial_val_loss"] = self.evals[0]["val_loss"]
            if s["status"] == "ok":
                s["final_val_loss"] = self.evals[-1]["val_loss"]
        return s

    def open_writer(self) -> tuple[RunWriter, dict | None]:
        # only rank 0 writes; every rank reads the committed multi-rank checkpoint alike (a sharded engine in
        # one process, e.g. ZeRO with ranks=1, writes that kind too)
        if self.world > 1 or dist_checkpoint.exists(self.out):
            ck, note = dist_checkpoint.load(self.out, self.rc, self.rank, self.world)
            if note and self.rank == 0:
                print(f"note: {note}", file=sys.stderr)
            offset = ck["metrics_offset"] if ck is not None else None
            return launch.rank_writer(self.out, self.rank, resume_offset=offset), ck
        ck, note = checkpoint.load(self.out, self.rc)
        if ck is not None:
            try:
                return RunWriter(self.out, resume_offset=ck["metrics_offset"]), ck
            except ValueError as e:
                note = f"{e}; starting over"
        if note:
            print(f"note: {note}", file=sys.stderr)
        checkpoint.remove(self.out)
        return RunWriter(self.out), None

    def execute(self) -> dict:
        t_start = time.perf_counter()
        writer, ck = self.open_writer()
        try:
            unmet = self.setup(writer, resumed=ck is not None)
            if unmet:
                self.summary.update(status="skipped", reason=unmet)
            else:
                start = self.restore(ck) if ck is not None else 0
                if ck is not None:
                    print(f"note: resuming after step {start}", file=sys.stderr)
                self.loop(writer, start)
        except (ConfigError, CorpusError):
            writer.event("run_stop", status="failed", reason="bad input")
            raise
        except Exception as e:  # noqa: BLE001 - recorded as this run's failure, not the workflow's
            self.summary.update(status="failed", reason=f"{type(e).__name__}: {e}")
            traceback.print_exc()
        self.finalize()
        if hasattr(self, "device"):
            self.summary["peak_mem_bytes"], self.summary["peak_mem_kind"] = peak_memory(self.device)
        self.summary["world_size"] = getattr(getattr(self, "method", None), "world_size", 1)
        trainee = getattr(self, "trainee", None)  # none where the run was skipped or failed before its build
        # what train.compile did, read at the end: a fallback can happen at any step's first compiled call
        self.summary["compile_status"] = (
            trainee.compile_status if trainee is not None else ("off" if not self.train["compile"] else "not built")
        )
        if trainee is not None and trainee.compile_status != "off":
            self.summary.update(
                compile_graphs=trainee.compile_graphs, compile_graph_breaks=trainee.compile_graph_breaks
            )
        self.summary["wall_time_s"] = time.perf_counter() - t_start
        writer.event(
            "run_stop",
            status=self.summary["status"],
            reason=self.summary["reason"],
            steps=self.summary.get("steps", 0),
            compile_status=self.summary["compile_status"],
        )
        writer.finish(self.summary)
        checkpoint.remove(self.out)
        if self.rank == 0:  # after the last collective: no rank reads it any more
            dist_checkpoint.remove(self.out)
        return self.summary


# ---------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every other refusal of bad input
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    ap = _Parser(prog="python -m pipelines.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a fully resolved run config (config.json); flags still override it")
    ap.add_argument("--profile", help="profile whose defaults to use (default: the config file's, 'cpu')")
    ap.add_argument("--configfile", help="experiment YAML (default pipelines/config.yaml)")
    ap.add_argument("--model")
    ap.add_argument("--method")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", help="run folder (default: results/runs/<profile>/<model>/<method>/seed<seed>)")
    for flag in TRAIN_FLAGS:
        ap.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type={"device": str, "lr": float}.get(flag, int))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any train key, e.g. --set warmup_steps=10 (YAML value syntax)",
    )
    ap.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. --method-option stochastic_rounding=true",
    )
    return ap.parse_args(argv)


def _kv(items: list[str], what: str) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:  # one line: the value and what YAML could not read
            raise ConfigError(f"{what} {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


def resolve(args) -> tuple[dict, Path]:
    train_over = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    train_over.update(_kv(args.set, "--set"))
    if args.config:
        rc = load_run_config(args.config)
        for k in ("model", "method", "seed"):
            if getattr(args, k) is not None:
                rc[k] = getattr(args, k)
        rc["train"] = config_mod.deep_merge(rc["train"], train_over)
    else:
        missing = [f"--{k}" for k in ("model", "method", "seed") if getattr(args, k) is None]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (or pass --config FILE.json)")
        cfg = config_mod.load(args.configfile)
        profile = args.profile or cfg["profile"]
        rc = config_mod.resolve_run(cfg, profile, args.model, args.method, args.seed, train_over)
    rc["method_options"] = {**(rc["method_options"] or {}), **_kv(args.method_option, "--method-option")}
    # The whole resolved config (profile, flags, --set, method options) meets one set of rules, before any
    # work: the same check the workflow runs on every run of a profile (pipelines.run.validate).

    method = check_run(rc)
    # A run that cannot fit is refused here, before the corpus is prepared or a tensor allocated.
    from models.config import get_model_config
    from pipelines.run.fits import check_fits

    mcfg = get_model_config(rc["model"]).with_vocab(rc["data"]["vocab_size"])
    if not method.unmet():
        check_fits(method, rc["model"], mcfg, rc["train"])
    if args.out:
        out = Path(args.out)
    elif args.config:  # a resolved run config lives in its run's folder (a sweep's folder name carries the lr)
        out = Path(args.config).parent
    else:
        out = config_mod.run_dir(rc, rc["profile"], rc["model"], rc.get("variant") or rc["method"], rc["seed"])
    return rc, out


def main(argv=None) -> int:
    launch.rank_started()  # a rank dies with its launcher, however that ends
    args = parse_args(argv)
    try:
        rc, out = resolve(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    # One writer per run folder (pipelines.run.dirlock): taken before anything in it is written or resumed, and
    # held until this process ends. The ranks of a multi-rank run are the lock holder's children: they don't.
    with contextlib.ExitStack() as stack:
        if not launch.in_rank():
            try:
                stack.enter_context(dirlock.hold(out))
            except dirlock.Busy as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            # a rerun appends to the log the workflow keeps: this line says where each attempt begins
            print(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on host {socket.gethostname()} writes {out}"
                f": {dirlock.command_line()}",
                file=sys.stderr,
                flush=True,
            )
        return _run(args, argv, rc, out)


def _run(args, argv, rc: dict, out: Path) -> int:
    """The run itself, in its locked folder."""
    torch.set_num_threads(rc["train"]["threads"])
    if launch.writes_config() and (not args.config or Path(args.config).resolve() != (out / "config.json").resolve()):
        write_json(out / "config.json", rc)
    if ranks := launch.ranks_to_launch(rc):  # a multi-rank method: start its ranks, which run the loop
        return launch.launch(sys.argv[1:] if argv is None else list(argv), rc, out, ranks)
    try:
        summary = Run(rc, out).execute()
    except (ConfigError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{rc.get('variant') or rc['method']} seed {rc['seed']}: {summary['status']}"
        f"{' (' + summary['reason'] + ')' if summary['reason'] else ''}"
        f"; final val loss {summary.get('final_val_loss')}; {summary.get('tokens_per_s', 0):.0f} tokens/s",
        file=sys.stderr,
    )
    return launch.exit_code(out, summary)


if __name__ == "__main__":
    raise SystemExit(main())
