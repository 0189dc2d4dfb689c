"""Native CPU step of the FP8-state AdamW (``FP8AdamW(impl="native")``, the default on the CPU).

``optim_native.c`` is the reference update (``impl="torch"``) written as one pass per block of 256: the
gradient, the weight and the codes of m and v are read once, decoded, updated, reduced, encoded and
written once, with the block's fp32 values held on the stack. It moves the ~10 bytes per parameter the
step has to and little else, where the compiled step (``optim_fused``) spends most of its time in the
transcendental functions and casts that Inductor emits. Built with the system C compiler on first use
(``-O3 -march=native``, about a second), cached per source, flags, compiler and CPU, loaded with ctypes,
which releases the GIL during the call; large parameters are split over ``torch.get_num_threads()``
threads by block.

Where the compiler targets AVX-512 (``-march=native`` on such a CPU), full blocks take one fused pass in
16-lane intrinsics: lookups as register permutes, divisions as Markstein corrections, the DRE encode as a
search of the FP8 midpoints in log2 space; elsewhere the same operations run as plain loops. The two give
the same bits (``tests/optim/test_optim_native.py``); :func:`simd` says which one a build took.

Agreement with the reference (``tests/optim/test_optim_native.py``): the casts, the rounding order of
lerp / addcmul / addcdiv, the reductions and the stochastic-rounding hash are the reference's bit for bit,
so without DRE codes and scales are identical, and so are bf16 weights except where eager's vectorised
sqrt, an ulp off on some inputs, puts the fp32 weight on the other side of a bf16 midpoint (measured on
an AVX-512 EPYC: a few in 10^5). DRE takes log2 from the kernel's own table and polynomial (within ~1
fp32 ulp; eager calls SLEEF or MKL) and saves the exp2 of the encode and two divisions per value (see the
C file), so an FP8 code can move by one step where a value lies within a few ulps of a rounding midpoint,
and a bf16 weight by one ulp where its stochastic draw sits at the boundary: both measured and bounded
in the test; the log2 and the encode on their own are tested against float64 in
``tests/optim/test_optim_native_math.py``.

Where the compiler is missing or fails, :func:`library` raises :class:`NativeUnavailable` with the
reason; ``FP8AdamW(impl="auto")`` records it and takes the compiled step instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from methods.fp8 import optim_codec as codec
from methods.fp8.optim_fused import update_scalars

SOURCE = Path(__file__).with_name("optim_native.c")
#: -ffp-contract=off: no multiply-add fused that the reference rounds twice (the kernel's own FMAs are
#: explicit); -fno-math-errno lets sqrtf vectorise, -fno-trapping-math the selects (no rounding changes)
CFLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-std=gnu11",
) + (
    # x86: full-width AVX-512 where the CPU has it (gcc defaults to 256-bit vectors there); measured 1.4x
    ("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()
)
#: the largest block the kernel holds on its stack (optim_native.c's MAX_BLOCK)
MAX_BLOCK = 4096
FMT_IDS = {"e4m3": 0, "e5m2": 1}
TR_IDS = {"none": 0, "sqrt": 1, "dre": 2}
#: blocks per thread below which a parameter is stepped on one thread (a thread switch costs ~10 us)
MIN_BLOCKS_PER_THREAD = 256


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be built or loaded here (the message says why)."""


