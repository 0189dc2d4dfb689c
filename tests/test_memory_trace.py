"""The full-size memory trace (methods/memory_trace.py) against real CPU steps on the tiny model.

What a trace reports must be what a real step allocates: the persistent state equals the method's own
live-tensor ledger byte for byte, and the traced peak equals the peak of the allocator's own event
stream (torch.profiler's memory events) within 5%.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from methods.base import HParams, RunContext
from methods.memory import COMPONENTS
from methods.memory_trace import UntraceableError, trace_step
from methods.registry import get_method
from models.config import SIZES, ModelConfig
from models.llama import build_model
from pipelines.analysis.memory_traced import GIB, fit_table, max_micro_batch, phase_lines

TINY = SIZES["tiny"]
SEQ = 64
#: one per kind of step: own FP8 linears with group scales under bf16 autocast, FP8-stored weights (state
#: made outside optimizer.step), FP8 optimizer stepped in backward (with its index cache), torchao's
#: compiled FP8 optimizer
METHODS = ["fp8-own-blockwise", "fp8-naive", "fp8-lean", "fp8-optim-torchao"]

#: methods whose optimizer step is traced eagerly where a real run compiles it
EAGER_OPTIMIZER_STEP = {"fp8-optim-torchao"}

#: torchao compiles its step once per parameter shape (~7 s each with a cold Inductor cache): for it, a
#: model whose matrices all have one shape (embedding, attention, MLP and head 256 x 256)
SQUARE = ModelConfig(dim=256, n_layers=2, n_heads=4, ffn_dim=256, vocab_size=256, max_seq_len=1024)
CONFIG = {"fp8-optim-torchao": SQUARE}


def real_step_peak(method_name: str, cfg: ModelConfig, batch: int, seq: int) -> tuple[dict, int]:
    """Two real steps; returns the ledger after step 2 and the peak bytes during step 2, from the
    allocator's events (every alloc and free, in order) on top of what was live when it began."""
    from methods.fp8.optim_codec import _ARANGE  # the own FP8 optimizer's cached index, made in step 1

    _ARANGE.clear()  # grown by earlier tests of this process: step 1 makes it at this model's size
    method = get_method(method_name)
    trainee = method.build(build_model(cfg, seed=0), HParams(lr=1e-3), RunContext(device=torch.device("cpu"), seed=0))
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return allocator_peak(trainee, x, lambda: sum(a.untyped_storage().nbytes() for a in _ARANGE.values()))


def allocator_peak(trainee, x: torch.Tensor, extra_live=lambda: 0) -> tuple[dict, int]:
    trainee.train_step(x, x, 1e-3)
    # frees of storages made before profiling are not reported: drop the grads first (the step would)
    trainee.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    live = sum(trainee.memory().values()) + sum(
        b.untyped_storage().nbytes() for n, b in trainee.model.named_buffers() if n.endswith(("rope_cos", "rope_sin"))
    )
    live += extra_live()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainee.train_step(x, x, 1e-3)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return trainee.memory(), live + peak


@pytest.mark.parametrize("name", METHODS)
def test_trace_equals_a_real_step(name):
    cfg = CONFIG.get(name, TINY)
    t = trace_step(get_method(name), cfg, 1, SEQ)
    ledger, real_peak = real_step_peak(name, cfg, 1, SEQ)
    assert {c: t.steady[c] for c in COMPONENTS} == ledger
    if name in EAGER_OPTIMIZER_STEP:
        # torchao compiles its per-parameter step; the trace runs it unfused (methods.memory_trace), so its
        # optimizer-phase temporaries bound the compiled step's from above
        assert t.peak_total >= real_peak
    else:
        assert t.peak_total == pytest.approx(real_peak, rel=0.05)
    assert t.peak_total >= t.persistent
    analytic = sum(get_method(name).analytic_bytes(cfg).get(c, 0.0) for c in COMPONENTS)
    assert t.persistent == pytest.approx(analytic, rel=0.01)


