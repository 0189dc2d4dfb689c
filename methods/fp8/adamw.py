"""AdamW whose first and second moments live in FP8 with one fp32 scale per block.

Per parameter of ``N`` values and block size ``B`` it keeps ``ceil(N/B)`` blocks of FP8 codes for m
and for v plus their fp32 scales (and, for a DRE-transformed moment, a bf16 exponent per block):
``2 + 8/B`` bytes per parameter (2.031 at B = 256), ``2 + 10/B`` with the default DRE on v (2.039),
against 8 for fp32 moments. The update itself runs in fp32 through the same arithmetic as
``methods.fp8.adamw_base``: decode both moments, apply :func:`methods.fp8.adamw_base.adamw_update_` with this step's
gradient, encode again. The step therefore uses the exact fp32 moments; quantisation error only reaches
the next step.

Parameters are either bf16 with stochastic rounding and no master copy (the article's 6 B/param) or bf16
with an fp32 master copy (``master_weights=True``). Three implementations of the step (``impl``):

- ``"torch"``: the PyTorch path in this file, the reference (decode to full-size fp32, update, encode);
- ``"fused"``: the same formulas as one ``torch.compile``d pass over blocks of a parameter on the CPU
  (``methods.fp8.optim_fused``): codes, scales and weights agree with the reference except where
  Inductor's correctly rounded sqrt and SLEEF log2 differ from eager's MKL ones by an ulp (tested bound:
  one bf16 ulp / one FP8 code step in rare values); ~3x faster than the reference on the tiny model;
- ``"native"``: the same formulas as one hand-written C pass per block on the CPU, built with the system
  compiler on first use (``methods.fp8.optim_native``): identical to the reference without DRE; with DRE
  its own log2/exp2 polynomials move a block scale by ulps (tested bound); ~1.5x faster than ``"fused"``;
- ``"triton"``: one fused Triton kernel per parameter on CUDA (``methods.fp8.optim_triton``), tested
  against the reference under ``TRITON_INTERPRET=1``.

``"auto"`` (the default) takes Triton on CUDA tensors; on the CPU the native kernel, else (no C compiler)
the fused step, else (``torch.compile`` cannot compile here) the reference; each reason lands in
``FP8AdamW.fallback``.

Formats (chosen by the experiment in ``benchmarks/OPTIM_ABLATION.md``): m in E4M3 with a plain
per-block absmax scale; v in E4M3 with COAT's dynamic range expansion (``v_transform="dre"``). v
stored plainly in E4M3 (torchao's AdamWFp8) spans the square of the gradient's range and flushes small
values to zero under a nonzero m, so some steps become m / eps (measured: up to 600x the normal step);
``sqrt`` and E5M2 avoid that at ~2.4x the update error of DRE. All of them stay available as options.
"""

from __future__ import annotations

import torch

from methods.fp8 import optim_codec as codec
from methods.fp8.adamw_base import AdamW
from methods.fp8.device import host_float, is_fake

#: "torch": the reference path below; "native": the C kernel on the CPU (``methods.fp8.optim_native``);
#: "fused": one compiled pass per parameter on the CPU (``methods.fp8.optim_fused``); "triton": the CUDA
#: kernel; "auto": triton on CUDA tensors, native on the CPU, else fused, else the reference (reasons in
#: ``FP8AdamW.fallback``)
IMPLS = ("auto", "torch", "native", "fused", "triton")


