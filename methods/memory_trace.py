"""Memory of a real training step at full size, traced on a CPU without allocating it.

The analytic model (``methods.memory``) predicts persistent state; what decides whether a model trains on
a GPU is the *peak* of a step: persistent state plus activations and the temporaries of backward and of
the optimizer. This module runs the method's own ``Trainee.train_step`` twice on a model built under
``FakeTensorMode`` (tensors with shapes, dtypes and storages but no data) inside PyTorch's
``MemTracker`` (a dispatch mode that counts every storage the step creates and frees). A 10B step
traces in well under a minute in a few hundred MB of RAM.

What is measured, per component (``COMPONENTS`` of ``methods.ledger`` plus ``activations``,
``temporaries``, ``other``):

- ``steady``: what the method holds after step 2 (weights, master, grads, optimizer state, FP8
  metadata), from the method's own ledger walked over the traced tensors; ``other`` is what the tracker
  still holds beyond it (RoPE tables, which are non-persistent buffers, and the last loss);
- ``peak``: the largest total the tracker saw during step 2, split by what each live storage was at that
  moment. Storages that survive step 1 are first re-labelled with the component the ledger gives them,
  so state a method creates outside ``optimizer.step`` (fp8-naive's FP8 moments, fp8-lean's step in
  backward) counts as optimizer state, not as an activation. Master copies live in the optimizer's
  state; the peak's ``master`` is the steady master and ``optim`` the rest;
- ``phase`` peaks (forward, backward, optimizer) and the largest activation total (``act_peak``).

Where code takes a host-side shortcut on real CPU tensors, a fake tensor takes the device path
(``methods.fp8.device``): the trace is of the step a GPU would run, GEMMs through ``torch._scaled_mm``.
What no trace sees: the CUDA context, cuBLAS/cuDNN workspaces, allocator rounding and fragmentation
(PyTorch's own tests accept ±10% against ``max_memory_allocated``).

    python -m methods.memory trace --model 10b --method fp8-e2e --batch-size 1 --seq-len 4096
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from dataclasses import dataclass, field, replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType, _UpdateType

from methods.base import HParams, RunContext
from methods.ledger import COMPONENTS, storage_key
from models.config import ModelConfig

#: ``gathered``: what a sharded step holds beyond its shards (FSDP2's all-gathered weights, its all-gather
#: and reduce-scatter buffers, unsharded gradients); 0 in a single-process trace
PEAK_COMPONENTS = COMPONENTS + ("gathered", "activations", "temporaries", "other")
#: where the step is: inside the model's forward, autograd's backward, ``optimizer.step``, or the loop's
#: own code between them (zero_grad, clipping; the previous step's gradients are alive at its start)
PHASES = ("forward", "backward", "optimizer", "loop")

#: ledger component → the tracker's category it is re-labelled to after step 1 (master copies are
#: optimizer state to the tracker; the split comes from the ledger)
_REFTYPE = {
    "weights": _MemRefType.PARAM,
    "grads": _MemRefType.GRAD,
    "master": _MemRefType.OPT,
    "optim": _MemRefType.OPT,
    "meta": _MemRefType.BUFFER,
}
_FROM_REFTYPE = {
    _MemRefType.PARAM: "weights",
    _MemRefType.GRAD: "grads",
    _MemRefType.OPT: "optim",
    _MemRefType.BUFFER: "meta",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OTH: "other",
}


class UntraceableError(RuntimeError):
    """A method whose step cannot run under fake tensors; the message says why."""


_DEVICE_QUERY = torch.ops.prim.device.default


class _NoHook:
    def remove(self) -> None:
        pass


class _PhasePeaks:
    """Peak bookkeeping shared by the single-process and the per-rank tracker: the global peak, the peak
    of each phase and the largest activation total.

    MemTracker also keeps a peak per module, walking every module it has seen on every op: two thirds
    of a 7B trace's time. Only whole-step figures are reported, so that walk is replaced.
    """

    #: ledger component → the tracker's category it is re-labelled to after step 1 (master copies are
    #: optimizer state to the tracker; the split comes from the ledger), and back
    to_reftype = _REFTYPE
    from_reftype = _FROM_REFTYPE
    #: what a storage nobody owns is, when it outlives a step
    unowned = (_MemRefType.ACT, _MemRefType.TEMP, _MemRefType.BUFFER)
    other = _MemRefType.OTH
    act = _MemRefType.ACT

    def _init_peaks(self) -> None:
        self.phase_peak: dict[str, int] = {}
        self.act_peak = 0

    def _update_peak_stats(self, peak_state) -> None:  # noqa: ARG002 - per-module states not kept
        if self._in_opt:
            phase = "optimizer"
        elif self._mod_tracker.is_bw:
            phase = "backward"
        else:
            phase = "forward" if len(self._mod_tracker.parents) > 1 else "loop"
        for dev, snap in self._curr_mem_snap.items():
            total = snap[_TOTAL_KEY]
            if total > self._peak_mem.get(dev, 0):
                self._peak_mem[dev] = total
                self._peak_mem_snap[dev] = dict(snap)
            if total > self.phase_peak.get(phase, 0):
                self.phase_peak[phase] = total
            self.act_peak = max(self.act_peak, snap.get(self.act, 0))

    def reset_peaks(self) -> None:
        self._peak_mem, self._peak_mem_snap = {}, {}
        self.phase_peak, self.act_peak = {}, 0

    def relabel(self, owners: dict) -> int:
        """Give every tracked storage the ledger's component (``owners``: storage key → component);
        storages the ledger does not own that outlived a step (non-persistent buffers such as the RoPE
        tables, the last loss) become ``other``. Returns the bytes relabelled."""
        moved = 0
        for st, (winfo, _) in list(self._WINFO.items()):
            comp = owners.get(storage_key(st))
            new = (
                self.to_reftype[comp]
                if comp is not None
                else (self.other if winfo.reftype in self.unowned else winfo.reftype)
            )
            if new != winfo.reftype:
                old, winfo.reftype = winfo.reftype, new
                self._update_snap(_UpdateType.REF, winfo, old_reftype=old)
                moved += winfo.mem_consumed
        return moved

    def snapshot(self, kind: str) -> dict:
        snaps = self.get_tracker_snapshot(kind)
        return next(iter(snaps.values()), {})

    def split(self, snap: dict, steady: dict[str, int]) -> dict[str, int]:
        """A snapshot's bytes by component (``PEAK_COMPONENTS``)."""
        out = dict.fromkeys(PEAK_COMPONENTS, 0)
        for ref, comp in self.from_reftype.items():
            out[comp] += int(snap.get(ref, 0))
        out["master"] = min(steady["master"], out["optim"])  # constant through step 2
        out["optim"] -= out["master"]
        return out


