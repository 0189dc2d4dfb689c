import pytest
import torch

from methods.registry import get_method, method_names
from tests.conftest import build_trainee, run_cli


def one_step(name, **opts):
    tr = build_trainee(name, **opts)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 512, (2, 16), generator=g)
    res = tr.train_step(x, torch.roll(x, -1, 1), 1e-3)
    assert torch.isfinite(torch.tensor(res.loss))
    return tr


@pytest.mark.parametrize("name,expected", [("fp32", 16.0), ("bf16-amp", 16.0), ("bf16-pure", 12.0)])
def test_state_bytes_per_param(name, expected):
    tr = one_step(name)
    mem = tr.memory()
    per_param = sum(mem.values()) / tr.n_params()
    assert abs(per_param - expected) <= 0.1, mem


def test_bf16_pure_stores_bf16_weights_and_grads_fp32_moments():
    tr = one_step("bf16-pure", stochastic_rounding=True)
    p = next(tr.model.parameters())
    st = tr.optimizer.state[p]
    assert p.dtype == torch.bfloat16 and p.grad.dtype == torch.bfloat16
    assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
    assert "master" not in st
    mem = tr.memory()
    assert mem["master"] == 0 and mem["weights"] == 2 * tr.n_params()


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods: .*fp32"):
        get_method("fp33")


def test_bad_method_option_lists_valid_options():
    with pytest.raises(ValueError, match="valid options: stochastic_rounding"):
        get_method("bf16-pure", stochastic_roundin=True)


def test_registry_has_baselines():
    names = method_names()
    assert {"fp32", "bf16-amp", "bf16-pure"} <= set(names)


def test_python_m_methods_lists_availability():
    r = run_cli("-m", "methods")
    assert r.returncode == 0, r.stderr
    for name in method_names():
        assert name in r.stdout
    assert "fp32" in r.stdout and "available" in r.stdout


def test_a_list_option_is_kept_as_the_tuple_its_field_declares():
    """YAML and --method-option spell a sequence as a list; the frozen method must still hash (its analytic
    memory model is cached per method), so the list becomes a tuple."""
    from methods.registry import get_method
    from models.config import get_model_config

    m = get_method("fp8-naive", keep_high_precision=["lm_head"])
    assert m.keep_high_precision == ("lm_head",) and hash(m) == hash(
        get_method("fp8-naive", keep_high_precision=("lm_head",))
    )
    assert m.analytic_bytes(get_model_config("tiny"))["weights"] > 0
