"""Shared fixtures: a small corpus generated from text CPython ships (no downloads, a few hundred KB),
and helpers to build a model + method quickly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs one worker per core) the cores are shared out: a worker taking every
# core for its intra-op threads would oversubscribe the machine, and torch's thread pools spin, so two
# workers of two threads each on two cores run slower than one. Subprocesses a test starts set their own.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _same_draws_every_run():
    """Every test starts from the same global torch seed: its random inputs are then the same on every run
    and under every xdist split, so a statistical tolerance is checked once, not re-drawn on each run."""
    torch.manual_seed(0)


def small_text(n_chars: int = 150_000) -> str:
    """English technical prose from CPython's own docs (pydoc_data), cut to ``n_chars``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[:n_chars]


def write_small_config(root: Path, **train) -> Path:
    """The real experiment config, pointed at ``small_text`` (vocab 512) with its results under ``root``
    (never the checkout's results/) and ``train`` overrides; returns the path of the YAML written."""
    import yaml

    from pipelines.run.config import CONFIG_PATH

    (root / "text.txt").write_text(small_text(), encoding="utf-8")
    cfg = yaml.safe_load(CONFIG_PATH.read_text())
    cfg["results_dir"] = str(root / "results")
    cfg["data"].update(corpus="files", files=[str(root / "text.txt")], vocab_size=512)
    cfg["train"].update({"eval_tokens": 1024, **train})  # the small corpus holds a few thousand val tokens
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A prepared corpus (vocab 512) from ``small_text``."""
    from pipelines.run.data import prepare

    root = tmp_path_factory.mktemp("corpus")
    src = root / "text.txt"
    src.write_text(small_text(), encoding="utf-8")
    data = {
        "corpus": "files",
        "files": [str(src)],
        "hf_dataset": None,
        "text_field": "text",
        "vocab_size": 512,
        "val_fraction": 0.1,
    }
    return prepare(data, root / "prepared")


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    from pipelines.run.data import Corpus

    return Corpus.open(corpus_dir)


def build_trainee(method_name: str, seed: int = 0, vocab: int = 512, **options):
    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model, get_model_config

    cfg = get_model_config("tiny").with_vocab(vocab)
    method = get_method(method_name, **options)
    ctx = RunContext(device=torch.device("cpu"), seed=seed)
    return method.build(build_model(cfg, seed), HParams(lr=1e-3), ctx)


def train_argv(configfile, method: str, out, *extra, seed: int = 0, model: str = "tiny") -> list[str]:
    """The training command's arguments after ``python``: one run of ``method`` into ``out``."""
    return ["-m", "pipelines.train", "--configfile", str(configfile), "--model", model, "--method", method,
            "--seed", str(seed), "--out", str(out), *map(str, extra)]  # fmt: skip


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run ``python -m ...`` with the repository importable, return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


# The test files that take longest on 2 cores (measured per file, slowest first). `make test` hands whole files
# to its workers in this order as each worker frees up (`--no-loadscope-reorder`: xdist would otherwise order
# them by their number of tests, and a long file of few tests would start last); starting with the long ones
# keeps one worker from being left with a long file at the end while the other idles. Order only: every test
# runs.
LONG_FILES = (
    "tests/test_workflow.py",
    "tests/scaleout/test_nodes.py",
    "tests/scaleout/test_data_parallel.py",
    "tests/engines/test_zero.py",
    "tests/test_devices.py",
    "tests/test_resume.py",
    "tests/test_faults.py",
    "tests/test_seed_plan.py",
    "tests/test_memory_trace.py",
    "tests/test_train.py",
    "tests/test_front_door.py",
    "tests/test_compile.py",
    "tests/scaleout/test_resume_ranks.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}

    def key(item):
        path = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        return rank.get(path, len(LONG_FILES))

    items.sort(key=key)  # stable: within a file, and among the other files, the order is kept