class _StepTracker(_PhasePeaks, MemTracker):
    """The single-process tracker: MemTracker with :class:`_PhasePeaks` and a leaner dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self._init_peaks()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # MemTracker's own dispatch, less what a single-process trace never meets (DTensor, nested fake
        # modes, collectives) and with the outputs walked directly: a third of the tracker's cost per op
        res = func(*args, **(kwargs or {}))
        if func is _DEVICE_QUERY:  # a third of an FP8 step's ops: `tensor.device`, which allocates nothing
            return res
        if self._in_opt:
            reftype = _MemRefType.OPT
        elif self._mod_tracker.is_bw and not self._in_ac:
            reftype = _MemRefType.TEMP
        else:
            reftype = _MemRefType.ACT
        for out in res if isinstance(res, (tuple, list)) else (res,):
            if isinstance(out, torch.Tensor):
                self._track(reftype, out)
            elif isinstance(out, (tuple, list)):
                for t in out:
                    if isinstance(t, torch.Tensor):
                        self._track(reftype, t)
        self._update_peak_stats(None)
        return res

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        # MemTracker hooks every parameter for its gradient; a frozen one (fp8-naive's FP8 weight codes,
        # which it updates itself) refuses hooks. Marking it as hooked already skips it.
        for p in module.parameters():
            if not p.requires_grad and p not in self._param_to_grad_hook_handles:
                self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
        return super()._track_module_params_and_buffers(module, install_grad_hooks)


class _RankTracker(_PhasePeaks, FSDPMemTracker):
    """One rank of an FSDP2 step: FSDPMemTracker's categories (sharded and unsharded weights and grads,
    all-gather and reduce-scatter buffers) with :class:`_PhasePeaks`."""

    to_reftype = {
        "weights": _FSDPRefType.SHARDED_PARAM,
        "grads": _FSDPRefType.SHARDED_GRAD,
        "master": _FSDPRefType.OPT,
        "optim": _FSDPRefType.OPT,
        "meta": _FSDPRefType.BUFFER,
    }
    from_reftype = {
        _FSDPRefType.SHARDED_PARAM: "weights",
        _FSDPRefType.SHARDED_GRAD: "grads",
        _FSDPRefType.OPT: "optim",
        _FSDPRefType.BUFFER: "meta",
        _FSDPRefType.UNSHARDED_PARAM: "gathered",
        _FSDPRefType.UNSHARDED_GRAD: "gathered",
        _FSDPRefType.ALL_GATHER: "gathered",
        _FSDPRefType.REDUCE_SCATTER: "gathered",
        _FSDPRefType.ACT: "activations",
        _FSDPRefType.TEMP: "temporaries",
        _FSDPRefType.INP: "other",
    }
    unowned = (_FSDPRefType.ACT, _FSDPRefType.TEMP, _FSDPRefType.BUFFER)
    other = _FSDPRefType.INP  # FSDPMemTracker has no "other": the inputs' category holds what outlives a step
    act = _FSDPRefType.ACT

    def __init__(self, mod, optm) -> None:
        super().__init__(mod, optm)
        self._init_peaks()


@dataclass
class Trace:
    """What one traced step holds. Bytes throughout."""

    method: str
    model: str
    batch_size: int
    seq_len: int
    n_params: int
    steady: dict[str, int]
    peak: dict[str, int]
    peak_total: int
    peak_phase: str
    phase_peak: dict[str, int]
    act_peak: int
    step1_peak_total: int
    trace_s: float
    #: the step calls ``torch.compile`` (torchao's low-bit optimizers), traced as eager code: an upper bound
    eager_compiled: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def persistent(self) -> int:
        return sum(self.steady[c] for c in COMPONENTS)

    def row(self) -> dict:
        r = {
            "method": self.method,
            "model": self.model,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "n_params": self.n_params,
            "status": "ok",
            "reason": "",
        }
        r.update({f"steady_{c}_bytes": self.steady[c] for c in COMPONENTS + ("other",)})
        r["persistent_bytes"] = self.persistent
        r.update({f"peak_{c}_bytes": self.peak[c] for c in PEAK_COMPONENTS})
        r.update(
            peak_bytes=self.peak_total,
            peak_phase=self.peak_phase,
            act_peak_bytes=self.act_peak,
            step1_peak_bytes=self.step1_peak_total,
        )
        r.update({f"peak_{p}_bytes": self.phase_peak.get(p, 0) for p in PHASES})
        r["trace_s"] = round(self.trace_s, 2)
        r["compiled_code_traced_eagerly"] = self.eager_compiled
        r.update(self.extra)
        return r


def trace_step(
    method, cfg: ModelConfig, batch_size: int, seq_len: int, hp: HParams | None = None, model_name: str = ""
) -> Trace:
    """Trace two training steps of ``method`` (a ``Method``) on ``Transformer(cfg)``; see :func:`trace_steps`."""
    return trace_steps(method, cfg, batch_size, [seq_len], hp, model_name)[0]


def _grid(method, cfg: ModelConfig, seq_lens) -> tuple[list[int], ModelConfig]:
    """The sorted lengths and a config whose RoPE tables reach the longest; refuses a method with unmet
    requirements (a CUDA-only engine) with the reason."""
    unmet = method.unmet()
    if unmet:
        raise UntraceableError("; ".join(unmet))
    seq_lens = sorted(set(seq_lens))
    if seq_lens[-1] > cfg.max_seq_len:  # a longer context than the named size trains at: RoPE tables to match
        cfg = replace(cfg, max_seq_len=seq_lens[-1])
    return seq_lens, cfg


@contextlib.contextmanager
def _failures_are_reasons():
    """Any failure under fake tensors is the method's reason for being untraceable, in one line."""
    try:
        yield
    except UntraceableError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UntraceableError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]) from e


