"""Refuse, before any work, a run whose memory cannot fit on the device; size a run's job on a cluster.

Estimate = persistent training state from the analytic memory model (``methods.memory``, the same one
checked against measured tensors) + a rough activation estimate. On the CPU all ranks of a multi-rank
method share the machine's memory; on GPUs each rank has its own device. ``host_mem_mb`` turns the same
estimate into the host memory a run's job asks a scheduler for, per node.
"""

from __future__ import annotations

import psutil
import torch

GiB = 2**30


def activation_bytes(cfg, batch_size: int, seq_len: int, bytes_per_value: int = 2) -> float:
    """Activations kept for backward, per layer ~ (34 d + 5 h T) B T values (Korthikanti et al. 2022,
    no recomputation, with attention scores; SDPA keeps fewer), plus logits in fp32."""
    B, T, d, h = batch_size, seq_len, cfg.dim, cfg.n_heads
    per_layer = (34 * d + 5 * h * T) * B * T * bytes_per_value / 2
    logits = B * T * cfg.vocab_size * 4 * 2  # fp32 logits and their grad
    return cfg.n_layers * per_layer + logits


def available_bytes(device: str) -> tuple[float, str]:
    if device == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return float(free), f"free on {torch.cuda.get_device_name()}"
    return float(psutil.virtual_memory().available), "available RAM on this machine"


def estimate(method, model_cfg, train: dict) -> dict:
    from methods.memory import method_bytes_per_param, param_numels

    n = sum(param_numels(model_cfg))
    state = sum(method_bytes_per_param(method, model_cfg).values()) * n
    acts = activation_bytes(model_cfg, max(1, train["batch_size"] // method.world_size), train["seq_len"])
    per_rank = state + acts
    ranks_here = method.world_size if train["device"] != "cuda" else 1
    return {
        "n_params": n,
        "state_bytes": state,
        "activation_bytes": acts,
        "needed_bytes": per_rank * ranks_here,
        "ranks_sharing_memory": ranks_here,
    }


def check_fits(method, model_name: str, model_cfg, train: dict, headroom: float = 0.9) -> None:
    """Raise ``ConfigError`` naming the estimate when the run cannot fit in ``headroom`` of what is free."""
    from pipelines.run.config import ConfigError

    est = estimate(method, model_cfg, train)
    device = "cuda" if train["device"] == "cuda" else "cpu"
    avail, where = available_bytes(device)
    if est["needed_bytes"] > headroom * avail:
        ranks = f" × {est['ranks_sharing_memory']} ranks" if est["ranks_sharing_memory"] > 1 else ""
        raise ConfigError(
            f"model {model_name} ({est['n_params'] / 1e9:.2f}B params) with method {method.name} needs about "
            f"{est['needed_bytes'] / GiB:.1f} GiB (analytic model: {est['state_bytes'] / GiB:.1f} GiB persistent "
            f"state + {est['activation_bytes'] / GiB:.1f} GiB activations{ranks}), but only {avail / GiB:.1f} GiB "
            f"is {where}; choose a smaller model or a leaner method (python -m methods.memory --model {model_name})"
        )


def host_mem_mb(method, model_cfg, train: dict, ranks_here: int, process_mb: int) -> int:
    """Host memory (MB) for ``ranks_here`` processes of a run on one machine: each ``process_mb`` (Python,
    torch, CUDA context, data) plus its tensors. On the CPU those are the estimate's state and activations,
    with a quarter on top (the activation term is rough); on CUDA the host holds a copy of the rank's
    training state while a checkpoint is written."""
    est = estimate(method, model_cfg, train)
    per_rank = (
        est["state_bytes"] if train["device"] == "cuda" else 1.25 * (est["state_bytes"] + est["activation_bytes"])
    )
    return int(ranks_here * (process_mb + per_rank / 2**20)) + 1
