"""Predicted FP8 training speedup over bf16 on a GPU, on paper: a roofline per operation of one training step.

    python -m benchmarks.gpu_cost [--device h200] [--models 125m 350m 1b 7b 10b] [--seq-lens 2048 4096]
                                  [--micro-batch 8] [--csv results/bench/gpu_predicted.csv]
                                  [--inputs-csv ...] [--anchors-csv ...]

Nothing here is measured. Every operation of a Llama-style step (``models/config.py`` shapes) takes
``max(flops / (peak * mm_eff), bytes / (bandwidth * bw_eff)) + kernel_gap``; the step is the sum. The FP8
recipes differ from bf16 only in the blocks' seven projections: their three GEMMs each (forward, input
gradient, weight gradient) run at the FP8 rate and read 1-byte operands, and every operand (input X,
weight W, output gradient dY) is first quantized, with the transposed copy Hopper's FP8 GEMM needs for the
backward (it takes K-major operands only):

- ``tensorwise`` (current scaling: fp8-own-tensorwise, torchao tensorwise, TE Float8CurrentScaling): the
  scale needs the amax of the whole tensor before any element is cast, so two passes per operand: an amax
  pass (read 2 B/element) and a fused cast + transpose (read 2, write 1 + 1).
- ``delayed`` (TE DelayedScaling, fp8-own-delayed): the scale comes from the amax history, so the cast
  computes the next amax on the way: one pass (read 2, write 1 + 1).
- ``blockwise`` (1x128 activation / 128x128 weight scales, DeepSeek-V3, TE Float8BlockScaling,
  fp8-own-blockwise): each scale is local to its block, one pass (read 2, write 1 + 1, plus one fp32 scale
  per 128 elements per layout); the GEMM promotes its accumulator to fp32 every 128 elements, so it is
  assumed to run at ``blockwise_gemm_factor`` of the tensorwise FP8 rate.

Attention (bf16 in every recipe), the output head (kept high precision by every recipe here), the
element-wise ops (norms, RoPE, SwiGLU, residual adds, cross-entropy) and the optimizer step cost the same
under every recipe; they are why the speedup stays below the 2x of the peak ratio. The inputs (peaks,
efficiencies, bytes) are written to ``--inputs-csv`` and printed in the report; none is fitted to the
anchors. ``--anchors-csv`` sets the prediction beside published speedups (``ANCHORS``, each with its public
source), each at the anchor's own shape, device and parallelism.

Not modelled: communication (FSDP all-gathers and reduce-scatters are taken as overlapped with compute),
pipeline bubbles, the CUDA context, fusion of a cast into the op before it (TE's LayerNormLinear), FP8
weight all-gather, and the memory FP8 frees for a larger micro-batch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: bytes per element of the formats the byte counts use
BF16, FP8, FP32 = 2, 1, 4


@dataclass(frozen=True)
class Device:
    name: str
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    fp8_flops: float
    hbm_bytes_per_s: float
    mm_eff: float  # fraction of the dense peak a large GEMM reaches (bf16 and FP8 alike)
    bw_eff: float  # fraction of HBM bandwidth a streaming kernel reaches
    attn_eff: float  # fraction of the bf16 peak a fused (flash) attention kernel reaches
    kernel_gap_s: float  # fixed cost per kernel (launch / tail), the same for every kernel
    source: str


# H200 SXM: 989 TFLOP/s bf16 dense, 1979 FP8 dense, 4.8 TB/s HBM3e (NVIDIA's data sheet).
# mm_eff and bw_eff as measured on an H200: bf16 matmul ~790 TFLOP/s on random data (790/989), device-to-device
# copy ~4.3 TB/s (4.3/4.8); FP8 GEMMs are assumed to reach the same fraction of their peak (so the 2x of the
# peaks bounds any FP8 GEMM speedup). attn_eff and kernel_gap_s are assumptions, not
# measurements: flash attention at half the bf16 peak (FlashAttention-2 class), 2 us per kernel.
H200 = Device(
    "H200 SXM",
    989e12,
    1979e12,
    4.8e12,
    mm_eff=790 / 989,
    bw_eff=4.3 / 4.8,
    attn_eff=0.5,
    kernel_gap_s=2e-6,
    source="peaks: data sheet; mm_eff, bw_eff: ceilings measured on an H200; attn_eff, kernel_gap_s: assumed",
)
# H100 SXM, where the published anchors ran: the same tensor-core peaks, 3.35 TB/s HBM3 (data sheet); the
# efficiency fractions are the H200's (assumed to carry over: same Hopper SM).
H100 = Device(
    "H100 SXM",
    989e12,
    1979e12,
    3.35e12,
    mm_eff=790 / 989,
    bw_eff=4.3 / 4.8,
    attn_eff=0.5,
    kernel_gap_s=2e-6,
    source="peaks: data sheet; efficiencies: the H200's, assumed",
)
DEVICES = {"h200": H200, "h100": H100}


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int

    @classmethod
    def from_model(cls, name: str) -> Shape:
        from models import SIZES, get_model_config

        try:
            c = get_model_config(name)
        except ValueError:
            raise ValueError(
                f"unknown model {name!r}; valid: {', '.join(SIZES)} or {', '.join(EXTRA_SHAPES)}"
            ) from None
        return cls(name, c.dim, c.n_layers, c.n_heads, c.n_heads, c.ffn_dim, c.vocab_size)

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of the seven projections of one block (the FP8 recipes convert these)."""
        d, f, kv = self.dim, self.ffn_dim, self.dim * self.n_kv_heads // self.n_heads
        return [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]

    def n_params(self) -> int:
        """As ``ModelConfig.n_params``: blocks, two RMSNorm weights per block, embedding, untied head, final norm."""
        return (
            self.n_layers * (sum(i * o for i, o in self.linears()) + 2 * self.dim)
            + 2 * self.vocab_size * self.dim
            + self.dim
        )


