#!/usr/bin/env bash
# Download the diffusers / transformers wheels (and their dependencies) that bench/gpu_check.sh
# installs on an offline GPU machine without them, into .gpu_wheels/ (git-ignored; carry it along).
#   bash bench/fetch_gpu_wheels.sh [PYTHON_VERSION]      # default 3.12 (the GPU machine's)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PY=${PYTHON:-python3}
DIFFUSERS=$($PY -c "import diffusers; print(diffusers.__version__)")
TRANSFORMERS=$($PY -c "import transformers; print(transformers.__version__)")
$PY -m pip download "diffusers==$DIFFUSERS" "transformers==$TRANSFORMERS" --python-version "$PYV" --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu_wheels
du -sh .gpu_wheels
