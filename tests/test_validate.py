"""One validation for every way into a run (pipelines.run.validate, methods.options): every registered
method's options have rules, bad values are refused with one line naming option, value and valid values,
and the workflow refuses a bad profile before building its DAG with the same message."""

import dataclasses

import pytest
import yaml

from methods.options import TYPES, Choice, Range, rules_of, type_name
from methods.registry import _REGISTRY, get_method, method_names
from pipelines.run import config as config_mod
from pipelines.run.config import ConfigError
from pipelines.run.validate import check_profile, check_run, describe

METHODS = method_names()


def _bad_value(field_type: str, rule):
    """A value of the option's type that its rule refuses (or, without a rule, a value of another type)."""
    if isinstance(rule, Range):
        return int(rule.lo) - 1 if rule.lo is not None else int(rule.hi) + 1
    if isinstance(rule, Choice):
        return "no-such-choice" if field_type in ("str", "bool | str") else not rule.values[0]
    return {"bool": "yes", "str": 3, "tuple[str, ...]": "lm_head"}[field_type]


@pytest.mark.parametrize("name", METHODS)
def test_every_option_of_every_method_is_typed_ruled_and_refused_when_bad(name):
    cls = _REGISTRY[name]
    get_method(name).validate()  # the defaults meet the rules
    rules = rules_of(cls)
    for f in dataclasses.fields(cls):
        t = type_name(f.type)
        assert t in TYPES, (name, f.name, t)  # a type the checker knows
        if t in ("int", "float"):  # every numeric option declares its range
            assert isinstance(rules.get(f.name), Range), (name, f.name)
        with pytest.raises(ValueError) as e:
            get_method(name, **{f.name: _bad_value(t, rules.get(f.name))})
        msg = str(e.value)
        assert f"method {name}: option {f.name} = " in msg and "; valid: " in msg and "\n" not in msg, msg


def test_option_rules_name_the_valid_values():
    with pytest.raises(ValueError, match=r"option block_size = 0; valid: a whole number >= 1"):
        get_method("fp8-optim", block_size=0)
    with pytest.raises(ValueError, match=r"option v_format = 'e3m4'; valid: one of e4m3, e5m2"):
        get_method("fp8-optim", v_format="e3m4")
    with pytest.raises(ValueError, match=r"option emulate = 'yes'; valid: one of auto, true, false"):
        get_method("fp8-torchao-rowwise", emulate="yes")
    with pytest.raises(ValueError, match=r"fp8_recipe = 'delayed' with fp8_engine torchao; valid: one of tensorwise"):
        get_method("zero2-fp8", fp8_recipe="delayed")
    with pytest.raises(ValueError, match=r"method fp8-own-delayed: delayed scaling is per-tensor"):
        get_method("fp8-own-delayed", granularity="rowwise")  # a rule across two options
    assert get_method("fp8-optim", block_size=128).block_size == 128


@pytest.mark.parametrize(
    "prop,words",
    [
        ({"type": "integer", "minimum": 1}, "an integer >= 1"),
        ({"type": "number", "exclusiveMinimum": 0}, "a number > 0"),
        ({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "a number in [0, 1)"),
        ({"enum": ["cpu", "cuda"]}, "one of cpu, cuda"),
        ({"type": ["integer", "null"], "minimum": 0}, "an integer >= 0 or null"),
    ],
)
def test_schema_ranges_in_words(prop, words):
    assert describe(prop) == words


def _rc(**train):
    cfg = config_mod.load()
    return config_mod.resolve_run(cfg, "cpu", "tiny", "fp32", 0, train)


def test_check_run_names_key_value_and_range():
    check_run(_rc())
    for over, msg in [
        (
            {"checkpoint_every": -1},
            "train.checkpoint_every = -1: -1 is less than the minimum of 0; valid: an integer >= 0",
        ),
        ({"lr": float("inf")}, "train.lr = inf: must be a finite number"),
        ({"steps": 2.5}, "train.steps = 2.5: 2.5 is not of type 'integer'; valid: an integer >= 1"),
        ({"seq_len": 1025}, "exceeds tiny's max_seq_len 1024"),
        ({"stepz": 3}, "config key train.stepz is unknown; valid train keys: batch_size"),
    ]:
        with pytest.raises(ConfigError, match=None) as e:
            check_run(_rc(**over))
        assert msg in str(e.value) and "\n" not in str(e.value), (over, str(e.value))


def test_every_profile_of_the_shipped_config_passes():
    cfg = config_mod.load()
    for profile in cfg["profiles"]:
        check_profile(cfg, profile)


def test_a_bad_variant_fails_the_profile_check_naming_the_run():
    cfg = config_mod.load(
        overrides={
            "profiles": {
                "smoke": {"variants": {"fp8-optim-b0": {"method": "fp8-optim", "options": {"block_size": -1}}}}
            }
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"profile smoke, run tiny/fp8-optim-b0/seed0: method fp8-optim: "
        r"option block_size = -1; valid: a whole number >= 1",
    ):
        check_profile(cfg, "smoke")


def test_the_workflow_refuses_a_bad_profile_before_the_dag(tmp_path):
    """``snakemake -n`` with a variant whose option is out of range: the same message, no job planned."""
    import shutil

    from tests.conftest import ROOT, run_cli

    for name in ("Snakefile", "pipelines"):
        src = ROOT / name
        (
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, tmp_path / name)
        )
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"profiles": {"smoke": {"train": {"seq_len": 4096}}}}))
    r = run_cli(
        "-m",
        "snakemake",
        "-n",
        "--cores",
        "1",
        "--configfile",
        "pipelines/config.yaml",
        "bad.yaml",
        "--config",
        "profile=smoke",
        cwd=tmp_path,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "train.seq_len = 4096: exceeds tiny's max_seq_len 1024; valid: an integer in [2, 1024]" in out, out[-3000:]
    assert "rule train" not in out and not (tmp_path / "results").exists()
