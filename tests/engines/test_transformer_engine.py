"""TransformerEngine methods on a machine without TE or a GPU: skipped with the reason, and the code path
exercised against a stand-in for TE's Python API (names and signatures as in TE 2.20.2:
``te.Linear(in, out, bias=, params_dtype=, device=)``, ``te.autocast(enabled=, recipe=)``,
``te.is_fp8_available(return_reason=True)``, ``recipe.DelayedScaling(fp8_format=, amax_history_len=,
amax_compute_algo=)``, ``Float8CurrentScaling(fp8_format=)``, ``Float8BlockScaling(fp8_format=)``).
The stand-in's Linear is a plain nn.Linear: what is checked is fp8bench's wiring (same weights, the
recipe and its options, the autocast around the forward only), not TE's numerics."""

import enum
import importlib.machinery
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from methods.registry import get_method
from tests.conftest import build_trainee

TE = ["fp8-te-delayed", "fp8-te-current", "fp8-te-block"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only reasons")
@pytest.mark.parametrize("name", TE)
def test_te_unavailable_here_with_the_reason(name):
    reasons = get_method(name).unmet()
    text = "; ".join(reasons)
    assert any("no CUDA device" in r for r in reasons), text
    assert any("transformer_engine" in r for r in reasons), text


@pytest.fixture
def fake_te(monkeypatch):
    """Install a stand-in ``transformer_engine`` in sys.modules; returns its call log."""
    log = {"linears": [], "autocast": [], "active": False}

    class Format(enum.Enum):
        E4M3 = "E4M3"
        HYBRID = "HYBRID"

    @dataclass
    class DelayedScaling:
        fp8_format: Format = Format.HYBRID
        amax_history_len: int = 1024
        amax_compute_algo: str = "max"

    @dataclass
    class Float8CurrentScaling:
        fp8_format: Format = Format.HYBRID

    @dataclass
    class Float8BlockScaling:
        fp8_format: Format = Format.E4M3

    class Linear(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, params_dtype=None, device="cuda", **kw):
            super().__init__(in_features, out_features, bias=bias, dtype=params_dtype, device=device)
            log["linears"].append(
                dict(
                    in_features=in_features,
                    out_features=out_features,
                    bias=bias,
                    params_dtype=params_dtype,
                    device=device,
                )
            )

        def forward(self, x):
            assert log["active"], "te.Linear ran outside te.autocast"
            return super().forward(x)

    class autocast:  # noqa: N801 - TE's name
        def __init__(self, enabled=True, calibrating=False, recipe=None, amax_reduction_group=None):
            self.recipe = recipe

        def __enter__(self):
            log["autocast"].append(self.recipe)
            log["active"] = True

        def __exit__(self, *exc):
            log["active"] = False

    te_pkg = types.ModuleType("transformer_engine")
    te_pkg.__path__ = []
    te_torch = types.ModuleType("transformer_engine.pytorch")
    te_torch.Linear, te_torch.autocast = Linear, autocast
    te_torch.is_fp8_available = lambda return_reason=False: (True, "")
    te_torch.is_fp8_block_scaling_available = lambda return_reason=False: (
        False,
        "FP8 block scaled GEMM requires compute capability 9.0 or higher and CUDA >= 12.9.",
    )
    te_common = types.ModuleType("transformer_engine.common")
    te_common.__path__ = []
    te_recipe = types.ModuleType("transformer_engine.common.recipe")
    te_recipe.Format, te_recipe.DelayedScaling = Format, DelayedScaling
    te_recipe.Float8CurrentScaling, te_recipe.Float8BlockScaling = Float8CurrentScaling, Float8BlockScaling
    te_pkg.pytorch, te_pkg.common, te_common.recipe = te_torch, te_common, te_recipe
    for mod in (te_pkg, te_torch, te_common, te_recipe):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    for name, mod in [
        ("transformer_engine", te_pkg),
        ("transformer_engine.pytorch", te_torch),
        ("transformer_engine.common", te_common),
        ("transformer_engine.common.recipe", te_recipe),
    ]:
        monkeypatch.setitem(sys.modules, name, mod)
    return log


@pytest.mark.parametrize(
    "name,recipe_type,fields",
    [
        (
            "fp8-te-delayed",
            "DelayedScaling",
            {"fp8_format": "HYBRID", "amax_history_len": 16, "amax_compute_algo": "max"},
        ),
        ("fp8-te-current", "Float8CurrentScaling", {"fp8_format": "HYBRID"}),
        ("fp8-te-block", "Float8BlockScaling", {"fp8_format": "E4M3"}),
    ],
)
def test_te_code_path_with_a_stand_in(fake_te, name, recipe_type, fields, corpus, bf16_amp_step0):
    x, y, weights, plain, r_ref, _ = bf16_amp_step0
    opts = {"amax_history_len": 16} if name == "fp8-te-delayed" else {}
    tr = build_trainee(name, vocab=corpus.vocab_size, **opts)
    te_linear = sys.modules["transformer_engine.pytorch"].Linear
    converted = {n for n, m in tr.model.named_modules() if isinstance(m, te_linear)}
    assert converted == {n for n in plain if n.startswith("layers.")}
    assert all(
        c == dict(c, bias=False, params_dtype=torch.float32, device=torch.device("cpu")) for c in fake_te["linears"]
    )
    params = dict(tr.model.named_parameters())  # the seeded weights, copied into te.Linear
    assert params.keys() == weights.keys() and all(torch.equal(params[n], w) for n, w in weights.items())
    r = tr.train_step(x, y, 1e-3)
    assert abs(r.loss - r_ref.loss) <= 0.01 * r_ref.loss
    recipe = fake_te["autocast"][-1]
    assert type(recipe).__name__ == recipe_type
    assert {k: getattr(getattr(recipe, k), "value", getattr(recipe, k)) for k in fields} == fields
    assert not fake_te["active"]  # backward and the optimizer step ran outside te.autocast
    tr.train_step(x, y, 1e-3)
    assert fake_te["autocast"][-1] is recipe  # one recipe object for the run
    # requirements consult TE's own check once TE imports and a GPU is there; here the GPU is missing
    reasons = get_method(name).unmet()
    assert reasons and all("transformer_engine" not in r for r in reasons)
    if not torch.cuda.is_available():
        assert any("no CUDA device" in r for r in reasons)


def test_te_block_requirement_reports_te_reason(fake_te, monkeypatch):
    from methods import transformer_engine as mte

    req = mte.te_recipe_supported("block")
    assert not req.met and "CUDA >= 12.9" in req.reason
    assert mte.te_recipe_supported("delayed").met
