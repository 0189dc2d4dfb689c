# fp8bench — the two commands:
#   make reproduce   fresh machine: .venv with the pinned deps, then `snakemake --cores all`
#   make test        same .venv, the whole test suite (what .ci/run calls)
# TORCH_INDEX: a pip index for torch itself, e.g. https://download.pytorch.org/whl/cpu on a CPU machine
# whose default index would give a CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=
SNAKEMAKE_ARGS ?=
export PATH := $(BIN):$(PATH)

.PHONY: reproduce test smoke report clean-results venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --cores all $(SNAKEMAKE_ARGS)

smoke: $(STAMP)
	$(BIN)/snakemake --cores all --config profile=smoke $(SNAKEMAKE_ARGS)

report: $(STAMP)
	$(BIN)/snakemake --cores 1 report

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/runs results/data results/summary.csv reports/figures reports/REPORT.md .snakemake
