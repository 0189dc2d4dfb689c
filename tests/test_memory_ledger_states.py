"""The ledger counts quantized optimizer states (tensor subclasses) by their real storages."""

import pytest
import torch

from methods.ledger import ledger

torchao_optim = pytest.importorskip("torchao.optim")


@pytest.mark.parametrize("cls,code_bytes,table_bytes", [("AdamWFp8", 1, 0), ("AdamW8bit", 1, 1024)])
def test_torchao_low_bit_states_count_codes_scales_and_tables(cls, code_bytes, table_bytes, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: fn)  # eager: same states, no compile wait
    model = torch.nn.Sequential(torch.nn.Linear(256, 96, bias=False), torch.nn.Linear(96, 100, bias=True))
    model = model.to(torch.bfloat16)
    opt = getattr(torchao_optim, cls)(model.parameters(), lr=1e-3, block_size=256)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=g).bfloat16()
    out = model(x)
    out.backward(torch.randn(out.shape, generator=g).bfloat16())
    opt.step()
    mem = ledger(model, opt)
    # 256*96 and 96*100 values: quantized (>= 4096 and a multiple of 256? 9600 is not -> bf16 states);
    # the 100-value bias stays bf16
    q = 256 * 96
    expected = 2 * (q * code_bytes + 4 * (q // 256) + table_bytes) + 2 * 2 * (96 * 100 + 100) + 3 * 4
    assert type(opt.state[model[0].weight]["exp_avg"]).__name__.startswith("OptimState")
    assert mem["optim"] == expected
    assert mem["weights"] == 2 * (256 * 96 + 96 * 100 + 100) and mem["grads"] == mem["weights"]
