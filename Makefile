# fp8bench — the two commands:
#   make reproduce   fresh machine: .venv with the pinned deps, then `snakemake --cores all`
#   make test        same .venv, the whole test suite (what .ci/run calls)
#   make test-cluster  the SLURM path on a local two-node SLURM (root; .ci/run calls it after make test)
# TORCH_INDEX: a pip index for torch itself, e.g. https://download.pytorch.org/whl/cpu on a CPU machine
# whose default index would give a CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=
SNAKEMAKE_ARGS ?=
# pytest workers for make test (one test file per worker, so a module's fixtures are built once)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
export PATH := $(BIN):$(PATH)

.PHONY: reproduce test test-cluster smoke report report-html browser clean-results venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-compile -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@# bytecode on every core at once (pip compiles one file at a time: ~50 s of the install on 2 cores)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --workflow-profile pipelines/profiles/default --cores all $(SNAKEMAKE_ARGS)

smoke: $(STAMP)
	$(BIN)/snakemake --workflow-profile pipelines/profiles/default --cores all --config profile=smoke $(SNAKEMAKE_ARGS)

report: $(STAMP)
	$(BIN)/snakemake --cores 1 report

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The workflow on a real SLURM started on this machine (pipelines/cluster/slurm-local.sh: two fake nodes, accounting
# for sacct): the `cluster` profile through pipelines/profiles/slurm, checked with sacct, and its two-rank run
# against the same run launched here (tests/cluster/test_slurm.py). Needs root and apt-get for the Debian packages;
# where the cluster cannot run, it says why and succeeds. .ci/run runs it after `make test`.
test-cluster: $(STAMP)
	@bash pipelines/cluster/slurm-local.sh install; rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "test-cluster: skipped: no local SLURM here (the reason is above)"; exit 0; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	$(BIN)/python -m pytest -q -s -rs -p no:cacheprovider tests/cluster

# Headless Chromium (Debian's package) for the browser check of report.html. Best effort: where it cannot be
# installed (no apt-get, not root, no network) `make test` goes on and that check is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1 && echo "installed chromium"; } || \
	echo "note: chromium not installed; the browser check of report.html will be skipped"

# The HTML report, opened in headless Chromium and checked; its landing page saved as reports/report_landing.png.
report-html: $(STAMP) browser
	$(BIN)/snakemake --cores 1 --report reports/report.html $(SNAKEMAKE_ARGS)
	$(BIN)/python -m pipelines.report.browser_check reports/report.html

clean-results:
	rm -rf results/runs results/data results/summary.csv reports/figures reports/tables reports/REPORT.md \
	  reports/landing.rst reports/report.html reports/report_landing.png .snakemake
