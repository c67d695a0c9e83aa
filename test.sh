#!/usr/bin/env bash
# The test command (README): installs what is missing, builds the kernel libraries, runs every check.
#   ./test.sh            everything CI runs
#   ./test.sh FILTER     only deno tests whose name contains FILTER (after the build)
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh
mn_ensure_debs g++:g++ make:make /usr/include/x86_64-linux-gnu/cblas.h:libopenblas-dev
mn_ensure_deno

targets="cpu emu sanitizers"
if [[ -x ${CUDA_HOME:-/usr/local/cuda}/bin/nvcc ]]; then
  targets+=" cuda"
else
  echo "note: nvcc not found (CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}); the cuda library is not built and GPU tests skip" >&2
fi
if [[ ! -e ${CUDA_HOME:-/usr/local/cuda}/include/cuda_bf16.h ]]; then
  echo "error: CUDA headers not found under ${CUDA_HOME:-/usr/local/cuda}/include (the emu build compiles cuda_bf16.h); set CUDA_HOME" >&2
  exit 1
fi
echo "== build: make -C cuda $targets" >&2
time make -C cuda -j"$(nproc)" $targets >/tmp/mn-build.$$.log 2>&1 || { tail -n 40 /tmp/mn-build.$$.log; exit 1; }
rm -f /tmp/mn-build.$$.log

if [[ $# -gt 0 ]]; then
  exec deno test -A --filter "$1"
fi
echo "== deno fmt --check / lint / check" >&2
deno fmt --check
deno lint
deno check
echo "== deno test" >&2
deno test -A
