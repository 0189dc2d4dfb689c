"""One check of a fully resolved run config, for every way into a run.

A run's config comes from the profile's YAML, then flags, then ``--set KEY=VALUE``, then method options
(the experiment's ``method_options``, a variant's ``options``, ``--method-option``). Whichever way a value
came in, ``check_run`` holds it to the same rules before any data or model work: the experiment schema's
types, ranges and enumerations (``pipelines/schemas/config.schema.yaml``) with NaN and infinities refused, the
model's ``max_seq_len``, the method's own option rules (``methods.options``), and the few rules that tie
keys together (a multi-rank method's batch must split evenly over its ranks). A refusal is a
``ConfigError`` with one line naming the key, the bad value and what is valid; ``pipelines.train`` turns
it into exit 2 and the workflow (``pipelines/rules/common.smk``, through ``check_profile``) into an error
before the DAG is built.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import yaml

from pipelines.run.config import SCHEMA_PATH, ConfigError, check_choice

#: seeds feed torch.manual_seed and numpy's generators: whole numbers in this range
SEED_RANGE = (0, 2**32 - 1)


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(prop: dict) -> str:
    """What a schema property accepts, in words: 'an integer >= 1', 'a number in (0, 1)', 'one of a, b'."""
    if "enum" in prop:
        return "one of " + ", ".join(map(str, prop["enum"]))
    types = prop.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    null = "null" in types
    types = [t for t in types if t != "null"]
    if not types:
        return "any value"
    t = types[0]
    word = {
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "string": "a string",
        "array": "a list",
        "object": "a mapping",
    }.get(t, t)
    if t == "array" and prop.get("items", {}).get("type") == "string":
        word = "a list of strings"
    lo = (
        ("[", prop["minimum"])
        if "minimum" in prop
        else ("(", prop["exclusiveMinimum"])
        if "exclusiveMinimum" in prop
        else None
    )
    hi = (
        ("]", prop["maximum"])
        if "maximum" in prop
        else (")", prop["exclusiveMaximum"])
        if "exclusiveMaximum" in prop
        else None
    )
    if lo and hi:
        word += f" in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    elif lo:
        word += f" {'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    elif hi:
        word += f" {'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return word + (" or null" if null else "")


def check_section(section: str, body: dict, what: str = "config key") -> None:
    """One section (train or data) against its schema definition; one line naming key, value, valid."""
    import jsonschema

    defs = schema()["$defs"]
    props = defs[section]["properties"]
    unknown = sorted(set(body) - set(props))
    if unknown:
        raise ConfigError(f"{what} {section}.{unknown[0]} is unknown; valid {section} keys: {', '.join(sorted(props))}")
    for k, v in body.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{what} {section}.{k} = {v}: must be a finite number; valid: {describe(props[k])}")
    for e in jsonschema.Draft202012Validator({"$defs": defs, **defs[section]}).iter_errors(body):
        key = str(e.absolute_path[0]) if e.absolute_path else ""
        valid = f"; valid: {describe(props[key])}" if key in props else ""
        where = ".".join([section, *map(str, e.absolute_path)])
        raise ConfigError(f"{what} {where} = {e.instance!r}: {e.message}{valid}")


def _whole_in(name: str, v, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{name} = {v!r}: valid: an integer in [{lo}, {hi}]")


def check_run(rc: dict, what: str = "config key") -> object:
    """Every rule a resolved run config must meet; returns the method it names, made with its options
    (so its option rules ran). Raises ConfigError, one line."""
    from methods.registry import get_method, method_names
    from models.config import SIZES, get_model_config

    for k in ("model", "method"):
        if not isinstance(rc.get(k), str):
            raise ConfigError(f"{k} = {rc.get(k)!r}: must be a name")
    check_choice("method", rc["method"], method_names())
    check_choice("model", rc["model"], SIZES)
    _whole_in("seed", rc.get("seed"), *SEED_RANGE)
    for section in ("train", "data"):
        if not isinstance(rc.get(section), dict):
            raise ConfigError(f"{what} {section} = {rc.get(section)!r}: must be a mapping")
    train, data = rc["train"], rc["data"]
    for key, value in (
        ("variant", rc.get("variant")),
        ("profile", rc.get("profile", "")),
        ("data.dir", data.get("dir", "")),
    ):
        if value is not None and not isinstance(value, str):  # names and paths: a run folder is made of them
            raise ConfigError(f"{what} {key} = {value!r}: must be a string")
    check_section("train", train, what)
    check_section("data", {k: v for k, v in data.items() if k != "dir"}, what)
    if train.get("data_seed") is not None:
        _whole_in(f"{what} train.data_seed", train["data_seed"], *SEED_RANGE)
    mcfg = get_model_config(rc["model"])
    if train["seq_len"] > mcfg.max_seq_len:  # before any memory estimate, which would blame the RAM
        raise ConfigError(
            f"{what} train.seq_len = {train['seq_len']}: exceeds {rc['model']}'s max_seq_len "
            f"{mcfg.max_seq_len}; valid: an integer in [2, {mcfg.max_seq_len}]"
        )
    options = rc.get("method_options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"method_options = {options!r}: must be a mapping of option names to values")
    try:
        method = get_method(rc["method"], **options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ws = method.world_size
    if ws > 1 and train["batch_size"] % ws:
        raise ConfigError(
            f"{what} train.batch_size = {train['batch_size']}: method {rc['method']} runs as {ws} "
            f"ranks; valid: a multiple of {ws}"
        )
    return method


def check_profile(cfg: dict, profile: str) -> None:
    """Every run a profile asks for, resolved as the workflow will resolve it, through ``check_run``: a bad
    profile (a variant's options, a train override beyond a model's max_seq_len) fails before the DAG."""
    from pipelines.run import config as config_mod

    for model, method, rid in config_mod.runs(cfg, profile):
        seed, lr = config_mod.parse_run_id(rid)
        rc = config_mod.resolve_run(cfg, profile, model, method, seed, lr=lr)
        try:
            check_run(rc)
        except ConfigError as e:
            raise ConfigError(f"profile {profile}, run {model}/{method}/{rid}: {e}") from None


def check_run_sections(rc: dict, what: str = "config key") -> None:
    """The train and data sections of a resolved run config against the experiment schema's definitions
    (types, ranges, enumerations), with the key, the bad value and the valid range named; NaN and
    infinities are refused too (a JSON-schema bound does not catch NaN). The whole run's check, method
    options included, is ``pipelines.run.validate.check_run``."""
    for section in ("train", "data"):
        if not isinstance(rc[section], dict):
            raise ConfigError(f"{what} {section} = {rc[section]!r}: must be a mapping")
        check_section(section, {k: v for k, v in rc[section].items() if not (section == "data" and k == "dir")}, what)


RUN_KEYS = {
    "schema_version",
    "profile",
    "model",
    "method",
    "variant",
    "method_options",
    "seed",
    "train",
    "data",
    "results_dir",
}


def load_run_config(path: str | Path) -> dict:
    """Read and check a resolved run config (``--config FILE.json``)."""
    try:
        rc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"run config not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"run config {path} is not valid JSON: {e}") from None
    if not isinstance(rc, dict):
        raise ConfigError(f"run config {path} must hold a JSON object")
    rc.setdefault("variant", None)
    unknown, missing = set(rc) - RUN_KEYS, RUN_KEYS - set(rc)
    if unknown:
        raise ConfigError(
            f"run config key {sorted(unknown)[0]!r} is not allowed; valid keys: {', '.join(sorted(RUN_KEYS))}"
        )
    if missing:
        raise ConfigError(f"run config is missing key {sorted(missing)[0]!r}")
    if not isinstance(rc["method_options"], dict):
        raise ConfigError(f"run config key method_options = {rc['method_options']!r}: must be a mapping")
    check_run_sections(rc, "run config key")
    from methods.registry import method_names
    from models.config import SIZES

    check_choice("method", rc["method"], method_names())
    check_choice("model", rc["model"], SIZES)
    return rc
