"""``train.compile`` on the CPU: each method's model under Inductor trains as it does eagerly, or falls back
to eager with the reason recorded (``methods.compiled``), and the run's outputs say which.

Inductor builds C++ here (g++), so compiling costs seconds per graph; the model is the smallest that has
every part of a block (one layer, dim 64) and each method compiles once: 3 training steps, no eval (an
eval would compile a second, inference graph).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.conftest import run_cli, write_small_config

#: one block of the Llama model at dim 64: compile time grows with the graph, not with the shapes
MICRO = dict(dim=64, n_layers=1, n_heads=2, ffn_dim=176, vocab_size=512, max_seq_len=64)
STEPS, BATCH, SEQ = 3, 4, 32

#: Largest relative difference allowed between the compiled and the eager loss at any of the 3 steps.
#: Inductor fuses and reorders reductions (RMSNorm, softmax, the loss, GEMM-adjacent sums) and vectorises
#: them with the CPU's width, so fp32 sums round differently: measured 7.6e-8 for fp32 (the forward of
#: step 0 bit-identical, the difference comes through the Adam updates). Where values are rounded to bf16
#: or quantized to FP8, one fp32 ulp before the rounding can move a value to the next bf16 / FP8 code,
#: so differences are larger: measured (2-core AVX2 CPU, torch 2.13) bf16-amp 1.1e-5, fp8-own-tensorwise
#: 3.3e-5, fp8-torchao-tensorwise 7.0e-5, fp8-optim 3.3e-5 (its stochastic rounding draws the same bits
#: in both runs: the step counter seeds them). The bounds leave a margin of >= 7x for other CPUs' vector
#: widths; a wrong compiled kernel (a missed scale, a dropped term) moves the loss by far more than 1e-3.
TOLERANCE = {
    "fp32": 1e-5,
    "bf16-amp": 5e-4,
    "fp8-own-tensorwise": 5e-4,
    "fp8-torchao-tensorwise": 5e-4,
    "fp8-optim": 5e-4,
}

#: Methods whose model Dynamo cannot trace as one graph, and why; everything else must compile whole.
GRAPH_BREAKS = {
    # FP8Linear's autograd.Function records telemetry (amax, scale, saturation) in module attributes from
    # inside forward and backward; Dynamo refuses to trace a Function that mutates outside state, so each
    # FP8 linear runs eagerly between compiled graphs (the norms, attention, SwiGLU and loss are compiled)
    "fp8-own-tensorwise": "FP8Linear mutates its telemetry inside its autograd.Function",
}


def _train(name: str, compile: bool):
    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model
    from models.config import ModelConfig

    ctx = RunContext(device=torch.device("cpu"), seed=0, compile=compile)
    trainee = get_method(name).build(build_model(ModelConfig(**MICRO), seed=0), HParams(lr=1e-3), ctx)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x, y = (torch.randint(0, MICRO["vocab_size"], (BATCH, SEQ), generator=g) for _ in range(2))
        losses.append(trainee.train_step(x, y, 1e-3).loss)
    return losses, trainee


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cpu profile trains (train.threads); the machine's cores are shared
    yield
    torch.set_num_threads(prev)


@pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++ (CXX)")
@pytest.mark.parametrize("name", list(TOLERANCE))
def test_compiled_training_matches_eager_or_records_why_not(name):
    eager, _ = _train(name, compile=False)
    compiled, trainee = _train(name, compile=True)
    status = trainee.compile_status
    assert all(math.isfinite(v) for v in compiled), (status, compiled)
    if status.startswith("fallback: "):  # the run went on eagerly: it must have said why, and trained as eager
        assert len(status) > len("fallback: ") + 5, status
        assert compiled == eager, (status, compiled, eager)
        pytest.fail(f"{name} did not compile on this CPU (recorded: {status}); it did when this test was written")
    assert status == "compiled"
    assert trainee.compile_graphs >= 1  # Dynamo made graphs: Inductor ran, not an eager pass-through
    if name not in GRAPH_BREAKS:
        assert trainee.compile_graph_breaks == 0, trainee.compile_graph_breaks
    rel = max(abs(c - e) / abs(e) for c, e in zip(compiled, eager))
    assert rel <= TOLERANCE[name], f"{name}: compiled vs eager loss differs by {rel:.2e} (relative)"


@pytest.fixture
def configfile(tmp_path_factory):
    return write_small_config(
        tmp_path_factory.mktemp("compile"),
        steps=2,
        eval_every=2,
        eval_tokens=256,
        warmup_steps=1,
        timing_warmup_steps=0,
    )


def test_a_run_that_cannot_compile_trains_eagerly_and_says_why(configfile, tmp_path):
    # No C++ compiler (CXX names none; caches off, so no earlier build can stand in): Inductor fails at
    # the first compiled call (the step-0 eval), and the run must go on eagerly and record the reason.
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    r = run_cli(
        "-m",
        "pipelines.train",
        "--configfile",
        str(configfile),
        "--model",
        "tiny",
        "--method",
        "fp32",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "compile=true",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "ok", s["reason"]
    assert s["compile_status"].startswith("fallback: "), s["compile_status"]
    # measured: "fallback: InductorError: InvalidCxxCompiler: No working C++ compiler found in ..."
    assert "C++ compiler" in s["compile_status"] and "no-such-g++" in s["compile_status"], s["compile_status"]
    assert s["steps"] == 2 and math.isfinite(s["final_val_loss"])
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_stop" and events[-1]["compile_status"] == s["compile_status"]