def trace_steps(
    method, cfg: ModelConfig, batch_size: int, seq_lens: list[int], hp: HParams | None = None, model_name: str = ""
) -> list[Trace]:
    """One :class:`Trace` per sequence length: step 1 (at the longest) creates the optimizer state, then one
    steady-state step per length is traced with its own peaks. ``trace_s`` of each is the time from the
    start to the end of its step (the whole build, warm-up and step 1 included).

    Raises :class:`UntraceableError` (with the reason) when the method cannot be traced: unmet
    requirements (a CUDA-only engine), several ranks, or a step that needs real values.
    """
    seq_lens, cfg = _grid(method, cfg, seq_lens)
    if method.world_size > 1:
        raise UntraceableError(
            f"runs as {method.world_size} ranks; the single-process trace does not apply "
            f"(see the per-rank trace, trace_rank_steps)"
        )
    hp = hp or HParams(lr=1e-3)
    t0 = time.perf_counter()
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with _failures_are_reasons(), _eager_compile() as compiled:
        _warm_up(method, hp)
        del compiled[:]
        traces = _trace(method, cfg, batch_size, seq_lens, hp, model_name, fake, t0)
        for t in traces:
            t.eager_compiled = bool(compiled)
        return traces


@contextlib.contextmanager
def _eager_compile():
    """``torch.compile`` as the identity. Dynamo cannot trace under a dispatch mode (the tracker), and
    torchao's low-bit optimizers compile their per-parameter step: traced eagerly, that step's
    temporaries are those of the unfused update, an upper bound on the compiled one's."""
    orig = torch.compile
    calls = []

    def identity(model=None, **_kw):
        calls.append(model)
        return model if model is not None else (lambda fn: fn)

    torch.compile = identity
    try:
        yield calls
    finally:
        torch.compile = orig


