"""The registered own-FP8 methods: availability, conversion, short real training runs with telemetry,
the memory the ledger reports (fp8-naive's FP8 storage counted where it belongs), checkpoints."""

import io
import math

import pytest
import torch
from torch import nn

from methods.fp8.linear import FP8Linear
from methods.fp8.naive import FP8StoredLinear
from methods.registry import get_method, method_names
from tests.fp8.conftest import build_micro

OWN = ["fp8-own-tensorwise", "fp8-own-delayed", "fp8-own-rowwise", "fp8-own-blockwise", "fp8-own-delayed-smooth"]
ALL = OWN + ["fp8-naive"]


def test_registered_and_available_on_cpu():
    names = method_names()
    for name in ALL:
        assert name in names
        m = get_method(name)
        assert m.family == "fp8-own" and not m.unmet() and m.summary and m.stores
    with pytest.raises(ValueError, match="per-tensor"):
        get_method("fp8-own-rowwise", scaling="delayed")


def train(trainee, corpus, steps, batch=4, seq=32):
    """``steps`` optimizer steps on real text (the session corpus, vocab 512)."""
    from pipelines.run.data import Batches

    b = Batches(corpus, batch, seq, seed=0)
    losses = [trainee.train_step(*b.get(i), lr=3e-3).loss for i in range(steps)]
    return losses, b


@pytest.mark.parametrize("name", ALL)
def test_short_training_run_learns_and_reports_telemetry(name, corpus):
    trainee = build_micro(name, vocab=corpus.vocab_size)
    model = trainee.model
    kind = FP8StoredLinear if name == "fp8-naive" else FP8Linear
    converted = [n for n, m in model.named_modules() if isinstance(m, kind)]
    assert len(converted) == 14 and type(model.lm_head) is nn.Linear
    losses, b = train(trainee, corpus, steps=10)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3  # it learns
    val = trainee.eval_loss(*b.val_batches(256)[0])
    assert math.isfinite(val)
    rows = trainee.telemetry()
    assert {r["layer"] for r in rows} == set(converted)
    for r in rows:
        assert {"layer", "tensor", "amax", "scale", "saturated_frac", "saturated_frac_window"} <= set(r)
        assert math.isfinite(r["amax"]) and r["scale"] > 0 and 0 <= r["saturated_frac"] <= 1
    tensors = {r["tensor"] for r in rows}
    assert {"input", "weight", "grad_output"} <= tensors


def test_memory_of_fp8_own_counts_delayed_state():
    tr = build_micro("fp8-own-delayed")
    mem = tr.memory()
    n_lin = 14
    # input, weight, grad_output scalers: a 16-entry fp32 history, a scale and an int64 position each
    assert mem["meta"] == n_lin * 3 * (16 * 4 + 4 + 8)
    assert mem["weights"] == 4 * tr.n_params()
    smooth = build_micro("fp8-own-delayed-smooth")  # mlp.w2 scales its smoothed weight currently
    assert smooth.memory()["meta"] == (n_lin * 3 - 2) * (16 * 4 + 4 + 8)


def test_fp8_naive_memory_is_what_it_stores(corpus):
    tr = build_micro("fp8-naive", vocab=corpus.vocab_size)
    train(tr, corpus, steps=1)
    mods = [m for m in tr.model.modules() if isinstance(m, FP8StoredLinear)]
    fp8_params = sum(m.weight.numel() for m in mods)
    hp_params = tr.n_params() - fp8_params
    mem = tr.memory()
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.grad_codes.dtype == torch.float8_e5m2 for m in mods)
    assert mem["weights"] == 4 * hp_params + fp8_params + 4 * len(mods)  # 1 B/param + one fp32 scale
    assert mem["grads"] == 4 * hp_params + fp8_params + 4 * len(mods)
    assert mem["master"] == 0 and mem["meta"] == 0
    assert mem["optim"] >= 8 * tr.n_params()  # fp32 m and v for every parameter
    per_param = sum(mem.values()) / tr.n_params()
    assert per_param < 14  # vs 16 for bf16-amp: the linears' weights and grads are 1 byte


def test_naive_update_really_lands_in_fp8():
    """No high-precision copy: after a step the weight is exactly an E4M3 code times one scale."""
    tr = build_micro("fp8-naive", vocab=512)
    x = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    tr.train_step(x[:, :-1], x[:, 1:], lr=1e-2)
    m = tr.model.layers[0].mlp.w1
    w = m.weight.float() * m.weight_scale_inv
    assert float(m.weight.float().abs().max()) == 448.0  # re-quantized with a fresh current scale
    assert not any(p.dtype == torch.float32 and p.shape == m.weight.shape for p in tr.model.parameters())
    assert torch.isfinite(w).all()
    rows = [r for r in tr.telemetry() if r["tensor"] == "weight_update"]
    assert len(rows) == 14 and all(0 <= r["unchanged_frac"] < 1 for r in rows)


@pytest.mark.parametrize("name", ["fp8-own-delayed", "fp8-naive"])
def test_checkpoint_round_trip_is_exact(name, corpus):
    a = build_micro(name, vocab=corpus.vocab_size)
    losses, b = train(a, corpus, steps=3)
    buf = io.BytesIO()  # through bytes, as a checkpoint file would be (no tensor shared with `a`)
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = build_micro(name, vocab=corpus.vocab_size, seed=1)
    c.load_state_dict(torch.load(buf, weights_only=False))
    for step in (3, 4):  # bit for bit: the delayed-scaling history and FP8 storage are all in the state
        x, y = b.get(step)
        assert a.train_step(x, y, 3e-3).loss == c.train_step(x, y, 3e-3).loss
