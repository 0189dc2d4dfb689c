"""Fuzzing the front door (hypothesis): generated CLI flags, ``--set`` overrides, method options and run-config
files, across the schema and past its edges. No input ends in an uncaught traceback: each is either
accepted (a config every check passes again) or refused with a one-line error (exit 2).

Most examples go through the in-process entry point (``parse_args`` + ``resolve``, what ``main`` calls before
any work), hundreds a second; three run the real CLI end to end in a subprocess, where an accepted input
must also train (its summary written with a status) and a refused one must leave no summary.
Derandomized with no example database, so ``make test`` explores the same inputs on every machine."""

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from methods.registry import _REGISTRY, method_names
from models.config import SIZES
from pipelines.run import config as config_mod
from pipelines.run.events import STATUSES
from pipelines.run.train import TRAIN_FLAGS, parse_args, resolve
from pipelines.run.validate import check_run, schema
from tests.conftest import ROOT, write_small_config

TRAIN_PROPS = schema()["$defs"]["train"]["properties"]
METHODS = method_names()
PROFILES = list(config_mod.load()["profiles"])

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def numbers_around(prop: dict):
    """Values near and past a schema property's bounds (integers for integer keys), plus the troublemakers."""
    edges = [prop.get(k) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in prop]
    near = [e + d for e in edges for d in (-1, -1e-9, 0, 1e-9, 1)] or [0.0]
    lo = int(prop.get("minimum", prop.get("exclusiveMinimum", 0)))
    wild = st.one_of(
        st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(near)
    )
    if prop.get("type") == "integer":
        likely = st.integers(lo - 1, lo + 40)
    else:
        hi = prop.get("maximum", prop.get("exclusiveMaximum", lo + 10))
        likely = st.floats(min_value=lo, max_value=hi, allow_nan=False)
    return st.one_of(likely, likely, likely, wild)


def value_for(key: str):
    """A value for train key ``key``: mostly of its schema type and near its range, sometimes anything."""
    prop = TRAIN_PROPS.get(key, {})
    if "enum" in prop:
        typed = st.sampled_from([*prop["enum"], *prop["enum"], "tpu"])
    elif prop.get("type") == "boolean":
        typed = st.booleans()
    else:
        typed = numbers_around(prop)
    anything = st.one_of(
        st.text(max_size=8),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )
    return st.one_of(typed, typed, typed, typed, typed, anything)


def spell(v) -> str:
    """How a value is typed on a command line (YAML for --set / --method-option; nan as `nan`)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def option_values(method: str):
    """Options of ``method``: values its rules allow or just refuse, sometimes any value or an unknown name."""
    from methods.options import Choice, Range, rules_of

    fields = sorted(f.name for f in dataclasses.fields(_REGISTRY[method])) if method in _REGISTRY else []
    rules = rules_of(_REGISTRY[method]) if method in _REGISTRY else {}

    def value(name):
        rule = rules.get(name)
        if isinstance(rule, Range):
            return st.integers(int(rule.lo or 0) - 1, int(rule.lo or 0) + 300)
        if isinstance(rule, Choice):
            return st.sampled_from([*rule.values, "nope"])
        return st.one_of(st.booleans(), st.sampled_from(["[lm_head]", "[]", "auto"]))

    wild = st.one_of(st.integers(-300, 300), st.booleans(), st.text(max_size=6), st.floats(allow_nan=True))
    named = (
        st.sampled_from(fields).flatmap(lambda n: st.tuples(st.just(n), st.one_of(value(n), value(n), wild)))
        if fields
        else st.nothing()
    )
    unknown = st.tuples(st.just("no_such_option"), wild)
    return st.lists(st.one_of(named, named, named, unknown), max_size=2)


@st.composite
def argv(draw, models=None, methods=None):
    method = draw(st.sampled_from(methods or [*METHODS, "fp33"]))
    seed = draw(st.one_of(st.integers(0, 9), st.integers(0, 9), st.integers(-(2**34), 2**34)))
    out = [
        "--model",
        draw(st.sampled_from(models or [*SIZES, "tiny", "tiny", "huge"])),
        "--method",
        method,
        "--seed",
        str(seed),
    ]
    if draw(st.booleans()):
        out += ["--profile", draw(st.sampled_from([*PROFILES, "nope"]))]
    for flag in draw(st.lists(st.sampled_from(list(TRAIN_FLAGS)), max_size=2, unique=True)):
        v = draw(value_for(flag))
        out += [f"--{flag.replace('_', '-')}", spell(v)]
    for key in draw(st.lists(st.sampled_from([*TRAIN_PROPS, *TRAIN_PROPS, "stepz", ""]), max_size=2)):
        out += ["--set", f"{key}={spell(draw(value_for(key)))}"]
    if draw(st.integers(0, 19)) == 13:  # hypothesis favours 0: a value in the middle is a rare draw
        out += ["--set", draw(st.text(max_size=10))]  # anything at all, '=' or not
    for k, v in draw(option_values(method)):
        out += ["--method-option", f"{k}={spell(v)}"]
    return out


def front_door(args: list[str]):
    """What ``main`` does before any work: parse, resolve, check. Returns (code, message, rc)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parsed = parse_args(args)
        except SystemExit as e:
            return e.code, err.getvalue(), None
    try:
        rc, _ = resolve(parsed)
    except ValueError as e:  # ConfigError is one; main prints "error: ..." and returns 2 for both
        return 2, f"error: {e}\n", None
    return 0, "", rc


