"""Fixtures for the FP8 tests: one torch thread (these are small ops; on a shared 2-core box a second
OpenMP thread made a training step ~10x slower, not faster) and a micro model builder.

Without a GPU, Triton kernels can only run in Triton's interpreter, and ``TRITON_INTERPRET=1`` must be
set before Triton is first imported (Triton's own ``tl.max``/``tl.sum`` are ``@triton.jit`` functions
defined at import). So on a CPU-only machine this conftest sets it as early as pytest allows; it changes
nothing else there. ``test_kernels.py`` checks that it took effect and otherwise reruns itself in a
fresh process.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build_micro(method_name: str, vocab: int = 512, seed: int = 0, **options):
    """A 2-layer, 128-wide Llama (SwiGLU width 344: not a multiple of 128) under ``method_name``."""
    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model
    from models.config import ModelConfig

    cfg = ModelConfig(dim=128, n_layers=2, n_heads=2, ffn_dim=344, vocab_size=vocab, max_seq_len=128)
    ctx = RunContext(device=torch.device("cpu"), seed=seed)
    return get_method(method_name, **options).build(build_model(cfg, seed), HParams(lr=3e-3), ctx)


def probe_fp8_adamw(impl: str, probe: bool, device: torch.device | None = None, steps: int = 2):
    """Two FP8AdamW steps (bf16 weights, stochastic rounding) on three parameters, probed or not; returns
    the parameters, the optimizer and each step's whole-model figures (``methods.fp8.lost_updates``)."""
    from methods.fp8.adamw import FP8AdamW
    from methods.fp8.lost_updates import LostUpdates, ParamProbe

    device = torch.device("cpu") if device is None else device
    g = torch.Generator().manual_seed(11)
    shapes = [(37, 19), (300,), (2, 256)]
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).bfloat16().to(device)) for s in shapes]
    opt = FP8AdamW(
        [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
        lr=3e-5,
        impl=impl,
        seed=5,
    )  # updates of ~3e-5 on weights of ~0.05: many below half a spacing
    rec, figures = LostUpdates(), []
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * torch.logspace(-4, 0, p.shape[-1])).bfloat16().to(device)
        opt.probe = ParamProbe(rec, {p: f"p{i}" for i, p in enumerate(params)}) if probe else None
        opt.step()
        opt.probe = None
        figures.append(rec.finish_step())
    return params, opt, figures
