"""The names the benchmarks accept, below both the workflow and the benchmarks: the workflow's config check
(``pipelines.run.config.bench_settings``) refuses a bad name before any work without importing a benchmark, and
each benchmark builds what a name means (``tests/test_layering.py`` holds the two to each other)."""

#: ``benchmarks.optim_bench``: shapes besides the model sizes (one weight matrix), and the CPU optimizers
OPTIM_LAYER_SHAPES = ("7b-layer",)
OPTIM_OPTIMIZERS = (
    "own_fp8_adamw_native",
    "own_fp8_adamw_fused",
    "own_fp8_adamw_torch",
    "torchao_adamw_fp8",
    "fp32_state_adamw",
    "fp32_state_adamw_nearest",
    "torch_fused_adamw_fp32",
)
#: ``benchmarks.gpu_cost``: the GPUs it predicts for, and model shapes besides the model sizes
GPU_DEVICES = ("h200", "h100")
GPU_EXTRA_SHAPES = ("llama3-8b",)
