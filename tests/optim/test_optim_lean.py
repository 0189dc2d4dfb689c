"""fp8-lean: the optimizer step inside backward, against the same update taken after backward."""

import math

import torch

from methods import HParams, RunContext, get_method
from models import build_model
from models.config import ModelConfig

CFG = ModelConfig(dim=64, n_layers=2, n_heads=2, ffn_dim=176, vocab_size=300, max_seq_len=64)
CTX = RunContext(device=torch.device("cpu"), seed=0)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (2, 24), generator=g)
    return x, torch.randint(0, CFG.vocab_size, (2, 24), generator=g)


def test_fused_backward_equals_step_after_backward_without_clipping():
    # with clipping off, stepping each parameter inside backward is the same arithmetic on the same
    # gradients as stepping after backward: bit-identical weights, and no gradient is left behind
    hp = HParams(lr=3e-3, grad_clip=0.0)
    lean = get_method("fp8-lean", impl="torch").build(build_model(CFG, 0), hp, CTX)
    ref = get_method("fp8-optim", impl="torch").build(build_model(CFG, 0), hp, CTX)
    for step in range(2):
        x, y = batch(step)
        a, b = lean.train_step(x, y, 3e-3), ref.train_step(x, y, 3e-3)
        assert a.loss == b.loss
        # the global norm is still reported, assembled from per-parameter norms
        assert math.isclose(a.grad_norm, b.grad_norm, rel_tol=1e-5)
    for p, q in zip(lean.model.parameters(), ref.model.parameters()):
        assert torch.equal(p, q)
        assert p.grad is None
    mem = lean.memory()
    assert mem["grads"] == 0 and mem["optim"] > 0


def test_fused_backward_differs_when_clipping_would_act():
    # fp8-lean cannot clip: with a clip threshold far below the gradient norm the two diverge
    hp = HParams(lr=3e-3, grad_clip=1e-3)
    lean = get_method("fp8-lean", impl="torch").build(build_model(CFG, 0), hp, CTX)
    ref = get_method("fp8-optim", impl="torch").build(build_model(CFG, 0), hp, CTX)
    x, y = batch(0)
    lean.train_step(x, y, 3e-3)
    ref.train_step(x, y, 3e-3)
    x, y = batch(1)
    assert lean.train_step(x, y, 3e-3).loss != ref.train_step(x, y, 3e-3).loss


def test_non_finite_loss_is_not_applied():
    hp = HParams(lr=3e-3)
    lean = get_method("fp8-lean", impl="torch").build(build_model(CFG, 0), hp, CTX)
    with torch.no_grad():
        lean.model.norm.weight[3] = float("nan")
    before = [p.detach().clone() for p in lean.model.parameters()]
    r = lean.train_step(*batch(0), 3e-3)
    assert math.isnan(r.loss) and math.isnan(r.grad_norm)
    for p, q in zip(lean.model.parameters(), before):
        assert torch.equal(p, q) or torch.equal(p.isnan(), q.isnan()) and torch.equal(p[~p.isnan()], q[~q.isnan()])
    assert all(st["step"] == 0 for st in lean.optimizer.state.values())  # no state was even created


def test_backward_outside_train_step_leaves_gradients_alone():
    lean = get_method("fp8-lean", impl="torch").build(build_model(CFG, 0), HParams(lr=3e-3), CTX)
    before = [p.detach().clone() for p in lean.model.parameters()]
    g = torch.Generator().manual_seed(9)
    logits = lean.model(batch(0)[0])
    logits.backward(torch.randn(logits.shape, generator=g, dtype=logits.dtype))
    for p, q in zip(lean.model.parameters(), before):
        assert torch.equal(p, q) and p.grad is not None
