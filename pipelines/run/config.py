"""Experiment config: load + validate ``pipelines/config.yaml``, expand profiles, resolve one run.

The resolved run config (``config.json`` in a run folder) is self-contained: ``python -m
pipelines.train --config config.json`` reproduces the run without the YAML.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from common.bench_choices import GPU_DEVICES, GPU_EXTRA_SHAPES, OPTIM_LAYER_SHAPES, OPTIM_OPTIMIZERS
from pipelines.run.corpus_dir import data_dir_for

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "pipelines" / "config.yaml"
SCHEMA_PATH = ROOT / "pipelines" / "schemas" / "config.schema.yaml"
RUN_SCHEMA_VERSION = 1


class ConfigError(ValueError):
    """Bad configuration; the message names the key or lists the valid choices."""


def deep_merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def validate(cfg: dict, schema_path: Path = SCHEMA_PATH) -> None:
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:  # one line: the first bad key (in key order) and how many more there are
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"invalid config: config key {where}: {e.message}{more}")


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    path = Path(path or CONFIG_PATH)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    cfg = deep_merge(cfg, overrides)
    validate(cfg)
    return cfg


def check_choice(kind: str, value: str, valid) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(map(str, valid))}")


def profile_settings(cfg: dict, profile: str) -> dict:
    """The profile with defaults merged in: models, methods (expanded), seeds, train, data, what its jobs ask
    a scheduler for."""
    check_choice("profile", profile, cfg["profiles"])
    from methods.registry import method_names
    from models.config import SIZES

    p = cfg["profiles"][profile]
    registered = method_names()
    methods = registered if p["methods"] == "all" else list(p["methods"])
    exclude = set(p.get("exclude_methods", []))
    for m in [*methods, *exclude]:
        check_choice("method", m, registered)
    for m in p.get("seeds_for", {}):
        check_choice("method", m, [*registered, *p.get("variants", {})])
    lrs = check_lrs(p.get("lrs", []), f"profile {profile}: lrs")
    run_names = [m for m in methods if m not in exclude] + list(p.get("variants", {}))
    lrs_for = {}
    for m, values in p.get("lrs_for", {}).items():
        # a key naming no run of this profile is a typo: it would silently leave that run on the profile's grid
        try:
            check_choice("lrs_for method", m, run_names)
        except ConfigError as e:
            raise ConfigError(f"profile {profile}: {e}") from None
        lrs_for[m] = check_lrs(values, f"profile {profile}: lrs_for.{m}", allow_empty=False)
    # variant_lrs: every variant's lrs (stress variants at one lr beside a frontier); lrs_for still wins
    variant_lrs = check_lrs(p.get("variant_lrs", []), f"profile {profile}: variant_lrs")
    if variant_lrs:
        for name in p.get("variants", {}):
            lrs_for.setdefault(name, variant_lrs)
    for m in p["models"]:
        check_choice("model", m, SIZES)
    for m in cfg.get("method_options", {}):
        check_choice("method", m, registered)
    an = deep_merge(cfg.get("analysis", {}), p.get("analysis"))
    for m in [an.get("reference", "bf16-amp"), *an.get("null_methods", [])]:
        check_choice("analysis method", m, registered)
    if an.get("max_seeds") is not None:
        if lrs:
            raise ConfigError(
                f"profile {profile}: analysis.max_seeds (adaptive seeds) works on one lr; the profile "
                f"sweeps lrs {lrs}: drop max_seeds or the lrs"
            )
        if an["max_seeds"] < an.get("min_seeds", 3):
            raise ConfigError(
                f"profile {profile}: analysis.max_seeds {an['max_seeds']} is below min_seeds "
                f"{an.get('min_seeds', 3)}; valid: >= min_seeds, or null (off)"
            )
    variants = dict(p.get("variants", {}))
    for name, v in variants.items():
        check_choice("method", v["method"], registered)
        if name in registered:
            raise ConfigError(f"variant {name!r} of profile {profile} shadows a registered method; rename it")
    return {
        "models": list(p["models"]),
        "methods": [m for m in methods if m not in exclude] + list(variants),
        "variants": variants,
        "seeds": list(p["seeds"]),
        "seeds_for": dict(p.get("seeds_for", {})),
        "lrs": lrs,
        "lrs_for": lrs_for,
        "train": deep_merge(cfg["train"], p.get("train")),
        "data": deep_merge(cfg["data"], p.get("data")),
        "analysis": an,
        "memory_trace": memory_trace_settings(cfg, p),
        "bench": bench_settings(cfg, profile),
        "jobs": deep_merge(cfg["jobs"], p.get("jobs")),
    }


def check_lrs(values, where: str, allow_empty: bool = True) -> list[float]:
    """A learning-rate grid: positive finite numbers, ascending, no repeats, each written exactly by its run
    folder name (``seed0_lr0.00316``: ``f"{lr:g}"`` keeps 6 significant digits, and the run's lr is read back
    from that name)."""
    import math

    values = list(values or [])
    if not values and not allow_empty:
        raise ConfigError(f"{where}: empty; valid: a list of one or more positive learning rates")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}: {v!r} is not a learning rate; valid: positive finite numbers, e.g. 1.0e-3")
        if float(f"{v:g}") != float(v):
            raise ConfigError(
                f"{where}: {v!r} has more than 6 significant digits; valid: e.g. {float(f'{v:g}'):g} "
                "(run folders name the lr with 6)"
            )
    if values != sorted(values) or len(set(values)) != len(values):
        raise ConfigError(
            f"{where}: {values} must be ascending without repeats; valid: {sorted(set(float(v) for v in values))}"
        )
    return [float(v) for v in values]


def bench_enabled(profile: str, path: str | Path | None = None) -> bool:
    """Whether a profile of the experiment file runs the CPU benchmarks (what the report's table list needs)."""
    return bool(bench_settings(load(path), profile)["enabled"])


def bench_settings(cfg: dict, profile: str) -> dict:
    """The benchmarks of a profile (``bench`` with the profile's overrides), names checked before any work."""
    check_choice("profile", profile, cfg["profiles"])
    from models.config import SIZES

    b = deep_merge(cfg["bench"], cfg["profiles"][profile].get("bench"))
    if b.get("enabled"):
        for s in b["optim_shapes"]:
            check_choice("bench optim shape", s, [*SIZES, *OPTIM_LAYER_SHAPES])
        for o in b["optim_optimizers"]:
            check_choice("bench optimizer", o, OPTIM_OPTIMIZERS)
    # the GPU prediction runs in every profile
    check_choice("bench gpu_device", b["gpu_device"], GPU_DEVICES)
    for m in b["gpu_models"]:
        check_choice("bench gpu model", m, [*SIZES, *GPU_EXTRA_SHAPES])
    return b


def memory_trace_settings(cfg: dict, profile: dict) -> dict:
    """The traced-memory grid of a profile (``memory_trace`` with the profile's overrides), checked."""
    from methods.registry import get_method, method_names
    from models.config import SIZES

    mt = deep_merge(cfg.get("memory_trace", {}), profile.get("memory_trace"))
    for m in mt.get("models", []):
        check_choice("memory_trace model", m, SIZES)
    for m in [] if mt.get("methods", "all") == "all" else mt["methods"]:
        check_choice("memory_trace method", m, method_names())
    for name, v in mt.get("variants", {}).items():
        check_choice(f"memory_trace variant {name}: method", v["method"], method_names())
        get_method(v["method"], **v.get("options", {}))  # bad options are refused here, before any work
    if mt.get("ranks", 0) == 1:
        raise ConfigError("memory_trace.ranks 1 is the single-process trace; give 0 (no per-rank trace) or >= 2")
    if mt.get("fit_seq_len") not in mt.get("seq_lens", []):
        raise ConfigError(
            f"memory_trace.fit_seq_len {mt.get('fit_seq_len')} must be one of seq_lens {mt.get('seq_lens')}"
        )
    return mt


def run_id(seed: int, lr: float | None = None) -> str:
    """Folder name of one run under ``<profile>/<model>/<method>/``: ``seed0``, or ``seed0_lr0.003`` in
    profiles that sweep the learning rate."""
    return f"seed{seed}" if lr is None else f"seed{seed}_lr{lr:g}"


def parse_run_id(rid: str) -> tuple[int, float | None]:
    m = re.fullmatch(r"seed(\d+)(?:_lr([0-9.e+-]+))?", rid)
    if not m:
        raise ConfigError(f"bad run folder name {rid!r}; expected seed<N> or seed<N>_lr<LR>")
    return int(m.group(1)), (float(m.group(2)) if m.group(2) else None)


def runs(cfg: dict, profile: str) -> list[tuple[str, str, str]]:
    """Every (model, method, run id) the profile asks for, in a stable order."""
    ps = profile_settings(cfg, profile)
    out = []
    for model in ps["models"]:
        for method in ps["methods"]:
            for seed in ps["seeds_for"].get(method, ps["seeds"]):
                # a method's own grid (lrs_for) replaces the profile's: stress variants at one lr beside a frontier
                for lr in ps["lrs_for"].get(method, ps["lrs"]) or [None]:
                    out.append((model, method, run_id(seed, lr)))
    return out


def run_dir(cfg: dict, profile: str, model: str, method: str, seed: int, lr: float | None = None) -> Path:
    return Path(cfg["results_dir"]) / "runs" / profile / model / method / run_id(seed, lr)


def resolve_run(
    cfg: dict,
    profile: str,
    model: str,
    method: str,
    seed: int,
    train_overrides: dict | None = None,
    lr: float | None = None,
) -> dict:
    """The fully resolved config of one run (what ``config.json`` holds)."""
    ps = profile_settings(cfg, profile)
    from methods.registry import method_names
    from models.config import SIZES

    variant = ps["variants"].get(method)
    base = variant["method"] if variant else method
    check_choice("method", base, method_names())
    check_choice("model", model, SIZES)
    # profile < variant < command line < the sweep's lr
    train = deep_merge(deep_merge(ps["train"], (variant or {}).get("train")), train_overrides)
    if lr is not None:
        train["lr"] = lr
    if train.get("data_seed") is None:
        train["data_seed"] = seed
    data = dict(ps["data"])
    data["dir"] = str(data_dir_for(cfg["results_dir"], ps["data"]))
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "profile": profile,
        "model": model,
        "method": base,
        # a variant is a registered method with other options, run and reported under its own name
        "variant": method if variant else None,
        "method_options": {**cfg.get("method_options", {}).get(base, {}), **(variant or {}).get("options", {})},
        "seed": seed,
        "train": train,
        "data": data,
        "results_dir": cfg["results_dir"],
    }