def _warm_up(method, hp: HParams) -> None:
    """One real step on a one-layer model: caches a step fills on first use (FP8 decode tables,
    torchao's quantization maps) then hold real tensors. Filled under fake mode, they would hold fake
    tensors, which cannot be read on the host and would leak into later real runs of this process."""
    from models.llama import build_model

    tiny = ModelConfig(dim=128, n_layers=1, n_heads=1, ffn_dim=256, vocab_size=256, max_seq_len=16)
    trainee = method.build(build_model(tiny, seed=0), hp, RunContext(device=torch.device("cpu"), seed=0))
    x = torch.randint(0, tiny.vocab_size, (1, 16))
    trainee.train_step(x, x, hp.lr)


def _meta_model(method, cfg):
    from models.llama import Transformer

    with torch.device("meta"):
        # built and converted as a run does (fp32, then the method's own conversion), on the meta
        # device: fake parameters cannot be converted in place (``module.to(dtype)`` swaps tensors,
        # which fake tensors refuse), meta ones can
        return method.convert_model(Transformer(cfg), RunContext(device=torch.device("meta"), seed=0))


def _batches(cfg, rows: int, seq_lens) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    return {
        s: (torch.randint(0, cfg.vocab_size, (rows, s)), torch.randint(0, cfg.vocab_size, (rows, s))) for s in seq_lens
    }


def _trace(method, cfg, batch_size, seq_lens, hp, model_name, fake, t0) -> list[Trace]:
    ctx = RunContext(device=torch.device("cpu"), seed=0, extra={"batch_size": batch_size})
    model = _meta_model(method, cfg)
    with fake:
        # storages without data; values are never read (init is skipped: it changes no size)
        model.to_empty(device="cpu")
        trainee = method.trainee(model, hp, ctx)
        batches = _batches(cfg, batch_size, seq_lens)
    tracker = _StepTracker()
    tracker.track_external(trainee.model, trainee.optimizer, *[t for xy in batches.values() for t in xy])
    return _steps(method.name, model_name, trainee, tracker, fake, batches, batch_size, hp, t0)


