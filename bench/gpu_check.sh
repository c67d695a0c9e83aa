#!/usr/bin/env bash
# One GPU check: build for the card, verify every kernel against the cpu reference, time the
# trainers (every kernel variant) at the 124M config and the kernels; one summary table on stdout, full logs in a folder.
# Needs no network. Takes Deno from PATH, or from .gpu-carry/deno.xz (made on a machine that has
# Deno by ../shared/tools/pack-deno-for-gpu.sh, or: xz -T2 -9 -c "$(command -v deno)" > .gpu-carry/deno.xz).
#
#   bench/gpu_check.sh [--dry-run] [--logs DIR] [--steps N]
#
# --dry-run: run every stage that needs no GPU (Deno, nvcc build, register/spill report) and stop,
# saying so, where a GPU is required. CI runs it this way so the script does not rot.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
logs=${OUT:-bench/gpu_logs}/gpu_check-$(date +%Y%m%d-%H%M%S)
steps=16
while (($#)); do
  case $1 in
    --dry-run) dry=1; shift ;;
    --logs) logs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (expected --dry-run, --logs DIR, --steps N)" >&2; exit 2 ;;
  esac
done
mkdir -p "$logs"
summary=()
failed=0
row() { summary+=("$(printf '%-28s %-6s %s' "$1" "$2" "$3")"); [[ $2 == FAIL ]] && failed=1; return 0; }
finish() {
  echo
  echo "== gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ)); logs in $logs"
  printf '%s\n' "${summary[@]}"
  exit $failed
}

