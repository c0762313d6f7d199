#!/usr/bin/env bash
# GPU check: build for this GPU's arch only, run the CUDA tests and the CUDA benchmarks, and write
# a JSON summary.
#
#   bash bench/gpu_check.sh OUTDIR
#   QUICK=1 bash bench/gpu_check.sh OUTDIR   # host checks + CUDA patch-embed tests + one forward benchmark
#
# Knobs (environment): TEST_SELECT / BENCH_SELECT (pytest -k expressions), SAMPLING=1 (also
# bench/bench_sampling.py: SD3.5-M-sized sampling throughput, BENCH_SAMPLING_STEPS denoising steps,
# default 10 here), FLUX=1 (also bench/bench_flux.py on CUDA: the fused FLUX x_embedder against
# pack + Linear, FLUX.1's blocks at 1024 and 2048 px, FLUX.1 sampling), TEST_TIMEOUT, BENCH_TIMEOUT (per-stage limits), DEADLINE (default 450 s: every
# stage's limit is cut to what is left of it, a stage with under 10 s left is skipped and its exit
# code reads "skipped", so the summary is written before a 600 s device call ends).
#
# For an offline machine with an NVIDIA GPU, torch (CUDA build), nvcc, scikit-build-core,
# pybind11, cmake and ninja already installed (no downloads: --no-build-isolation --no-deps).
# diffusers / transformers, when missing, are installed from the wheels in .gpu_wheels/ if that
# folder was carried along. Writes OUTDIR/gpu_check.json (+ logs, junit.xml, bench JSON lines).
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }
DEADLINE=${DEADLINE:-450}
limit() {  # wanted seconds -> the smaller of it and what is left before DEADLINE; 0: under 10 s left
  local left=$(( DEADLINE - ($(date +%s) - start) ))
  if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

if ! $PY -c "import diffusers, transformers" 2>/dev/null && [ -d .gpu_wheels ]; then
  $PY -m pip install --no-index --find-links .gpu_wheels diffusers transformers > "$OUT/pip.log" 2>&1
  echo "diffusers from .gpu_wheels: rc=$? ($(elapsed))"
fi

# ARCH=90 overrides the detection (a dry run of the plumbing on a machine without a GPU).
arch=${ARCH:-$($PY -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}')")}
echo "== build for sm_$arch =="
DAVAE_CUDA=ON DAVAE_CUDA_ARCHS="$arch" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  $PY -m pip install --no-build-isolation --no-deps -v . -Cbuild-dir=/tmp/davae-build > "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc ($(elapsed))"
if [ $build_rc -ne 0 ]; then tail -60 "$OUT/build.log"; fi
grep -i "libstdc++\|CXX compiler identification" "$OUT/build.log" | head -5

# Run from outside the source tree so the installed package (not python/) is imported.
cd /tmp
SRC="$OLDPWD"
ldd "$($PY -c 'import davae_ext._C as c; print(c.__file__)')" | grep -i "stdc++\|cublasLt"

echo "== CUDA tests =="
# The CPU cases run in CI; here the CUDA parametrisations and the raw-op host checks. pytest-xdist
# (when present) runs them in 8 workers of 2 threads each (16 threads per worker oversubscribed
# the CPU float64 references), and a crash fails one test only. SIGINT at the time limit still
# writes the JUnit report of what ran.
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
DEFAULT_SELECT="cuda or raw_ops"
if [ "${QUICK:-0}" = 1 ]; then DEFAULT_SELECT="raw_ops or libstdcxx or (cuda and patch_embed and not compile)"; fi
t=$(limit "${TEST_TIMEOUT:-140}")
if [ "$t" -gt 0 ]; then
  OMP_NUM_THREADS=2 DAVAE_REQUIRE_EXT=1 timeout -s INT "$t" $PY -m pytest "$SRC/tests" -q -p no:cacheprovider \
    $XDIST -k "${TEST_SELECT:-$DEFAULT_SELECT}" -rs --durations=25 --junitxml="$OUT/junit.xml" -o addopts="" > "$OUT/tests.log" 2>&1
  test_rc=$?
else
  test_rc=skipped
fi
tail -25 "$OUT/tests.log" 2>/dev/null
echo "tests rc=$test_rc ($(elapsed))"

echo "== benchmarks =="
BENCH_JSONS=()
bench() {  # name, -k expression, timeout. Each finished benchmark is one line of $1.jsonl
  # (bench/conftest.py), so a time limit keeps what finished before it.
  local t
  t=$(limit "$3")
  if [ "$t" -eq 0 ]; then echo "bench $1 skipped: DEADLINE"; RCS+=("$1=skipped"); return; fi
  DAVAE_BENCH_JSONL="$OUT/$1.jsonl" timeout -s INT -k 15 "$t" $PY -m pytest "$SRC/bench" --benchmark-only -q \
    -p no:cacheprovider -k "$2" -s -o addopts="" > "$OUT/$1.log" 2>&1
  local rc=$?
  echo "bench $1 rc=$rc, $(cat "$OUT/$1.jsonl" 2>/dev/null | wc -l) benchmarks ($(elapsed))"
  BENCH_JSONS+=("$OUT/$1.jsonl")
  RCS+=("$1=$rc")
}
RCS=(build=$build_rc tests=$test_rc)
if [ "${QUICK:-0}" = 1 ]; then
  bench bench "cuda and patch_embed and sd3-2048 and fwd and not fwdbwd and not compile" 60
else
  bench bench "${BENCH_SELECT:-cuda and not compile and (patch_embed or not bwd) and not sampling and not overhead and not flux}" ${BENCH_TIMEOUT:-150}
  bench bench_compile "cuda and compile and patch_embed and fwd and not fwdbwd" 60
  bench bench_overhead "overhead and cuda" 60
fi
echo "== per-kernel times of the fused ops (bench/gpu_kernels.py) =="
t=$(limit 90)
if [ "$t" -gt 0 ]; then
  timeout -k 10 "$t" $PY "$SRC/bench/gpu_kernels.py" --output-dir "$OUT" > "$OUT/kernels.log" 2>&1
  RCS+=("kernels=$?")
else
  RCS+=("kernels=skipped")
fi
grep -v "^USDT\|profiler_st" "$OUT/kernels.log" 2>/dev/null | tail -16
if [ "${SAMPLING:-0}" = 1 ]; then
  BENCH_SAMPLING_STEPS=${BENCH_SAMPLING_STEPS:-10} bench bench_sampling "sampling and cuda and not flux" 200
  grep "sampling-" "$OUT/bench_sampling.log" | head -8
fi
if [ "${FLUX:-0}" = 1 ]; then
  BENCH_SAMPLING_STEPS=${BENCH_SAMPLING_STEPS:-10} bench bench_flux "cuda and flux" 200
  grep "flux_block-\|flux_sampling-" "$OUT/bench_flux.log" | head -12
fi

$PY "$SRC/bench/gpu_summary.py" --out "$OUT/gpu_check.json" --junit "$OUT/junit.xml" --bench "${BENCH_JSONS[@]}" \
  --kernels "$OUT/kernels.json" --rc "${RCS[@]}" --seconds $(( $(date +%s) - start ))
