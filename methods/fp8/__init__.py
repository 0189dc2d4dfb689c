"""fp8bench's own FP8 training numerics, one concern per module.

- ``formats``: E4M3 / E5M2 (torch's float8) and any other ExMy simulated exactly; saturating
  round-to-nearest-even casts; the precision ladder (``LADDER``);
- ``scaling``: scale selection (current, delayed with amax history; tensor, row, 1×128, 128×128 groups);
- ``quantize``: tensor → FP8 codes + scales (PyTorch path; dispatches to Triton on a GPU);
- ``gemm``: FP8 GEMM backends (``torch._scaled_mm``, pure-PyTorch reference, Triton) with fp32 accumulation;
- ``kernels``: host side of the Triton kernels (launches, availability; imports without Triton);
- ``kernels_triton``: the ``@triton.jit`` kernels (imported on first use only);
- ``linear``: the FP8 linear layer (autograd Function + module), model conversion, telemetry;
- ``naive``: the FP8-stored linear of the negative control (weights and grads *stored* in FP8);
- ``saved``: nonlinear layers that keep their inputs for backward in FP8 (COAT);
- ``adamw_base``, ``adamw``, ``optim_codec``, ``optim_fused``, ``optim_triton``, ``rounding``: AdamW, its
  FP8-state variant and the state codec, its fused CPU and Triton steps, stochastic rounding;
- ``lost_updates``: whether an update survives the rounding of a weight stored in bf16 or FP8 (predicted
  from the format's spacing, measured on the stored bits) and the lost-update bias, per probed step.

This package imports only torch, triton and itself (``tests/test_layering.py``): the recipes that use it
are ``methods/fp8_own.py``, ``methods/fp8_naive.py`` and ``methods/fp8_optim.py``; its benchmarks and
studies are in ``benchmarks/``.
"""
