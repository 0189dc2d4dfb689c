"""The tree's formatting and lint, as `make test` checks them: ruff (format and the rule set in pyproject.toml)
over the Python, snakefmt over the Snakefile and the rules. A reformatted or newly flagged line fails here with
the command that fixes or shows it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
RULES = ["Snakefile", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pipelines" / "rules").glob("*.smk"))]


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).is_file() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (it is pinned in requirements.txt: make venv installs it)")
    return str(path)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_python_is_formatted():
    r = _run(_tool("ruff"), "format", "--check", ".")
    assert r.returncode == 0, f"run `ruff format .`:\n{r.stdout}{r.stderr}"


def test_python_passes_lint():
    r = _run(_tool("ruff"), "check", ".")
    assert r.returncode == 0, f"`ruff check .` (fixable ones: `ruff check --fix .`):\n{r.stdout}{r.stderr}"


def test_rules_are_formatted():
    r = _run(_tool("snakefmt"), "--check", *RULES)
    assert r.returncode == 0, f"run `snakefmt {' '.join(RULES)}`:\n{r.stdout}{r.stderr}"
