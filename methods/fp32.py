"""fp32: everything in fp32. The article's 16 B/param: 4 weights + 4 grads + 8 Adam m, v."""

from dataclasses import dataclass

from methods.base import Method
from methods.registry import register


@register("fp32")
@dataclass(frozen=True, kw_only=True)
class FP32(Method):
    summary = "fp32 weights, grads, Adam m and v; fp32 compute"
    stores = {"weights": "fp32", "master": "-", "grads": "fp32", "m": "fp32", "v": "fp32", "compute": "fp32"}