# ---- 1. Deno
if ! command -v deno >/dev/null 2>&1; then
  if [[ -f .gpu-carry/deno.xz ]]; then
    { xz -d -c .gpu-carry/deno.xz > /tmp/deno 2>/dev/null ||
      python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.gpu-carry/deno.xz'),open('/tmp/deno','wb'))"; } &&
      chmod +x /tmp/deno && export PATH=/tmp:$PATH
  else
    source tools/bootstrap.sh && mn_ensure_deno
  fi
fi
if command -v deno >/dev/null 2>&1; then row deno ok "$(deno --version | head -n1)"; else row deno FAIL "no deno (see header)"; finish; fi

# ---- 2. build for the card, register/spill report
nvcc_v=$(${CUDA_HOME:-/usr/local/cuda}/bin/nvcc --version 2>/dev/null | tail -n1)
gpu=$(nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader 2>/dev/null | head -n1)
if [[ -n $nvcc_v ]]; then row nvcc ok "$nvcc_v"; else row nvcc FAIL "nvcc not found (CUDA_HOME)"; fi
if [[ -n $gpu ]]; then row gpu ok "$gpu"; else row gpu none "no GPU visible (nvidia-smi)"; fi
if make -C cuda -j"$(nproc)" cuda cpu > "$logs/build.log" 2>&1; then row "build cuda+cpu" ok "cuda/build/libmn_cuda.so"; else row "build cuda+cpu" FAIL "see $logs/build.log"; finish; fi
# ptxas: one line per kernel instantiation and arch: registers, spill stores/loads
for f in cuda/build/cuda/*.o.ptxas.txt; do
  awk -v file="$(basename "$f" .o.ptxas.txt)" '
    /Compiling entry function/ { match($0, /_Z[0-9A-Za-z_]+/); fn = substr($0, RSTART, RLENGTH); match($0, /sm_[0-9]+/); arch = substr($0, RSTART, RLENGTH) }
    /spill stores/ { split($0, a, " "); st = a[5]; ld = a[9] }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15); print file, arch, regs, st + 0, ld + 0, fn }
  ' "$f"
done > "$logs/ptxas.txt"
spills=$(awk '($4 > 0 || $5 > 0)' "$logs/ptxas.txt")
# WKV and attention kernels must not spill at any head size (they keep fp32 state in registers).
bad=$(echo "$spills" | grep -E '^(wkv[67]|attention)' || true)
if [[ -n $bad ]]; then
  row "spills (wkv/attention)" FAIL "$(echo "$bad" | wc -l) instantiation(s): $logs/ptxas.txt"
else
  row "spills (wkv/attention)" ok "none"
fi
row "spills (all kernels)" info "$(echo "$spills" | grep -c . || true) instantiation(s) spill; table in $logs/ptxas.txt"

if [[ -z $gpu ]]; then
  row "stop" info "no GPU: the cuda-vs-cpu tests, trainer timing and kernel benchmarks need one"
  if ((dry)); then echo "dry run: stopping where a GPU is required"; fi
  finish
fi
((dry)) && { row "stop" info "--dry-run: not running the GPU stages"; finish; }

# ---- 3. every kernel and every trainer's whole model: cuda vs cpu. The harness enables those
# tests when a GPU is visible; the filter keeps the tests whose names have "cuda" as a word (the
# cuda-vs-cpu kernel checks, the ABI check and the whole-model comparisons), not --fast_cuda & co.
if timeout 300 deno test -A cuda/ train_gpt2_test.ts train_rwkv6_test.ts train_rwkv7_test.ts \
  --filter '/(^|[ :(])cuda[ )]/' > "$logs/kernel_tests.log" 2>&1; then st=ok; else st=FAIL; fi
row "cuda vs cpu tests" $st "$(grep -E 'passed \|' "$logs/kernel_tests.log" | tail -n1 | sed 's/\x1b\[[0-9;]*m//g')"

# ---- 4. every trainer and kernel variant at the 124M config on the carried Brown shards
# One run per (script, kernel flag); each is cut at $run_limit s, and the stage stops starting runs
# once $stage_limit s of the whole check have passed, so the benchmarks still get their turn.
run_limit=${MN_GPU_CHECK_RUN_S:-100}
stage_limit=${MN_GPU_CHECK_STAGE_S:-390}
train_runs=(
  "train_rwkv7.ts --fast_cuda" "train_rwkv7.ts --wind_cuda" "train_rwkv7.ts"
  "train_rwkv6.ts" "train_rwkv6.ts --fla_cuda"
  "train_gpt2.ts" "train_gpt2.ts --cuda_core_attention"
)
if compgen -G "data/brown/brown_train_*.bin" >/dev/null; then
  for spec in "${train_runs[@]}"; do
    read -r script kern <<<"$spec"
    name="${script%.ts} ${kern:-default}"
    f="$logs/$(echo "$name" | tr ' ' _ | tr -d -).log"
    if ((SECONDS > stage_limit)); then row "$name" skip "time budget of the check spent (${SECONDS}s)"; continue; fi
    MN_BACKEND=cuda timeout "$run_limit" deno run -A "$script" $kern --input_bin 'data/brown/brown_train_*.bin' \
      --input_val_bin 'data/brown/brown_val_*.bin' --device_bsz 32 --bsz 32 --num_iterations "$steps" \
      --warmdown_iters 2 --val_loss_every 0 --val_tokens 32768 --random_seed 1 --log_dir "$logs/runs" \
      > "$f" 2>&1
    rc=$?
    if ((rc == 0)); then
      avg=$(grep -E '^step:[0-9]+/[0-9]+ train_loss' "$f" | tail -n1 | sed -E 's/.*step_avg:([0-9.na]+)ms.*/\1/')
      last=$(grep -E '^step:[0-9]+/[0-9]+ train_loss' "$f" | tail -n1 | sed -E 's/.*train_loss:([0-9.]+).*/\1/')
      first=$(grep -E '^step:1/' "$f" | sed -E 's/.*train_loss:([0-9.]+).*/\1/')
      peak=$(grep -E 'peak memory' "$f" | sed -E 's/.*: //')
      # tokens/s and MFU (6 x params FLOPs per token, bf16 dense peak 989 TFLOPS for H100/H200 SXM)
      stats=$(awk -v ms="$avg" -v tok=32768 'BEGIN { if (ms + 0 > 0) { tps = tok / (ms / 1000); printf "%.0f tok/s, MFU %.1f%%", tps, 100 * tps * 6 * 1.24e8 / 989e12 } else print "n/a" }')
      row "$name" ok "step_avg ${avg}ms, $stats, loss $first -> $last, peak $peak"
    elif grep -q "not landed\|not yet" "$f"; then
      row "$name" skip "$(grep -m1 "not landed\|not yet" "$f" | cut -c1-100)"
    else
      row "$name" FAIL "rc $rc (124: cut at ${run_limit}s), see $f"
    fi
  done
else
  row "trainers" FAIL "no data/brown shards carried (deno task data:brown; carry data/brown)"
fi

# ---- 5. kernel micro-benchmarks at model shapes
if timeout 120 deno run -A bench/kernels.ts --size model --reps 20 --backends cuda > "$logs/kernels_bench.log" 2>&1; then
  row "kernel benchmarks" ok "$logs/kernels_bench.log"
  cat "$logs/kernels_bench.log"
else
  row "kernel benchmarks" FAIL "see $logs/kernels_bench.log"
fi
finish
