"""Multi-rank resume: DDP and FSDP2 runs resume from a committed checkpoint (pipelines.run.dist_checkpoint) and
log the same losses, bit for bit, as an uninterrupted run; the helpers here are shared with
tests/scaleout/test_nodes.py, whose SIGKILLed 2-node ZeRO-2 run resumes the same way. gloo's sums
and the CPU kernels are deterministic for a fixed thread count, and the checkpoint holds every state a step
reads (fp32 master partitions, the client AdamW's m, v and step, RNG states of each rank)."""

import json
from pathlib import Path

from pipelines.run.events import read_events
from tests.conftest import ROOT


def committed_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def logged_steps(out: Path) -> int:
    try:
        return (out / "metrics.partial.jsonl").read_text().count('"train_step"')
    except OSError:
        return 0


def trajectory(out: Path):
    events = read_events(out / "metrics.jsonl")
    return (
        [(e["step"], e["loss"], e["grad_norm"], e["batch_hash"]) for e in events if e["event"] == "train_step"],
        [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"],
        events,
    )


DP = ["ddp-bf16", "fsdp2-bf16", "fsdp2-fp8-torchao"]


def test_ddp_and_fsdp2_resume_bit_for_bit_from_a_committed_checkpoint(corpus_dir, tmp_path):
    """torch.distributed.checkpoint through pipelines.run.dist_checkpoint, for every DDP / FSDP2 method in one pair
    of gloo ranks: steps 2 and 3 after loading the checkpoint of step 2 equal the uninterrupted steps, bit for
    bit (the end-to-end kill path, launcher and loop, is the ZeRO test's above: the same code for all)."""
    from tests.conftest import run_cli

    out = tmp_path / "dp.json"
    r = run_cli(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--monitor-interval=0.5",
        str(ROOT / "tests" / "scaleout" / "dp_resume_ranks.py"),
        str(corpus_dir),
        str(out),
        ",".join(DP),
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    for name in DP:
        assert res[name]["step"] == 2
        assert res[name]["resumed"] == res[name]["uninterrupted"][2:], (name, res[name])
        assert res[name]["fresh_loss"] != res[name]["resumed"][0][0]  # the load changed the model
        assert ".metadata" in res[name]["files"] and "rng_rank1.pt" in res[name]["files"], res[name]["files"]