# The anchor torchao and torchtitan publish is Llama-3-8B (GQA with 8 KV heads, 128k vocabulary), not a size in
# models/; its shape from Meta's model card.
LLAMA3_8B = Shape("llama3-8b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128256)
EXTRA_SHAPES = {"llama3-8b": LLAMA3_8B}


def shape(name: str) -> Shape:
    return EXTRA_SHAPES[name] if name in EXTRA_SHAPES else Shape.from_model(name)


@dataclass(frozen=True)
class Recipe:
    name: str
    methods: str  # which of the project's (and others') recipes this stands for
    kernels_per_operand: int
    read_bytes: float  # per element of a bf16 operand, over all quantization passes
    write_bytes: float  # per element: the FP8 copy and its transposed copy (+ scales)
    gemm_factor: float = 1.0  # FP8 GEMM rate relative to the tensorwise FP8 GEMM


RECIPES = {
    "tensorwise": Recipe(
        "tensorwise",
        "fp8-own-tensorwise, fp8-torchao-tensorwise, TE Float8CurrentScaling",
        kernels_per_operand=2,
        read_bytes=2 * BF16,
        write_bytes=2 * FP8,
    ),
    "delayed": Recipe(
        "delayed", "fp8-own-delayed, TE DelayedScaling", kernels_per_operand=1, read_bytes=BF16, write_bytes=2 * FP8
    ),
    # blockwise_gemm_factor 0.85: an assumption (fp32 promotion every 128 elements on CUDA cores); no published
    # anchor measures it
    "blockwise": Recipe(
        "blockwise",
        "fp8-own-blockwise, TE Float8BlockScaling, DeepSeek-V3",
        kernels_per_operand=1,
        read_bytes=BF16,
        write_bytes=2 * FP8 + 2 * FP32 / 128,
        gemm_factor=0.85,
    ),
}

# Bytes per token of the element-wise ops, per block, unfused bf16 (fwd + bwd), in units of dim and ffn_dim:
# 2 RMSNorms (fwd read+write 4d, bwd read x, dy, write dx 6d: 20d), RoPE on q and k (fwd 8d, bwd 8d: 16d), 2
# residual adds (fwd 12d, their gradients 12d: 24d), SwiGLU (fwd read 2 f-wide, write 1: 6f; bwd read 3, write 2:
# 10f). torch.compile fuses some of these, which would shrink the non-FP8 share and raise the speedup.
ELEMENTWISE_D, ELEMENTWISE_F, ELEMENTWISE_KERNELS = 60, 16, 12
# Per token outside the blocks: embedding fwd + bwd (8d), final norm (10d), cross-entropy over fp32 logits (read
# the logits, write their gradient: 8 B per vocabulary entry).
OUTER_D, OUTER_V = 18, 8
# Optimizer step per parameter (every recipe here keeps fp32 master weights and Adam states, as torchao and TE
# do): AdamW reads w, g, m, v (16 B) and writes w, m, v (12 B), then the bf16 compute copy is cast (read 4, write 2).
OPTIM_BYTES_PER_PARAM = 34
# Causal flash attention skips the masked half of the score matrix.
CAUSAL_FRACTION = 0.5


def inputs_table(dev: Device) -> list[dict]:
    """Every input of the prediction, with where it comes from."""
    rows = [
        ("device", dev.name, "", dev.source),
        ("bf16_dense_peak", dev.bf16_flops / 1e12, "TFLOP/s", "data sheet"),
        ("fp8_dense_peak", dev.fp8_flops / 1e12, "TFLOP/s", "data sheet"),
        ("hbm_bandwidth", dev.hbm_bytes_per_s / 1e12, "TB/s", "data sheet"),
        (
            "mm_eff",
            dev.mm_eff,
            "of peak",
            "bf16 matmul ~790 TFLOP/s measured on an H200 (random data); FP8 assumed alike",
        ),
        ("bw_eff", dev.bw_eff, "of bandwidth", "device-to-device copy ~4.3 TB/s measured on an H200"),
        ("attn_eff", dev.attn_eff, "of bf16 peak", "assumed (flash attention, bf16 in every recipe)"),
        ("kernel_gap", dev.kernel_gap_s * 1e6, "us per kernel", "assumed"),
        ("causal_fraction", CAUSAL_FRACTION, "of the score matrix", "causal flash attention skips the masked half"),
        (
            "elementwise_bytes_per_token_block",
            f"{ELEMENTWISE_D}*dim + {ELEMENTWISE_F}*ffn_dim",
            "B",
            "norms, RoPE, residual adds, SwiGLU; unfused bf16, fwd + bwd",
        ),
        ("outer_bytes_per_token", f"{OUTER_D}*dim + {OUTER_V}*vocab", "B", "embedding, final norm, cross-entropy"),
        ("optimizer_bytes_per_param", OPTIM_BYTES_PER_PARAM, "B", "fp32 AdamW (read w g m v, write w m v) + bf16 cast"),
    ]
    for r in RECIPES.values():
        rows += [
            (
                f"{r.name}: quantize bytes per element",
                r.read_bytes + r.write_bytes,
                "B",
                f"read {r.read_bytes:g} + write {r.write_bytes:g} ({r.kernels_per_operand} kernel(s) per operand); "
                f"{r.methods}",
            ),
            (
                f"{r.name}: FP8 GEMM rate factor",
                r.gemm_factor,
                "of tensorwise",
                "assumed" if r.gemm_factor != 1 else "per-tensor scales: the plain FP8 GEMM",
            ),
        ]
    # 4 significant digits, as written in the sources (mm_eff 790/989 = 0.7988)
    return [
        {"input": n, "value": float(f"{v:.4g}") if isinstance(v, float) else v, "unit": u, "source": s}
        for n, v, u, s in rows
    ]


def _op(flops: float, nbytes: float, peak: float, dev: Device) -> float:
    return max(flops / (peak * dev.mm_eff), nbytes / (dev.hbm_bytes_per_s * dev.bw_eff)) + dev.kernel_gap_s


def step_time(s: Shape, seq_len: int, micro_batch: int, recipe: str | None, dev: Device = H200, ranks: int = 1) -> dict:
    """Seconds of one micro-batch's training step (fwd + bwd + its share of one optimizer step, no gradient
    accumulation), split into parts; ``recipe`` None is bf16. ``ranks`` shards the optimizer step (FSDP)."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)} (or None for bf16)")
    r = RECIPES.get(recipe)
    T, L, d = seq_len * micro_batch, s.n_layers, s.dim
    bw = dev.hbm_bytes_per_s * dev.bw_eff
    gemm = quant = quant_bytes = 0.0
    for k, n in s.linears():
        for a, b, out in ((T * k, k * n, T * n), (T * n, k * n, T * k), (T * k, T * n, k * n)):  # fwd, dgrad, wgrad
            if r is None:
                gemm += _op(2 * T * k * n, BF16 * (a + b + out), dev.bf16_flops, dev)
            else:
                gemm += _op(2 * T * k * n, FP8 * (a + b) + BF16 * out, dev.fp8_flops * r.gemm_factor, dev)
        if r is not None:
            for numel in (T * k, k * n, T * n):  # X, W, dY: each quantized once, with its transposed copy
                nb = numel * (r.read_bytes + r.write_bytes)
                quant_bytes += nb
                quant += nb / bw + r.kernels_per_operand * dev.kernel_gap_s
    gemm, quant, quant_bytes = gemm * L, quant * L, quant_bytes * L
    attn_flops = 12 * L * T * seq_len * d * CAUSAL_FRACTION  # QK^T and PV, fwd + 2x bwd, causal
    attn = attn_flops / (dev.bf16_flops * dev.attn_eff) + 3 * L * dev.kernel_gap_s
    head = sum(
        _op(2 * T * d * s.vocab_size, BF16 * (a + b + c), dev.bf16_flops, dev)
        for a, b, c in ((T * d, d * s.vocab_size, T * s.vocab_size),) * 3
    )
    elem = (
        T * (L * (ELEMENTWISE_D * d + ELEMENTWISE_F * s.ffn_dim) + OUTER_D * d + OUTER_V * s.vocab_size) / bw
        + (L * ELEMENTWISE_KERNELS + 6) * dev.kernel_gap_s
    )
    optim = OPTIM_BYTES_PER_PARAM * s.n_params() / ranks / bw + 4 * dev.kernel_gap_s
    linear_flops = 6 * T * L * sum(k * n for k, n in s.linears())
    return {
        "gemm_s": gemm,
        "quant_s": quant,
        "quant_bytes": quant_bytes,
        "attention_s": attn,
        "head_s": head,
        "elementwise_s": elem,
        "optimizer_s": optim,
        "total_s": gemm + quant + attn + head + elem + optim,
        "linear_flops": linear_flops,
        "attention_flops": attn_flops,
        "head_flops": 6 * T * d * s.vocab_size,
        "total_flops": linear_flops + attn_flops + 6 * T * d * s.vocab_size,
    }


def predict(s: Shape, seq_len: int, micro_batch: int, recipe: str, dev: Device = H200, ranks: int = 1) -> dict:
    """One row: the bf16 step, the recipe's step, their parts and the speedup (bf16 time / FP8 time)."""
    b = step_time(s, seq_len, micro_batch, None, dev, ranks)
    f = step_time(s, seq_len, micro_batch, recipe, dev, ranks)
    return {
        "device": dev.name,
        "model": s.name,
        "n_params": s.n_params(),
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "ranks": ranks,
        "recipe": recipe,
        "kind": "predicted",
        "total_flops": b["total_flops"],
        "linear_flop_frac": b["linear_flops"] / b["total_flops"],
        "attention_flop_frac": b["attention_flops"] / b["total_flops"],
        "bf16_step_ms": 1e3 * b["total_s"],
        "fp8_step_ms": 1e3 * f["total_s"],
        "bf16_gemm_ms": 1e3 * b["gemm_s"],
        "fp8_gemm_ms": 1e3 * f["gemm_s"],
        "quant_ms": 1e3 * f["quant_s"],
        "quant_gb": f["quant_bytes"] / 1e9,
        "same_in_both_ms": 1e3 * (b["total_s"] - b["gemm_s"]),
        "quant_frac_of_fp8_step": f["quant_s"] / f["total_s"],
        "bf16_mfu": b["total_flops"] / b["total_s"] / dev.bf16_flops,
        "speedup": b["total_s"] / f["total_s"],
    }


@dataclass(frozen=True)
class Anchor:
    name: str
    source: str
    recipe: str
    device: str
    shape: str
    seq_len: int
    micro_batch: int
    ranks: int
    lo: float | None  # published speedup range; lo None: "no speedup" (at most hi)
    hi: float
    settings_note: str


# Published speedups (the source of each is named in the row). Shapes, micro-batches and rank counts
# the sources do not give are marked as assumed in settings_note.
ANCHORS = [
    Anchor(
        "torchao tensorwise, Llama-3-8B",
        "torchao float8 README (+25.0%); torchtitan benchmarks/llama3_h100_202412_torchtitan.md (+28%)",
        "tensorwise",
        "h100",
        "llama3-8b",
        8192,
        1,
        8,
        1.25,
        1.28,
        "8xH100, FSDP2 + compile, seq 8192 (source); local batch 1 (torchtitan's default, assumed)",
    ),
    Anchor(
        "TransformerEngine, models > 1B (1b)",
        "TE#131 maintainer: 30-40% end-to-end for models > 1B (NeMo)",
        "delayed",
        "h100",
        "1b",
        2048,
        1,
        8,
        1.30,
        1.40,
        "seq 2048, micro-batch 1, 8 ranks: assumed (not given)",
    ),
    Anchor(
        "TransformerEngine, models > 1B (7b)",
        "TE#131 maintainer: 30-40% end-to-end for models > 1B (NeMo)",
        "delayed",
        "h100",
        "7b",
        2048,
        1,
        8,
        1.30,
        1.40,
        "seq 2048, micro-batch 1, 8 ranks: assumed (not given)",
    ),
    Anchor(
        "TE vs BF16 at 7B (FP8-LM Table 5)",
        "FP8-LM arXiv 2310.18313 Table 5: TE +41% at 7B, same batch",
        "delayed",
        "h100",
        "7b",
        2048,
        1,
        8,
        1.41,
        1.41,
        "GPT-7B as models/ 7b; seq 2048 (FP8-LM), micro-batch 1 and 8 ranks assumed",
    ),
    Anchor(
        "no speedup at small sizes (125m)",
        "pytorch/ao#572 (tiny models slower); MS-AMP#176/#198/#172 (FP8 helps only above ~1B)",
        "tensorwise",
        "h200",
        "125m",
        2048,
        8,
        1,
        None,
        1.0,
        "the gpu profile's batch 8 x seq 2048 on one H200",
    ),
]


def anchor_rows() -> list[dict]:
    out = []
    for a in ANCHORS:
        p = predict(shape(a.shape), a.seq_len, a.micro_batch, a.recipe, DEVICES[a.device], a.ranks)["speedup"]
        lo = a.lo if a.lo is not None else float("-inf")
        verdict = (
            "agrees"
            if lo <= p <= a.hi
            else ("prediction above the anchor" if p > a.hi else "prediction below the anchor")
        )
        out.append(
            {
                "anchor": a.name,
                "recipe": a.recipe,
                "device": DEVICES[a.device].name,
                "model": a.shape,
                "seq_len": a.seq_len,
                "micro_batch": a.micro_batch,
                "ranks": a.ranks,
                "anchor_lo": a.lo,
                "anchor_hi": a.hi,
                "predicted": p,
                "verdict": verdict,
                "settings": a.settings_note,
                "source": a.source,
            }
        )
    return out


def grid(models, seq_lens, micro_batch: int, dev: Device) -> list[dict]:
    return [predict(shape(m), s, micro_batch, r, dev) for m in models for s in seq_lens for r in RECIPES]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="h200", choices=list(DEVICES))
    ap.add_argument("--models", nargs="+", default=["125m", "350m", "1b", "7b", "10b"])
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 4096])
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per step (the gpu profile's batch_size)")
    ap.add_argument("--csv", help="the predictions, one row per model x seq_len x recipe")
    ap.add_argument("--inputs-csv", help="the inputs the prediction rests on")
    ap.add_argument("--anchors-csv", help="the prediction beside published speedups")
    args = ap.parse_args(argv)
    for m in args.models:
        try:
            shape(m)
        except ValueError as e:
            ap.error(str(e))
    if args.micro_batch < 1 or min(args.seq_lens) < 1:
        ap.error("--micro-batch and --seq-lens must be positive")
    dev = DEVICES[args.device]
    rows, anchors = grid(args.models, args.seq_lens, args.micro_batch, dev), anchor_rows()
    from benchmarks.bench_csv import write_csv

    for path, table in ((args.csv, rows), (args.inputs_csv, inputs_table(dev)), (args.anchors_csv, anchors)):
        if path:
            write_csv(path, table)
    print(f"predicted on paper for {dev.name} (not measured)")
    for r in rows:
        print(
            f"  {r['model']:>9} seq {r['seq_len']:>5} {r['recipe']:<10} speedup {r['speedup']:.3f} "
            f"(quantization {r['quant_frac_of_fp8_step']:.0%} of the FP8 step)"
        )
    for a in anchors:
        print(
            f"  anchor {a['anchor']}: {a['anchor_lo']}-{a['anchor_hi']} vs predicted {a['predicted']:.3f}: "
            f"{a['verdict']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