def test_phase_peaks_are_linear_in_the_tokens_of_a_micro_batch():
    """The fit table's premise: two sequence lengths at micro-batch 1 predict every phase's peak at another
    micro-batch (here 2 × 64 tokens from 1 × 32 and 1 × 64), and the largest micro-batch that fits follows."""
    import pandas as pd

    m = get_method("fp8-own-tensorwise")
    short, long, two = (pd.Series(trace_step(m, TINY, b, s).row()) for b, s in ((1, 32), (1, 64), (2, 64)))
    lines = phase_lines(short, long)
    for phase, (fixed, per_token) in lines.items():
        assert fixed + per_token * 128 == pytest.approx(float(two[f"peak_{phase}_bytes"]), rel=1e-3), phase

    def peak(b):
        return max(fixed + per_token * b * 64 for fixed, per_token in lines.values())

    for budget in (peak(1), peak(7) + 1, peak(40) - 1):
        b = max_micro_batch(lines, 64, budget)
        assert b >= 1 and peak(b) <= budget < peak(b + 1)
    assert max_micro_batch(lines, 64, peak(1) - 1) == 0


def test_fit_table_uses_usable_memory():
    import pandas as pd

    def row(seq, grow):  # fixed 6 GiB in every phase, backward grows by `grow` GiB per sequence of 8
        r = {
            "method": "m",
            "model": "x",
            "seq_len": seq,
            "batch_size": 1,
            "status": "ok",
            "peak_bytes": (6 + grow) * GIB,
            "persistent_bytes": 6 * GIB,
        }
        for p in ("forward", "backward", "optimizer", "loop"):
            r[f"peak_{p}_bytes"] = (6 + (grow if p == "backward" else 0)) * GIB
        return r

    fit = fit_table(pd.DataFrame([row(4, 2), row(8, 4)]), {"dev": 30.0}, seq_len=8, reserve_gib=2.0, margin=0.0)
    # usable 28 GiB: 6 + 4 b <= 28 -> b = 5
    assert fit["max_micro_batch"].tolist() == [5]


@pytest.mark.parametrize("name,why", [("zero2-bf16", "ranks"), ("fp8-te-delayed", "transformer_engine")])
def test_untraceable_methods_say_why(name, why):
    with pytest.raises(UntraceableError, match=why):
        trace_step(get_method(name), TINY, 1, SEQ)


# ---- one rank of a sharded step ----------------------------------------------------------------------
RANKS = 8


@pytest.mark.parametrize("options", [{}, {"reshard_after_forward": False}], ids=["zero3-like", "zero2-like"])
def test_rank_trace_equals_a_real_rank(options, monkeypatch):
    """Rank 0 of 8 traced (fake tensors) against rank 0 of 8 run for real: real tensors in a fake process
    group, where collectives allocate what they would but communicate nothing. Its values are garbage,
    so the step is forced (clipping reports a finite norm); what is allocated does not depend on them."""
    import dataclasses

    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from methods.memory_trace import trace_rank_steps

    t = trace_rank_steps(get_method("fsdp2-bf16", **options), TINY, 1, [SEQ], ranks=RANKS)[0]
    assert not dist.is_initialized()  # the trace cleans up its own process group
    dist.init_process_group("fake", rank=0, world_size=RANKS, store=FakeStore())
    try:
        method = dataclasses.replace(get_method("fsdp2-bf16", **options), ranks=RANKS)
        monkeypatch.setattr(type(method), "clip", lambda self, params, max_norm: 0.0)
        ctx = RunContext(device=torch.device("cpu"), seed=0, rank=0, world_size=RANKS, extra={"batch_size": RANKS})
        trainee = method.build(build_model(TINY, seed=0), HParams(lr=1e-3), ctx)
        ledger, real_peak = allocator_peak(trainee, torch.randint(0, TINY.vocab_size, (RANKS, SEQ)))
    finally:
        dist.destroy_process_group()
    assert {c: t.steady[c] for c in COMPONENTS} == ledger
    assert t.peak_total == pytest.approx(real_peak, rel=0.05)
    assert t.peak["gathered"] > 0  # all-gathered weights and reduce-scatter buffers are their own component
    # what one rank keeps is an eighth of the single-process fp32 state (dim 0 of every parameter split)
    single = trace_step(get_method("fp32"), TINY, 1, SEQ).persistent
    assert t.persistent == pytest.approx(single / RANKS, rel=0.01)