class _Args(ctypes.Structure):
    # the C struct Args, field for field
    _fields_ = [
        ("p", ctypes.c_void_p),
        ("g", ctypes.c_void_p),
        ("master", ctypes.c_void_p),
        ("mc", ctypes.c_void_p),
        ("vc", ctypes.c_void_p),
        ("ms", ctypes.c_void_p),
        ("vs", ctypes.c_void_p),
        ("mk", ctypes.c_void_p),
        ("vk", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("block", ctypes.c_int64),
        ("b0", ctypes.c_int64),
        ("b1", ctypes.c_int64),
        ("p_bf16", ctypes.c_int32),
        ("g_bf16", ctypes.c_int32),
        ("stochastic", ctypes.c_int32),
        ("lerp_hi", ctypes.c_int32),
        ("m_fmt", ctypes.c_int32),
        ("v_fmt", ctypes.c_int32),
        ("m_tr", ctypes.c_int32),
        ("v_tr", ctypes.c_int32),
        ("salt", ctypes.c_uint32),
        ("m_log2nr", ctypes.c_float),
        ("v_log2nr", ctypes.c_float),
    ] + [(name, ctypes.c_float) for name in ("b1c", "b1c_m1", "b2", "b2c", "decay", "bc2_sqrt", "eps", "step_size")]


_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None
_POOL: ThreadPoolExecutor | None = None


def cache_dir() -> Path:
    """Where built kernels are kept: ``$FP8BENCH_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/fp8bench`` (~/.cache)."""
    if os.environ.get("FP8BENCH_NATIVE_CACHE"):
        return Path(os.environ["FP8BENCH_NATIVE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fp8bench" / "native"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's model and flags (a cache shared across machines stays right)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.processor() or platform.machine()


def _build(extra_flags: tuple[str, ...] = ()) -> Path:
    """The kernel built with CFLAGS + ``extra_flags`` (cached by source, flags, compiler and CPU)."""
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler (cc, gcc or clang; or $CC) on PATH")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"C compiler {cc!r} does not run: {e}") from None
    src = SOURCE.read_bytes()
    flags = CFLAGS + tuple(extra_flags)
    key = hashlib.sha256(
        b"\0".join([src, " ".join(flags).encode(), version.encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    out = cache_dir() / f"optim_native-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise NativeUnavailable(f"{cc} failed on {SOURCE.name}: {(r.stderr or r.stdout).strip()[:500]}")
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def library() -> ctypes.CDLL:
    """The kernel, built on first use. Raises :class:`NativeUnavailable` (the same reason every time)."""
    global _LIB, _ERROR
    with _LOCK:
        if _LIB is None and _ERROR is None:
            try:
                _LIB = load(_build())
            except NativeUnavailable as e:
                _ERROR = str(e)
            except (OSError, subprocess.SubprocessError) as e:
                _ERROR = f"native kernel could not be built or loaded: {type(e).__name__}: {e}"
        if _LIB is None:
            raise NativeUnavailable(_ERROR)
        return _LIB


def load(path: Path) -> ctypes.CDLL:
    """A built kernel, its entry points typed."""
    lib = ctypes.CDLL(str(path))
    lib.fp8_adamw_blocks.argtypes = [ctypes.POINTER(_Args)]
    lib.fp8_adamw_blocks.restype = ctypes.c_int
    lib.fp8_adamw_simd.argtypes = []
    lib.fp8_adamw_simd.restype = ctypes.c_int
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.fp8_log2.argtypes, lib.fp8_log2.restype = [p, p, i64], None
    lib.fp8_dre_encode.argtypes = [p, p, i64, ctypes.c_int32, ctypes.c_float, ctypes.c_float]
    lib.fp8_dre_encode.restype = None
    return lib


def simd() -> str:
    """The path the kernel took here: "avx512" (16 lanes in intrinsics) or "portable" (plain C loops)."""
    return "avx512" if library().fp8_adamw_simd() == 512 else "portable"


def unsupported(opt, p: torch.Tensor) -> str | None:
    """Why ``p`` cannot take the native step (then it takes the compiled one), or None."""
    if p.device.type != "cpu":
        return f"the native step runs on the CPU, not {p.device.type}"
    if p.dtype not in (torch.bfloat16, torch.float32):
        return f"the native step handles bf16 and fp32 parameters, not {p.dtype}"
    if p.grad is not None and p.grad.dtype not in (torch.bfloat16, torch.float32):
        return f"the native step handles bf16 and fp32 gradients, not {p.grad.dtype}"
    if opt.block_size > MAX_BLOCK:
        return f"block_size {opt.block_size} > {MAX_BLOCK}, the largest the native step holds"
    return None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fp8-adamw")
        return _POOL


@torch.no_grad()
def native_step(opt, p: torch.Tensor, group: dict, st: dict) -> None:
    """One step of ``p`` (``st["step"]`` already incremented), in place on ``p``, its master copy and its codes."""
    lib = library()
    if not p.is_contiguous():
        raise ValueError("native FP8 AdamW needs contiguous parameters")
    g = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
    master = st.get("master")
    stochastic = bool(opt.stochastic_rounding and p.dtype == torch.bfloat16 and master is None)
    b1c, b1c_m1, b2, b2c, decay, bc2_sqrt, eps, step_size = update_scalars(group, st)
    mc, vc = st["exp_avg"], st["exp_avg_sq"]
    mk, vk = st.get("exp_avg_k"), st.get("exp_avg_sq_k")
    nb, blk = mc.shape
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    base = dict(
        p=p.data_ptr(),
        g=g.data_ptr(),
        master=ptr(master),
        mc=mc.data_ptr(),
        vc=vc.data_ptr(),
        ms=st["exp_avg_scale"].data_ptr(),
        vs=st["exp_avg_sq_scale"].data_ptr(),
        mk=ptr(mk),
        vk=ptr(vk),
        n=p.numel(),
        block=blk,
        p_bf16=int(p.dtype == torch.bfloat16),
        g_bf16=int(g.dtype == torch.bfloat16),
        stochastic=int(stochastic),
        lerp_hi=int(abs(b1c) >= 0.5),
        m_fmt=FMT_IDS[opt.m_fmt.name],
        v_fmt=FMT_IDS[opt.v_fmt.name],
        m_tr=TR_IDS[opt.m_transform],
        v_tr=TR_IDS[opt.v_transform],
        salt=opt._salt(p, st) if stochastic else 0,
        m_log2nr=_log2nr(opt.m_fmt),
        v_log2nr=_log2nr(opt.v_fmt),
        b1c=b1c,
        b1c_m1=b1c_m1,
        b2=b2,
        b2c=b2c,
        decay=decay,
        bc2_sqrt=bc2_sqrt,
        eps=eps,
        step_size=step_size,
    )
    threads = max(1, min(torch.get_num_threads(), nb // MIN_BLOCKS_PER_THREAD))
    cuts = [nb * i // threads for i in range(threads + 1)]
    args = [_Args(**base, b0=cuts[i], b1=cuts[i + 1]) for i in range(threads)]
    call = lambda a: lib.fp8_adamw_blocks(ctypes.byref(a))  # noqa: E731
    if threads == 1:
        rcs = [call(args[0])]
    else:  # ctypes releases the GIL: the blocks of one parameter on several threads
        futures = [_pool(threads - 1).submit(call, a) for a in args[1:]]
        rcs = [call(args[0])] + [f.result() for f in futures]
    if any(rcs):
        raise RuntimeError(f"native FP8 AdamW kernel refused its arguments (block {blk})")


def _log2nr(fmt: codec.Fp8Format) -> float:
    return math.log2(fmt.normal_range)  # a Python float; ctypes rounds it to fp32 as eager does
