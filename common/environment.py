"""What a run ran on: library versions, device, git revision, NVTE_* settings."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = (
    "torch",
    "torchao",
    "deepspeed",
    "transformer-engine",
    "triton",
    "snakemake",
    "numpy",
    "pandas",
    "seaborn",
    "tokenizers",
)


def package_versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}"


# CPU features that change which kernels (and so which rounding and summation order) a run uses.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "sve",
    "asimd",
    "bf16",
)


def cpu_info() -> dict:
    """CPU model name and the kernel-relevant ISA flags present (from /proc/cpuinfo; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and value.strip():
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags |= set(value.split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_isa_flags": [f for f in ISA_FLAGS if f in flags]}


def bf16_matmuls(device: torch.device) -> str:
    """How this run's bf16 matrix products are computed on the CPU (methods/bf16_emulation.py)."""
    if device.type != "cpu":
        return "device"
    from methods.bf16_emulation import emulate_bf16_on

    return "emulated (fp32 products of bf16-rounded operands)" if emulate_bf16_on(device) else "native"


def environment(device: torch.device) -> dict:
    return {
        **cpu_info(),
        "cpu_bf16_matmuls": bf16_matmuls(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "device": device.type,
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        # TransformerEngine reads its knobs from the environment; a run is only reproducible with them.
        "nvte_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NVTE_")},
        # which GPUs the run was given (pipelines/run/launch/devices.py, or the scheduler) and, on a cluster,
        # its job
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"),
    }