def test_zero_is_traced_through_its_fsdp2_stand_in():
    from methods.memory_trace import rank_stand_in

    traced, label = rank_stand_in(get_method("zero2-bf16"))
    assert (traced.name, traced.reshard_after_forward) == ("fsdp2-bf16", False) and "stand-in" in label
    traced, _ = rank_stand_in(get_method("zero3-fp8"))
    assert (traced.name, traced.reshard_after_forward) == ("fsdp2-fp8-torchao", True)
    for name, why in (("zero1-bf16", "ZeRO-1"), ("zero2-fp8-optim", "FP8 Adam"), ("ddp-bf16", "reducer")):
        with pytest.raises(UntraceableError, match=why):
            rank_stand_in(get_method(name))


def test_deepspeed_estimate_is_deepspeeds_own_figure():
    """The analytic column beside the per-rank traces: DeepSpeed's 2 + 18/N (ZeRO-2) and 18/N + 4 x the
    largest layer (ZeRO-3) bytes per parameter, from its own functions."""
    pytest.importorskip("deepspeed")
    cfg = SIZES["1b"]
    n = cfg.n_params()
    assert get_method("zero2-bf16").deepspeed_estimate(cfg, 8) == 2 * n + int(18 * n / 8)
    largest = max(cfg.vocab_size * cfg.dim, cfg.dim * cfg.ffn_dim)
    assert get_method("zero3-bf16").deepspeed_estimate(cfg, 8) == 4 * largest + int(18 * n / 8)
    assert get_method("zero1-bf16").deepspeed_estimate(cfg, 8) is None
    assert get_method("zero2-fp8-optim").deepspeed_estimate(cfg, 8) is None


def test_a_trace_leaves_no_fake_tensor_behind():
    """Caches filled during a trace (FP8 decode tables) must hold real tensors: a real FP8 run after it works."""
    from torch._subclasses.fake_tensor import is_fake

    from methods.fp8.formats import _TABLES

    trace_step(get_method("fp8-own-tensorwise"), TINY, 1, SEQ)
    assert not any(is_fake(t) for t in _TABLES.values())
    trainee = get_method("fp8-own-tensorwise").build(
        build_model(TINY, seed=0), HParams(lr=1e-3), RunContext(device=torch.device("cpu"), seed=0)
    )
    x = torch.randint(0, TINY.vocab_size, (1, SEQ))
    res = trainee.train_step(x, x, 1e-3)
    assert torch.isfinite(torch.tensor(res.loss))


def test_a_traced_variant_is_its_own_row():
    """A memory_trace variant (its method with other options) is traced beside its method under its own name,
    so the fit table sees two methods, not one traced twice."""
    import pandas as pd

    from pipelines.analysis.memory_traced import trace_rows

    variants = {"fp8-own-tensorwise-coat": {"method": "fp8-own-tensorwise", "options": {"fp8_saved_nonlinear": True}}}
    rows = pd.DataFrame(trace_rows("tiny", [32, 64], ["fp8-own-tensorwise"], variants=variants))
    assert sorted(rows["method"]) == ["fp8-own-tensorwise"] * 2 + ["fp8-own-tensorwise-coat"] * 2
    fit = fit_table(rows, {"dev": 80.0}, seq_len=64, reserve_gib=2.0, margin=0.1)
    assert sorted(fit["method"]) == ["fp8-own-tensorwise", "fp8-own-tensorwise-coat"]
    a = rows.set_index(["method", "seq_len"])["act_peak_bytes"]
    assert a["fp8-own-tensorwise-coat", 64] < a["fp8-own-tensorwise", 64]