class FP8AdamW(AdamW):
    def __init__(
        self,
        params,
        lr: float,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        block_size: int = 256,
        m_format: str = "e4m3",
        v_format: str = "e4m3",
        m_transform: str = "none",
        v_transform: str = "dre",
        master_weights: bool = False,
        stochastic_rounding: bool = True,
        seed: int = 0,
        impl: str = "auto",
    ):
        for name, val, ok in (
            ("m_format", m_format, codec.FORMATS),
            ("v_format", v_format, codec.FORMATS),
            ("m_transform", m_transform, ("none", "dre")),
            ("v_transform", v_transform, codec.TRANSFORMS),
            ("impl", impl, IMPLS),
        ):
            if val not in ok:
                raise ValueError(f"{name}={val!r}; valid: {', '.join(ok)}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        )
        self.block_size = block_size
        self.m_fmt, self.v_fmt = codec.FORMATS[m_format], codec.FORMATS[v_format]
        self.m_transform, self.v_transform = m_transform, v_transform
        self.impl = impl
        if impl == "native":  # asked for by name: no compiler is an error now, not a silent fallback
            from methods.fp8 import optim_native

            optim_native.library()
        #: why a step did not run as ``impl`` asked (e.g. torch.compile unavailable), by path
        self.fallback: dict[str, str] = {}
        # a stable index per parameter salts its stochastic-rounding hash
        self._index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        index = getattr(self, "_index", None)
        if index is not None:  # groups added after construction get the next indices
            for p in self.param_groups[-1]["params"]:
                index.setdefault(p, len(index))

    # -- state --------------------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        st["step"] = torch.zeros((), dtype=torch.float32)
        nb = codec.n_blocks(p.numel(), self.block_size)
        for name, fmt, tr in (("exp_avg", self.m_fmt, self.m_transform), ("exp_avg_sq", self.v_fmt, self.v_transform)):
            st[name] = torch.zeros(nb, self.block_size, dtype=fmt.dtype, device=p.device)
            st[f"{name}_scale"] = torch.full((nb,), codec.SCALE_FLOOR / fmt.fmax, device=p.device)
            if tr == "dre":
                st[f"{name}_k"] = torch.ones(nb, dtype=torch.bfloat16, device=p.device)
        if self.master_weights and p.dtype != torch.float32:
            st["master"] = p.detach().float().clone()
        return st

    def _load_moments(self, st: dict, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = p.numel()
        return tuple(
            codec.decode(st[name], st[f"{name}_scale"], fmt, tr, st.get(f"{name}_k")).view(-1)[:n].view(p.shape)
            for name, fmt, tr in (
                ("exp_avg", self.m_fmt, self.m_transform),
                ("exp_avg_sq", self.v_fmt, self.v_transform),
            )
        )

    def _store_moments(self, st: dict, m: torch.Tensor, v: torch.Tensor) -> None:
        for name, x, fmt, tr in (
            ("exp_avg", m, self.m_fmt, self.m_transform),
            ("exp_avg_sq", v, self.v_fmt, self.v_transform),
        ):
            enc = codec.encode(codec.to_blocks(x, self.block_size), fmt, tr)
            st[name].copy_(enc["codes"])
            st[f"{name}_scale"].copy_(enc["scale"])
            if tr == "dre":
                st[f"{name}_k"].copy_(enc["k"])

    def _write_param(self, p: torch.Tensor, w: torch.Tensor, st: dict) -> None:
        # Stochastic rounding by a counter-based hash instead of a torch.Generator, so the Triton
        # kernel draws the very same bits and the two paths agree exactly.
        if self.stochastic_rounding and p.dtype == torch.bfloat16 and "master" not in st:
            p.copy_(codec.round_bf16_stochastic(w, self._salt(p, st)))
        else:
            super()._write_param(p, w, st)

    def _salt(self, p: torch.Tensor, st: dict) -> int:
        return codec.hash_salt(self._seed, self._index.get(p, 0), int(host_float(st["step"], fake=1.0)))

    # -- step ---------------------------------------------------------------------------------
    def use_triton(self, p: torch.Tensor) -> bool:
        return self.path_for(p) == "triton"

    def path_for(self, p: torch.Tensor) -> str:
        """Which implementation steps ``p``: "torch", "fused" or "triton" ("device" for a fake tensor)."""
        if is_fake(p):
            return "device"
        if self.impl != "auto":
            return self.impl
        if p.is_cuda and _triton_available():
            return "triton"
        if p.is_cuda:
            return "torch"
        # the CPU: the native kernel, else the compiled step, else the reference (reasons in self.fallback)
        if "native" not in self.fallback:
            from methods.fp8 import optim_native

            try:
                optim_native.library()
                why = optim_native.unsupported(self, p)
            except optim_native.NativeUnavailable as e:
                why = str(e)
                self.fallback["native"] = why
            if why is None:
                return "native"
        return "torch" if "fused" in self.fallback else "fused"

    @torch.no_grad()
    def step_param(self, p: torch.Tensor, group: dict | None = None) -> None:
        path = self.path_for(p)
        if path == "torch":
            return super().step_param(p, group)
        group = group if group is not None else self.group_of(p)
        st = self.state[p] if self.state[p] else self._init_state(p)
        st["step"] += 1
        if path == "device":
            # a memory trace (fake tensors): the step a GPU runs is the Triton kernel, which updates
            # weights, codes and scales in place and allocates nothing; tracing the CPU's chunked fused
            # step instead would cost one dispatch per chunk of 128 blocks, hours at 10B
            return
        # a probed step: these kernels never expose the fp32 weight they round, so the reference update
        # computes it first, on copies (the kernels' agreement with the reference: see their modules)
        watch = (p.detach().clone(), self.reference_weight(p, group, st)) if self.probes(p, st) else None
        if path == "native":
            from methods.fp8 import optim_native

            optim_native.native_step(self, p, group, st)
        elif path == "triton":
            from methods.fp8 import optim_triton

            optim_triton.fused_step(self, p, group, st)
        else:
            from methods.fp8 import optim_fused

            ran = optim_fused.fused_step(self, p, group, st, eager_ok=self.impl == "fused")
            reason = optim_fused.FALLBACK.get(optim_fused.spec_for(self, p, st))
            if reason:
                self.fallback["fused"] = reason  # auto: the reference path from now on (see path_for)
            if ran is None:  # auto and no compiler: nothing ran, so this step too takes the reference path
                st["step"] -= 1
                return super().step_param(p, group)  # which counts a probed update itself
        if watch is not None:
            self.probe.record(p, *watch, self.rounding(p, st))

    @torch.no_grad()
    def state_stats(self, p: torch.Tensor) -> dict[str, float]:
        """How the stored moments of ``p`` look (for telemetry): ``v_flush_frac``, the fraction of values
        whose v is stored as 0 while m is not (there the next update is m / eps unless a fresh gradient
        refills v: the failure FP8-LM reports for an FP8 second moment); ``m_zero_frac``; and
        ``max_m_over_sqrt_v``, the largest stored |m| / (sqrt(v) + eps), i.e. the largest step in units
        of lr before bias correction (~1 for steady gradients, large where v collapsed)."""
        st = self.state.get(p)
        if not st:
            return {}
        m, v = self._load_moments(st, p)
        m_nz = m != 0
        return {
            "v_flush_frac": float(((v == 0) & m_nz).float().mean()),
            "m_zero_frac": float((~m_nz).float().mean()),
            "max_m_over_sqrt_v": float((m.abs() / (v.sqrt() + self.defaults["eps"])).max()),
        }

    def state_bytes_per_block(self) -> int:
        """Bytes of one block of m plus one of v (codes, scales, DRE exponents)."""
        return codec.state_bytes_per_block(self.block_size, self.m_transform) + codec.state_bytes_per_block(
            self.block_size, self.v_transform
        )


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
