"""DeepSpeed ZeRO as 2 CPU ranks: identical step-0 loss, partitioned per-rank state, the real pipeline
(launch, global batches, one summary), and a dead rank ending as ``failed`` instead of a hang."""

import json
import sys
import time

import pytest
import torch

from methods.registry import get_method, method_names
from pipelines.run.data import Batches, Corpus, batch_hash
from pipelines.run.events import read_events
from tests.conftest import ROOT, build_trainee, run_cli

ZERO = [m for m in method_names() if get_method(m).family == "zero"]


@pytest.fixture(scope="module")
def ranks_result(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero") / "ranks.json"
    r = run_cli(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--monitor-interval=0.5",
        str(ROOT / "tests" / "engines" / "zero_ranks.py"),
        str(corpus_dir),
        str(out),
        ",".join(ZERO),
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return json.loads(out.read_text())


def test_at_least_six_zero_methods_are_registered_and_available_here():
    available = [m for m in ZERO if not get_method(m).unmet()]
    assert len(available) >= 6, available
    assert all(get_method(m).world_size == 2 for m in ZERO)  # no GPU here: 2 CPU ranks


def test_zero_step0_loss_equals_bf16_amp_and_state_is_partitioned(ranks_result, bf16_amp_step0):
    *_, ref_step, ref_mem = bf16_amp_step0
    ref_loss = ref_step.loss
    assert set(ZERO) <= set(ranks_result)
    for name in ZERO:
        res = ranks_result[name]
        # same weights, same global batch: the ranks' mean loss is the single-process loss up to bf16 numerics
        assert abs(res["loss0"] - ref_loss) <= 0.01 * ref_loss, (name, res["loss0"], ref_loss)
        assert res["loss1"] < res["loss0"] and res["grad_norm0"] > 0  # it trains (same batch twice)
        rank0, rank1 = res["memory_by_rank"]
        n = res["n_params"]
        # the fp32 master is this rank's half, whatever the stage
        assert 0.5 * 4 * n <= rank0["master"] <= 0.51 * 4 * n, (name, rank0)
        # bf16 weights: every rank holds all of them, except ZeRO-3 (its half)
        stage = get_method(name).stage
        share = 0.5 if stage == 3 else 1.0
        assert share * 2 * n <= rank0["weights"] <= (share + 0.01) * 2 * n, (name, rank0)
        # the ranks hold the same amounts (equal partitions, to padding)
        for comp in ("weights", "master", "optim"):
            assert abs(rank0[comp] - rank1[comp]) <= 0.01 * max(rank0[comp], 1), (name, comp, rank0, rank1)
        if name == "zero2-fp8-optim":
            assert res["client_optimizer"] == "AdamWFp8" and "OptimStateFp8" in res["exp_avg_types"]
            assert rank0["optim"] <= 0.15 * ref_mem["optim"], (rank0, ref_mem)  # ~1 B/param vs 8
        else:
            assert res["client_optimizer"] == "AdamW"
            # Adam m, v of half the parameters: half of bf16-amp's 8 B/param
            assert rank0["optim"] <= 0.55 * ref_mem["optim"], (name, rank0["optim"], ref_mem["optim"])
        if stage >= 2:
            assert rank0["grads"] <= 0.55 * 2 * n, (name, rank0)  # bf16 gradient partition (+ bucket)
        # the analytic memory model of the method states the same per-rank bytes
        analytic = res["analytic"]
        for comp, measured in rank0.items():
            assert abs(measured - analytic[comp]) <= 0.01 * max(sum(rank0.values()), 1), (name, comp, rank0, analytic)
        assert abs(sum(rank0.values()) - sum(analytic.values())) <= 0.01 * sum(rank0.values())


def test_nothing_was_compiled(ranks_result):
    # zero_ranks.py replaced torch's C++ extension loader by an error, so reaching here means no op build;
    # DeepSpeed's CPU shared-memory all-reduce was not built, and no frame went through torch.compile
    assert ranks_result["_shm_comm_op"] is False
    assert ranks_result["_dynamo_frames"] == 0


def test_zero_run_through_the_training_cli(engine_configfile, tmp_path):
    """The real loop: 2 ranks launched by pipelines.run.train, one summary, the batches every method sees."""
    out = tmp_path / "zero2"
    r = run_cli(
        "-m",
        "pipelines.train",
        "--configfile",
        str(engine_configfile),
        "--model",
        "tiny",
        "--method",
        "zero2-fp8-optim",
        "--seed",
        "0",
        "--out",
        str(out),
        "--threads",
        "2",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok", s["reason"]
    assert s["world_size"] == 2 and s["steps"] == 4 and s["final_val_loss"] < s["initial_val_loss"]
    assert s["optim_bytes"] > 0 and s["master_bytes"] > 0
    events = read_events(out / "metrics.jsonl")
    start = next(e for e in events if e["event"] == "run_start")
    assert start["world_size"] == 2 and start["config"]["train"]["threads"] == 1  # 2 threads over 2 ranks
    assert sum(e["event"] == "run_stop" for e in events) == 1  # rank 1 wrote nothing
    # the hashes of the GLOBAL batches, the ones every single-process method logs
    batches = Batches(Corpus.open(start["config"]["data"]["dir"]), 8, 64, seed=start["config"]["train"]["data_seed"])
    logged = [e["batch_hash"] for e in events if e["event"] == "train_step"]
    assert logged == [batch_hash(batches.get(i)[0]) for i in range(4)]
    # its curves in TensorBoard equal its metrics.jsonl (tests/test_tensorboard.py: the one-process families)
    from tests.tensorboard_readback import assert_matches_metrics

    assert_matches_metrics(out)


def test_a_dead_rank_ends_the_run_as_failed_not_hung(engine_configfile, tmp_path):
    psutil = pytest.importorskip("psutil")
    import subprocess

    out = tmp_path / "dead"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.train",
        "--configfile",
        str(engine_configfile),
        "--model",
        "tiny",
        "--method",
        "zero1-bf16",
        "--seed",
        "0",
        "--out",
        str(out),
        "--steps",
        "400",
        "--set",
        "checkpoint_every=1",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline:  # wait until the ranks train and have checkpointed
            time.sleep(0.5)
            assert proc.poll() is None, f"the run ended before training: {proc.stderr.read()[-3000:]}"
            if (out / "checkpoints" / "latest.json").is_file():
                ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
                victim = ranks[0] if ranks else None
        assert victim is not None, "the ranks never started training"
        victim.kill()
        t_kill = time.time()
        _, err = proc.communicate(timeout=120)
        took = time.time() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and "rank" in s["reason"], s  # the reason says a rank died
    assert took < 120, took  # bounded: torchrun stops the surviving rank, no collective is left waiting
    assert s["world_size"] == 2
    assert not (out / "checkpoints").exists()  # a failed run is complete: nothing left to resume from
    assert read_events(out / "metrics.jsonl")[-1]["event"] == "run_stop"


def test_zero_trainee_in_one_process_shards_nothing(corpus, monkeypatch):
    """ranks=1 (one GPU, or a quick look): the engine runs in this process with a group of one."""
    import torch.distributed as dist

    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE"):
        monkeypatch.delenv(k, raising=False)  # restored after the test: later CLI runs must not inherit them
    try:
        tr = build_trainee("zero1-bf16", vocab=corpus.vocab_size, ranks=1)
        x, y = Batches(corpus, 4, 32, seed=0).get(0)
        assert torch.equal(tr.shard(x), x)
        first = tr.train_step(x, y, 1e-3).loss
        assert tr.train_step(x, y, 1e-3).loss < first
        mem = tr.memory()
        assert mem["master"] >= 4 * tr.n_params() and mem["optim"] >= 8 * tr.n_params()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