def _steps(name, model_name, trainee, tracker, fake, batches, batch_size, hp, t0, extra=None) -> list[Trace]:
    """Step 1 (at the longest length) makes the optimizer state; then one steady-state step per length."""
    seq_lens = sorted(batches)
    traces = []
    with fake, tracker:
        trainee.train_step(*batches[seq_lens[-1]], hp.lr)
        step1_peak = tracker.snapshot("peak").get(_TOTAL_KEY, 0)
        owners: dict = {}
        trainee.memory(owners=owners)
        tracker.relabel(owners)
        for seq in seq_lens:  # each with its own peaks
            t_step = time.perf_counter()
            tracker.reset_peaks()
            tracker.reset_mod_stats()  # a second root forward is a new iteration to the tracker
            trainee.train_step(*batches[seq], hp.lr)
            steady = {c: int(v) for c, v in trainee.memory().items()}
            current = tracker.snapshot("current").get(_TOTAL_KEY, 0)
            steady["other"] = int(current - sum(steady.values()))
            peak_snap = tracker.snapshot("peak")
            phase_peak = dict(tracker.phase_peak)
            traces.append(
                Trace(
                    method=name,
                    model=model_name,
                    batch_size=batch_size,
                    seq_len=seq,
                    n_params=sum(p.numel() for p in trainee.model.parameters()),
                    steady=steady,
                    peak=tracker.split(peak_snap, steady),
                    peak_total=int(peak_snap.get(_TOTAL_KEY, 0)),
                    peak_phase=max(phase_peak, key=phase_peak.get) if phase_peak else "",
                    phase_peak=phase_peak,
                    act_peak=int(tracker.act_peak),
                    step1_peak_total=int(step1_peak),
                    trace_s=time.perf_counter() - t0,
                    extra={"step_s": round(time.perf_counter() - t_step, 2), **(extra or {})},
                )
            )
    del trainee, tracker, batches
    gc.collect()
    return traces


# ---- one rank of a sharded method -------------------------------------------------------------------
#: ranks of a per-rank trace: one 8-GPU node
RANKS = 8


def rank_stand_in(method):
    """``(method traced, label)`` for a multi-rank ``method``: FSDP2 methods are traced as themselves,
    DeepSpeed ZeRO-2/3 through their FSDP2 stand-in (``fsdp2_stand_in``); others raise
    :class:`UntraceableError` with the reason."""
    from methods.data_parallel import _FSDP2
    from methods.registry import get_method

    if isinstance(method, _FSDP2):
        return method, method.name
    stand_in = getattr(method, "fsdp2_stand_in", None)
    if stand_in is None:
        raise UntraceableError(
            f"{method.name}: torch DDP's C++ reducer reads its buckets' data, which fake tensors lack "
            '("data is not allocated yet"); each rank holds the bf16-amp step (traced) with the gradients '
            "as views of its all-reduce buckets"
            if method.name.startswith("ddp")
            else f"{method.name}: not a sharded method"
        )
    spec = stand_in()
    if isinstance(spec, str):
        raise UntraceableError(
            f"{method.name}: deepspeed.initialize does not run under fake tensors, and {spec}; "
            "its persistent state per rank is in the analytic model (methods.memory)"
        )
    base, options = spec
    opts = ", ".join(f"{k}={str(v).lower()}" for k, v in options.items())
    return get_method(base, **options), f"{base}" + (f" ({opts})" if opts else "") + " as a stand-in"


