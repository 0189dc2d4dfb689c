"""Fixtures of the engine tests: the real experiment config, pointed at the small test corpus."""

from pathlib import Path

import pytest

from tests.conftest import write_small_config


@pytest.fixture(scope="module")
def engine_configfile(tmp_path_factory) -> Path:
    return write_small_config(
        tmp_path_factory.mktemp("engines"),
        steps=4,
        eval_every=2,
        eval_tokens=256,
        warmup_steps=2,
        timing_warmup_steps=1,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this process, as in a run: the ranks the tests start use the other core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bf16_amp_step0(corpus):
    """bf16-amp in one process at seed 0 on the global batch of step 0 (4 x 64): the reference every
    engine's step 0 is compared with. Returns (x, y, initial weights, linear names, StepResult, memory)."""
    import torch
    from torch import nn

    from pipelines.run.data import Batches
    from tests.conftest import build_trainee

    x, y = Batches(corpus, 4, 64, seed=0).get(0)
    ref = build_trainee("bf16-amp", vocab=corpus.vocab_size)
    weights = {n: p.detach().clone() for n, p in ref.model.named_parameters()}
    linears = {n for n, m in ref.model.named_modules() if type(m) is nn.Linear}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res = ref.train_step(x, y, 1e-3)
    torch.set_num_threads(threads)
    return x, y, weights, linears, res, ref.memory()
