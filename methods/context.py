"""What every method is given: the optimizer's hyperparameters and the run's context (device, seed, ranks).
The lowest layer of ``methods``: ``methods.base`` re-exports both."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class HParams:
    """Optimiser hyperparameters every method receives unchanged."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    @classmethod
    def from_train(cls, train: dict) -> HParams:
        return cls(
            lr=train["lr"],
            beta1=train["beta1"],
            beta2=train["beta2"],
            eps=train["eps"],
            weight_decay=train["weight_decay"],
            grad_clip=train["grad_clip"],
        )


@dataclass
class RunContext:
    device: torch.device
    seed: int
    threads: int = 1
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)