def assert_refused_in_one_line(code, message):
    event("refused: " + message.split(":")[1].strip()[:30])  # --hypothesis-show-statistics: what was refused
    assert code == 2, (code, message)
    assert message.startswith("error: ") and message.endswith("\n") and message.count("\n") == 1, message


@FUZZ
@given(args=argv())
def test_any_command_line_is_accepted_or_refused_in_one_line(args):
    code, message, rc = front_door(["--out", "/nonexistent/never-written", *args])
    if code:
        assert_refused_in_one_line(code, message)
    else:  # accepted: the resolved config passes the one check again, whole
        event("accepted")
        check_run(rc)
        assert 1 <= rc["train"]["seq_len"] <= SIZES[rc["model"]].max_seq_len
        assert rc["train"]["steps"] >= 1 and rc["train"]["lr"] > 0 and math.isfinite(rc["train"]["lr"])


@pytest.fixture(scope="module")
def resolved_config(tmp_path_factory):
    cfg = config_mod.load()
    return config_mod.resolve_run(cfg, "cpu", "tiny", "fp32", 0)


def mutations():
    """Changes to a resolved config.json: mostly a train key to a value near its range, sometimes anything
    anywhere (a data key, an option, a top-level key, a name nobody knows)."""
    train = st.sampled_from(sorted(TRAIN_PROPS)).flatmap(
        lambda k: st.tuples(st.just("train"), st.just(k), value_for(k))
    )
    keys = st.one_of(
        st.sampled_from(
            [
                "corpus",
                "vocab_size",
                "val_fraction",
                "files",
                "model",
                "method",
                "seed",
                "schema_version",
                "ranks",
                "block_size",
                "variant",
                "method_options",
                "train",
                "dir",
                "profile",
            ]
        ),
        st.text(max_size=5),
    )
    values = st.one_of(
        numbers_around({"minimum": 0, "maximum": 1}),
        st.text(max_size=6),
        st.none(),
        st.booleans(),
        st.lists(st.text(max_size=3), max_size=2),
    )
    other = st.tuples(st.sampled_from(["data", "method_options", "top"]), keys, values)
    return st.lists(st.one_of(train, train, train, train, other), min_size=1, max_size=3)


@FUZZ
@given(changes=mutations())
def test_any_run_config_file_is_accepted_or_refused_in_one_line(resolved_config, tmp_path_factory, changes):
    rc = json.loads(json.dumps(resolved_config))
    for section, key, value in changes:
        target = rc if section == "top" else rc.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
    path = tmp_path_factory.mktemp("rc") / "config.json"
    path.write_text(json.dumps(rc))  # NaN is written as NaN, which Python's JSON reads back
    code, message, accepted = front_door(["--config", str(path)])
    if code:
        assert_refused_in_one_line(code, message)
    else:
        event("accepted")
        check_run(accepted)


CHEAP = ["fp32", "bf16-amp", "bf16-pure", "fp8-optim", "fp8-own-tensorwise"]


@st.composite
def short_run(draw):
    """A command line that, if accepted, trains in seconds: tiny model, small shapes, 2 steps; the rest fuzzed."""
    args = draw(argv(models=["tiny"], methods=CHEAP))
    shape = [
        f"--batch-size={draw(st.sampled_from(['0', '2', '4', 'x']))}",
        f"--seq-len={draw(st.sampled_from(['1', '16', '32', '2048']))}",
    ]
    return [
        *args,
        *shape,
        "--steps",
        "2",
        "--set",
        "eval_tokens=128",
        "--set",
        "eval_every=1",
        "--set",
        "threads=1",
        "--set",
        "device=cpu",
    ]


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory):
    return write_small_config(tmp_path_factory.mktemp("front"))


@settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(args=short_run())
@example(
    args=[
        "--model",
        "tiny",
        "--method",
        "fp8-optim",
        "--seed",
        "3",
        "--lr",
        "0.002",
        "--batch-size=2",
        "--seq-len=16",
        "--steps",
        "2",
        "--set",
        "eval_tokens=128",
        "--method-option",
        "block_size=64",
    ]
)
def test_a_few_command_lines_end_to_end(cli_config, tmp_path_factory, args):
    out = tmp_path_factory.mktemp("run") / "x"
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--configfile", str(cli_config), "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert "Traceback" not in r.stderr or r.returncode == 0, r.stderr[-3000:]
    if r.returncode == 0:  # it ran: a whole summary with a status (a bad recipe may fail, but says so)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] in STATUSES, summary
    else:
        assert_refused_in_one_line(r.returncode, r.stderr)
        assert not (out / "summary.json").exists()
