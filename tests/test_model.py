import pytest
import torch

from models import SIZES, build_model, get_model_config
from models.llama import Transformer


@pytest.mark.parametrize("name", list(SIZES))
def test_param_count_formula_matches_module(name):
    cfg = SIZES[name]
    with torch.device("meta"):
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()


def test_named_sizes_are_in_their_ranges():
    tiny = get_model_config("tiny").with_vocab(4096).n_params()
    small = get_model_config("small").with_vocab(4096).n_params()
    assert 5e6 <= tiny <= 8e6
    assert 25e6 <= small <= 40e6
    assert get_model_config("1b").with_vocab(4096).n_params() >= 1e9


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="valid models: tiny, small"):
        get_model_config("tinyy")


def test_every_projection_is_nn_linear():
    model = build_model(get_model_config("tiny").with_vocab(256), seed=0)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * 7 + 1  # 7 per block + lm_head
    assert "layers.0.mlp.w2" in linears and "lm_head" in linears


def test_init_depends_on_seed_only():
    cfg = get_model_config("tiny").with_vocab(256)
    a = build_model(cfg, seed=3)
    torch.randn(1000)  # consuming global RNG must not change the init
    b = build_model(cfg, seed=3)
    c = build_model(cfg, seed=4)
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), n


def test_causal_and_loss():
    cfg = get_model_config("tiny").with_vocab(256)
    model = build_model(cfg, seed=0).eval()
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 256
    with torch.no_grad():
        la, lb = model(x), model(x2)
    assert la.shape == (2, 16, 256)
    torch.testing.assert_close(la[:, :10], lb[:, :10])  # the future cannot leak into the past
    assert not torch.allclose(la[:, 10:], lb[:, 10:])
    loss = model(x, x)
    # at init the model is near uniform: loss close to ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5