def trace_rank_steps(
    method,
    cfg: ModelConfig,
    batch_size: int,
    seq_lens: list[int],
    hp: HParams | None = None,
    model_name: str = "",
    ranks: int = RANKS,
) -> list[Trace]:
    """What rank 0 of ``ranks`` holds in a sharded step: :func:`trace_steps` for a multi-rank method, in a
    fake process group (collectives return without communicating) under ``FSDPMemTracker``.
    ``batch_size`` is the micro-batch per rank. Raises :class:`UntraceableError` with the reason."""
    from dataclasses import replace as dc_replace

    import torch.distributed as dist

    traced, label = rank_stand_in(method)
    seq_lens, cfg = _grid(traced, cfg, seq_lens)
    if dist.is_initialized():
        raise UntraceableError("this process has a process group already; the per-rank trace makes its own")
    traced = dc_replace(traced, ranks=ranks)
    hp = hp or HParams(lr=1e-3)
    t0 = time.perf_counter()
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    dist.init_process_group("fake", rank=0, world_size=ranks, store=FakeStore())
    try:
        with _failures_are_reasons():
            fake = FakeTensorMode(allow_non_fake_inputs=True)
            ctx = RunContext(
                device=torch.device("cpu"), seed=0, rank=0, world_size=ranks, extra={"batch_size": batch_size * ranks}
            )
            model = _meta_model(traced, cfg)
            wrapped = traced.wrap(model, ctx)  # FSDP2 shards on the meta device: the mesh needs real tensors
            with fake:
                model.to_empty(device="cpu")
                trainee = traced.trainee(model, hp, ctx, wrapped=wrapped)
                batches = _batches(cfg, batch_size * ranks, seq_lens)  # the global batch; rank 0 takes its rows
            tracker = _RankTracker(trainee.wrapped, trainee.optimizer)
            tracker.track_inputs(tuple(t for xy in batches.values() for t in xy))
            return _steps(
                method.name,
                model_name,
                trainee,
                tracker,
                fake,
                batches,
                batch_size,
                hp,
                t0,
                extra={"ranks": ranks, "traced_as": label},
            )
    finally:
        dist.destroy_process_group()


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def untraceable_row(method: str, model: str, batch_size: int, seq_len: int, reason: str) -> dict:
    return {
        "method": method,
        "model": model,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "status": "untraceable",
        "reason": reason,
    }


def format_trace(t: Trace) -> str:
    gib = 2**30
    lines = [
        f"{t.method} on {t.model or 'model'} ({t.n_params / 1e9:.2f}B params), micro-batch {t.batch_size} "
        f"x seq {t.seq_len}: traced in {t.trace_s:.1f} s",
        "steady state after step 2 (GiB):",
    ]
    lines += [f"  {c:<12} {t.steady[c] / gib:10.3f}" for c in COMPONENTS + ("other",)]
    lines.append(f"  {'persistent':<12} {t.persistent / gib:10.3f}")
    lines.append(f"peak of step 2 (GiB), in the {t.peak_phase} pass:")
    lines += [f"  {c:<12} {t.peak[c] / gib:10.3f}" for c in PEAK_COMPONENTS]
    lines.append(f"  {'total':<12} {t.peak_total / gib:10.3f}")
    lines.append(
        "phase peaks (GiB): "
        + ", ".join(f"{p} {t.phase_peak.get(p, 0) / gib:.3f}" for p in PHASES)
        + f"; largest activation total {t.act_peak / gib:.3f}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m methods.memory trace``: one method, one size, printed by component (or ``--json``)."""
    import argparse
    import json

    from methods.registry import get_method, method_names
    from models.config import SIZES

    ap = argparse.ArgumentParser(
        prog="python -m methods.memory trace", description="Trace two real training steps of one method at full size."
    )
    ap.add_argument("--model", required=True, help=f"one of: {', '.join(SIZES)}")
    ap.add_argument("--method", required=True, help="a registered method (python -m methods)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--json", action="store_true", help="the row as JSON (bytes)")
    args = ap.parse_args(argv)
    if args.model not in SIZES:
        ap.error(f"unknown model {args.model!r}; valid: {', '.join(SIZES)}")
    if args.method not in method_names():
        ap.error(f"unknown method {args.method!r}; valid: {', '.join(method_names())}")
    cfg = SIZES[args.model]
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    if args.seq_len < 1:
        ap.error("--seq-len must be >= 1")
    try:
        t = trace_step(get_method(args.method), cfg, args.batch_size, args.seq_len, model_name=args.model)
    except UntraceableError as e:
        print(f"{args.method} cannot be traced: {e}")
        return 1
    if args.json:
        print(json.dumps({**t.row(), "peak_rss_bytes": peak_rss_bytes()}, indent=2))
    else:
        print(format_trace(t))
        print(f"peak RSS of this process: {peak_rss_bytes() / 2**30:.2f} GiB")
    return 0
