"""Two optimizers stepped side by side on the same gradients, each step from the reference's own state.

Before every step after the first, the candidate is handed the reference's weights and optimizer state, so
a step is compared from the same start and an ulp that one step moves is not carried into the next (where
a weight that later shrinks would make it more than one ulp of its new size). The step count and the bias
corrections still advance. Used by the native and the compiled FP8AdamW tests (tests/optim/).
"""

import copy

import torch


def paired_steps(ref, ropt, out, oopt, steps: int, dtype, step_out=None, seed: int = 12):
    """Yield after each of ``steps`` steps of ``ropt`` (on params ``ref``) and of ``oopt`` (on ``out``),
    ``step_out()`` stepping the candidate (default ``oopt.step``). Gradients span 4 decades in a block."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for r, o in zip(ref, out):
            spread = torch.logspace(-4, 0, r.shape[-1])  # moments over 4 decades inside a block
            r.grad = (torch.randn(r.shape, generator=g) * spread).to(dtype)
            o.grad = r.grad.clone()
        if ropt.state:
            with torch.no_grad():
                for r, o in zip(ref, out):
                    o.copy_(r)
            oopt.load_state_dict(copy.deepcopy(ropt.state_dict()))  # torch.optim shares 'step' tensors
        ropt.step()
        (step_out or oopt.step)()
        yield
