#!/usr/bin/env bash
# One-shot GPU reference on one H200 (no internet needed, ~10 minutes): installs the wheels carried in .whl/,
# runs the kernel and optimizer benchmarks and short training runs of the main methods on a >=1B model,
# and writes results in the formats the report reads.
#
#   pipelines/gpu/h200.sh OUT_DIR            # on the GPU machine; then copy OUT_DIR to results/reference/h200/
#   pipelines/gpu/h200.sh --dry OUT_DIR      # the same code path on the CPU: tiny model, a few steps
#
# Wheels: torchao (abi3), deepspeed (+ hjson, pydantic, ...) built here with `pip wheel --no-deps` for
# cp312 manylinux x86-64, put in .whl/ at the repository root (ignored by git) and carried with the
# command. TransformerEngine's core wheel (276 MB) is not among them; without it the TE
# methods are recorded as skipped with that reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=()
if [[ "${1:-}" == "--dry" ]]; then DRY=(--dry); shift; fi
OUT="${1:?usage: pipelines/gpu/h200.sh [--dry] OUT_DIR}"
shift || true
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fp8bench-site .whl/*.whl
  export PYTHONPATH="/tmp/fp8bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "${PYTHON:-python3}" -c "import transformer_engine" 2>/dev/null; then
  export FP8BENCH_TE_MISSING_REASON="${FP8BENCH_TE_MISSING_REASON:-transformer-engine is not installed on this machine (no TransformerEngine wheel was provided in .whl/ and it builds only against a CUDA toolkit with network access to its sources; docs/gpu.md)}"
fi
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"   # the interpreter with the project's dependencies (tests pass theirs)
"$PY" -m pipelines.gpu.reference --out "$OUT" "${DRY[@]}" "$@" 2>&1 | tee "$OUT/log.txt"
