"""torch DDP and FSDP2 as 2 gloo ranks through the real CLI: the runs every other method makes (same
batches, same step-0 loss as bf16-amp in one process), FSDP2's sharded per-rank state against DDP's
replicated state and against the methods' analytic bytes, and FP8 all-gather (torchao) doing what it says."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from methods.registry import get_method, method_names
from pipelines.run import config as config_mod
from pipelines.run.data import Batches, Corpus, batch_hash, prepare
from pipelines.run.events import read_events
from tests.conftest import ROOT, build_trainee

DP = ["ddp-bf16", "fsdp2-bf16", "fsdp2-fp8-torchao"]
STEPS = 2
#: the run that goes through DeepSpeed's launcher instead of torchrun (any multi-rank method can)
VIA_DEEPSPEED = "ddp-bf16"
RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture(scope="module")
def dp_runs(engine_configfile, tmp_path_factory):
    """The three methods through ``python -m pipelines.train``, started together (the corpus prepared once
    first): {method: (summary, events, stderr)}."""
    root = tmp_path_factory.mktemp("dp")
    cfg = config_mod.load(engine_configfile)
    data = config_mod.resolve_run(cfg, "cpu", "tiny", DP[0], 0)["data"]
    prepare(data, data["dir"])
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_ENV}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = {}
    for name in DP:
        cmd = [
            sys.executable,
            "-m",
            "pipelines.train",
            "--configfile",
            str(engine_configfile),
            "--model",
            "tiny",
            "--method",
            name,
            "--seed",
            "0",
            "--steps",
            str(STEPS),
            "--out",
            str(root / name),
            "--threads",
            "2",
        ]
        launcher = {"FP8BENCH_LAUNCHER": "deepspeed" if name == VIA_DEEPSPEED else "torchrun"}
        procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, env={**env, **launcher}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    out = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
        summary = json.loads((root / name / "summary.json").read_text())
        out[name] = (summary, read_events(root / name / "metrics.jsonl"), err)
    return out


@pytest.fixture(scope="module")
def single_process(engine_configfile):
    """bf16-amp in this process on the global batch of step 0 (8 x 64), and the batch hashes of the run."""
    cfg = config_mod.load(engine_configfile)
    rc = config_mod.resolve_run(cfg, "cpu", "tiny", "bf16-amp", 0)
    corpus = Corpus.open(prepare(rc["data"], rc["data"]["dir"]))
    batches = Batches(corpus, rc["train"]["batch_size"], rc["train"]["seq_len"], rc["train"]["data_seed"])
    x, y = batches.get(0)
    ref = build_trainee("bf16-amp", vocab=corpus.vocab_size)
    step0 = ref.train_step(x, y, 1e-3)
    return {
        "loss0": step0.loss,
        "grad_norm0": step0.grad_norm,
        "memory": ref.memory(),
        "n_params": ref.n_params(),
        "hashes": [batch_hash(batches.get(i)[0]) for i in range(STEPS)],
        "vocab": corpus.vocab_size,
    }


def test_methods_are_registered_multi_rank_and_only_in_the_gpu_profile():
    assert set(DP) <= set(method_names())
    assert all(get_method(m).family == "dp" and get_method(m).world_size == 2 for m in DP)  # no GPU: 2 CPU ranks
    assert get_method("fsdp2-bf16", ranks=4).world_size == 4
    with pytest.raises(ValueError, match="option ranks = .4. is not a whole number; valid: a whole number >= 0"):
        get_method("ddp-bf16", ranks="4")
    cfg = config_mod.load()
    assert not set(DP) & set(config_mod.profile_settings(cfg, "cpu")["methods"])
    assert set(DP) <= set(config_mod.profile_settings(cfg, "gpu")["methods"])


def test_each_method_runs_as_two_gloo_ranks_through_the_cli(dp_runs):
    for name, (s, events, err) in dp_runs.items():
        assert s["status"] == "ok", (name, s["reason"])
        assert s["world_size"] == 2 and s["steps"] == STEPS, (name, s)
        assert s["final_val_loss"] < s["initial_val_loss"], (name, s)
        start = next(e for e in events if e["event"] == "run_start")
        assert start["world_size"] == 2 and start["config"]["train"]["threads"] == 1  # 2 threads over 2 ranks
        assert sum(e["event"] == "run_stop" for e in events) == 1  # rank 1 wrote nothing
        launcher = "deepspeed.launcher.runner" if name == VIA_DEEPSPEED else "torch.distributed.run"
        assert f"-m {launcher}" in err, (name, err[-2000:])
        # its curves in TensorBoard equal its metrics.jsonl (tests/test_tensorboard.py: the one-process families)
        from pathlib import Path

        from tests.tensorboard_readback import assert_matches_metrics

        assert_matches_metrics(Path(s["run_dir"]))


def test_step0_loss_and_batches_are_the_single_process_ones(dp_runs, single_process):
    ref = single_process
    for name, (_summary, events, _) in dp_runs.items():
        steps = [e for e in events if e["event"] == "train_step"]
        # same weights and global batch: the mean of the ranks' losses is bf16-amp's up to bf16/FP8 numerics
        assert abs(steps[0]["loss"] - ref["loss0"]) <= 0.01 * ref["loss0"], (name, steps[0]["loss"], ref["loss0"])
        # the global norm (DDP: of the all-reduced grads; FSDP2: reduced over the shards)
        assert abs(steps[0]["grad_norm"] - ref["grad_norm0"]) <= 0.03 * ref["grad_norm0"], (name, steps[0], ref)
        assert [e["batch_hash"] for e in steps] == ref["hashes"], name


def test_fsdp2_holds_half_of_ddp_per_rank_and_ddp_holds_bf16_amp(dp_runs, single_process):
    mem = {
        name: {c: s[f"{c}_bytes"] for c in ("weights", "master", "grads", "optim", "meta")}
        for name, (s, _, _) in dp_runs.items()
    }
    ddp, ref, n = mem["ddp-bf16"], single_process["memory"], single_process["n_params"]
    # DDP replicates bf16-amp's state on every rank: fp32 weights, grads (its buckets), Adam m, v
    for comp in ("weights", "grads", "optim"):
        assert ddp[comp] == ref[comp], (comp, ddp, ref)
    assert ddp["weights"] == 4 * n
    for name in ("fsdp2-bf16", "fsdp2-fp8-torchao"):
        fsdp = mem[name]
        for comp in ("weights", "grads", "optim"):  # each rank: its half (dim-0 shards, to padding)
            assert 0.5 * ddp[comp] <= fsdp[comp] <= 0.505 * ddp[comp], (name, comp, fsdp, ddp)
        assert fsdp["master"] == 0 and fsdp["meta"] == 0  # the sharded fp32 parameters are the master
    # FP8 all-gather: each converted weight keeps its precomputed fp32 scale (4 layers x 7 linears)
    assert mem["fsdp2-fp8-torchao"]["weights"] - mem["fsdp2-bf16"]["weights"] == 4 * 4 * 7
    # the analytic per-rank bytes (memory model, fit check) state what was measured
    from models.config import get_model_config

    cfg = get_model_config("tiny").with_vocab(single_process["vocab"])
    for name in DP:
        analytic = get_method(name).analytic_bytes(cfg)
        for comp, measured in mem[name].items():
            assert abs(measured - analytic[comp]) <= 0.01 * sum(mem[name].values()), (name, comp, mem[name], analytic)


def test_fp8_all_gather_hands_forward_fp8_weights_with_global_scales(monkeypatch):
    """One rank (a group of one, as on a single GPU): FSDP2's all-gather hooks still run, so the forward
    sees torchao's FP8 weight, and after the step each weight shard holds the scale of its whole tensor."""
    import torch.distributed as dist
    from torchao.float8.float8_linear import Float8Linear

    for k in RENDEZVOUS_ENV:  # the group of one sets these; setenv makes sure they go again afterwards
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    try:
        tr = build_trainee("fsdp2-fp8-torchao", ranks=1)
        fp8 = [m for m in tr.model.modules() if isinstance(m, Float8Linear)]
        assert len(fp8) == 4 * 7 and all(m.config.enable_fsdp_float8_all_gather for m in fp8)
        seen = []
        fp8[0].register_forward_pre_hook(lambda mod, args: seen.append(type(mod.weight).__name__))
        g = torch.Generator().manual_seed(1)
        x, y = (torch.randint(0, 512, (2, 40), generator=g) for _ in range(2))
        res = tr.train_step(x, y, 1e-3)
        assert torch.isfinite(torch.tensor([res.loss, res.grad_norm])).all()
        assert seen == ["Float8TrainingTensor"]  # what FSDP2's all-gather produced: FP8 data + scale
        e4m3_max = torch.finfo(torch.float8_e4m3fn).max
        for m in fp8:
            local = m.weight._local_tensor  # this rank's shard (all of it, with one rank)
            amax = local._tensor.detach().abs().max().double()
            expected = (e4m3_max / amax).float()
            assert torch.allclose(local._precomputed_scale, expected, rtol=1e-6), (local._precomputed_scale, expected)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_fsdp2_global_norm_clipping_matches_a_plain_model(monkeypatch):
    """Clipping by the norm over all shards (DTensor grads) scales the grads as methods.base.clip_grads
    does on plain tensors; one rank, fresh random grads, a norm above and one below the threshold."""
    import torch.distributed as dist

    from methods.base import clip_grads
    from methods.data_parallel import clip_sharded_grads

    for k in RENDEZVOUS_ENV:
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    try:
        tr = build_trainee("fsdp2-bf16", ranks=1)
        plain = build_trainee("bf16-amp")
        g = torch.Generator().manual_seed(2)
        for scale in (3.0, 1e-3):
            for p, q in zip(tr.params, plain.params):
                grad = torch.randn(q.shape, generator=g, dtype=torch.float64) * scale / 100
                q.grad = grad.float()
                p.grad = torch.distributed.tensor.distribute_tensor(grad.float(), p.device_mesh, p.placements)
            n_plain = clip_grads(plain.params, 1.0)
            n_sharded = clip_sharded_grads(tr.params, 1.0)
            assert n_sharded == pytest.approx(n_plain, rel=1e-5)
            for p, q in zip(tr.params, plain.params):
                assert torch.allclose(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_slurm_dry_runs_and_gpu_jobs_request_one_gpu_per_rank(tmp_path):
    """`snakemake --profile pipelines/profiles/slurm -n`, for the cpu and the gpu profile; every train job of
    the gpu profile asks for as many GPUs as its method has ranks (no GPU here: 2 for multi-rank methods,
    unless its `ranks` option says otherwise)."""
    import shutil

    pytest.importorskip("snakemake_executor_plugin_slurm")
    for name in ("Snakefile", "pipelines", "environment.yml", "requirements.txt"):
        src = ROOT / name
        (
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, tmp_path / name)
        )
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_ENV}
    env["PYTHONPATH"] = str(ROOT)

    def dry(*extra):
        r = subprocess.run(
            [sys.executable, "-m", "snakemake", "--profile", "pipelines/profiles/slurm", "-n", *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        return r.stdout + r.stderr

    dry("--quiet")
    # a `ranks` option sizes the job as it sizes the run
    (tmp_path / "ranks.yaml").write_text("method_options: {fsdp2-bf16: {ranks: 4}}\n")
    text = dry("--configfile", "pipelines/config.yaml", "ranks.yaml", "--config", "profile=gpu")
    gpus = {}
    for block in text.split("rule train:")[1:]:
        wildcards = next(line for line in block.splitlines() if "wildcards:" in line)
        resources = next(line for line in block.splitlines() if "resources:" in line)
        method = wildcards.split("method=")[1].split(",")[0]
        gpus[method] = int(resources.split("gpu=")[1].split(",")[0])
    gpu_profile = config_mod.profile_settings(yaml.safe_load((ROOT / "pipelines" / "config.yaml").read_text()), "gpu")
    assert set(gpus) == set(gpu_profile["methods"])
    for method, n in gpus.items():
        assert n == get_method(method, **({"ranks": 4} if method == "fsdp2-bf16" else {})).world_size, (method, n)
    assert gpus["ddp-bf16"] == gpus["fsdp2-fp8-torchao"] == 2 and gpus["fsdp2-bf16"] == 4 and gpus["bf16-amp"] == 1
