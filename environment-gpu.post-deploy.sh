#!/usr/bin/env bash
# TransformerEngine for environment-gpu.yml, compiled against the torch in the active environment. Snakemake
# runs this inside the new environment after creating it under --use-conda; by hand:
#   conda activate fp8bench-gpu && sh environment-gpu.post-deploy.sh
# The build needs the CUDA toolkit (nvcc) and a C++ compiler, and takes some minutes. Where nvcc is missing
# the environment stays usable without TransformerEngine: its methods (fp8-te-*) are then recorded as skipped
# with that reason, and this script says how to add it later.
set -eu
TE_VERSION=2.20.2
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "environment-gpu.post-deploy.sh: no nvcc (not on PATH, not in CUDA_HOME=$CUDA_HOME): TransformerEngine" \
    "$TE_VERSION not built; the fp8-te-* methods will be skipped. On a machine with the CUDA toolkit, in this" \
    "environment: pip install --no-build-isolation \"transformer_engine[pytorch]==$TE_VERSION\"" >&2
  exit 0
fi
export CUDA_HOME
python -m pip install --no-build-isolation "transformer_engine[pytorch]==$TE_VERSION"
