"""The Trainee of the FP8 methods: the base training step, plus per-layer FP8 telemetry."""
from __future__ import annotations

from methods.base import Trainee
from methods.fp8.linear import fp8_telemetry


class FP8Trainee(Trainee):
    def telemetry(self) -> list[dict]:
        """One flat row per FP8 layer and quantized tensor (input, weight, grad_output) of the last step:
        ``{"layer", "tensor", "amax", "scale", "saturated_frac", ...}``; group granularities add
        ``scale_max`` (``scale`` is then the smallest group scale, the one of the largest amax)."""
        return fp8_telemetry(self.model)
