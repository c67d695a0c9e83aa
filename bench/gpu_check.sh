#!/usr/bin/env bash
# One GPU check: build for the card, verify every kernel against the cpu reference, time the
# trainers (every kernel variant) at the 124M config and the kernels; one summary table on stdout, full logs in a folder.
# Needs no network. Takes Deno from PATH, or from .gpu-carry/deno.xz (made on a machine that has
# Deno by ../shared/tools/pack-deno-for-gpu.sh, or: xz -T2 -9 -c "$(command -v deno)" > .gpu-carry/deno.xz).
#
#   bench/gpu_check.sh [--dry-run] [--logs DIR] [--steps N] [--stages build,tests,trainers,graph,bench]
#
# --stages: run only these (default all five, in that order; Deno is always set up, and the build
# is what every later stage loads, so leave it out only when the library is already built).
# MN_GPU_CHECK_TESTS_FILTER replaces the test filter; MN_GPU_CHECK_RUNS runs only the first N trainers.
# Time limits (seconds): MN_GPU_CHECK_TESTS_S (300) for the cuda-vs-cpu tests, MN_GPU_CHECK_RUN_S
# (100) per trainer run, MN_GPU_CHECK_STAGE_S (390, counted from this script's start) after which no
# trainer run starts, MN_GPU_CHECK_GRAPH_S (60) per run of the graph stage (MN_GPU_CHECK_GRAPH_RUNS
# (1): how many of its trainers), MN_GPU_CHECK_BENCH_S (120) for the kernel benchmarks,
# MN_GPU_CHECK_RECORD_S (90) for the record-shape ones (bench/kernels.ts --record: measured vs the
# step-cost model per family).
#
# --dry-run: run every stage that needs no GPU (Deno, nvcc build, register/spill report) and stop,
# saying so, where a GPU is required. CI runs it this way so the script does not rot.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
logs=${OUT:-bench/gpu_logs}/gpu_check-$(date +%Y%m%d-%H%M%S)
steps=16
stages=build,tests,trainers,graph,bench
while (($#)); do
  case $1 in
    --dry-run) dry=1; shift ;;
    --logs) logs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (expected --dry-run, --logs DIR, --steps N, --stages LIST)" >&2; exit 2 ;;
  esac
done
for st in ${stages//,/ }; do
  case $st in build | tests | trainers | graph | bench) ;;
    *) echo "error: --stages $stages: unknown stage $st (expected build, tests, trainers, graph, bench)" >&2; exit 2 ;;
  esac
done
want() { [[ ,$stages, == *,$1,* ]]; }
mkdir -p "$logs"
summary=()
failed=0
# each row is printed as it is made (progress) and again in the summary table at the end
row() {
  summary+=("$(printf '%-28s %-6s %s' "$1" "$2" "$3")")
  echo "${summary[-1]}"
  [[ $2 == FAIL ]] && failed=1
  return 0
}
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
if want build; then
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
fi

if [[ -z $gpu ]]; then
  row "stop" info "no GPU: the cuda-vs-cpu tests, trainer timing and kernel benchmarks need one"
  if ((dry)); then echo "dry run: stopping where a GPU is required"; fi
  finish
fi
((dry)) && { row "stop" info "--dry-run: not running the GPU stages"; finish; }

# ---- 3. every kernel and every trainer's whole model: cuda vs cpu. The harness enables those
# tests when a GPU is visible; the filter keeps the tests whose names have "cuda" as a word (the
# cuda-vs-cpu kernel checks, the ABI check and the whole-model comparisons), not --fast_cuda & co.
# Test files run in parallel (one process each, all on the one GPU): the cpu references dominate.
if want tests; then
  if timeout -k 5 "${MN_GPU_CHECK_TESTS_S:-300}" deno test -A --no-check --parallel cuda/ train_gpt2_test.ts \
    train_rwkv6_test.ts train_rwkv7_test.ts --filter "${MN_GPU_CHECK_TESTS_FILTER:-/(^|[ :(])cuda[ )]/}" > "$logs/kernel_tests.log" 2>&1; then
    st=ok
  else st=FAIL; fi
  row "cuda vs cpu tests" $st "$(grep -E 'passed \|' "$logs/kernel_tests.log" | tail -n1 | sed 's/\x1b\[[0-9;]*m//g')"
  # one row per failed test, so the summary names them
  sed 's/\x1b\[[0-9;]*m//g' "$logs/kernel_tests.log" | grep -E ' \.\.\. FAILED' | sed -E 's/ \.\.\. FAILED.*//' |
    sort -u | while read -r t; do echo "$t"; done > "$logs/failed_tests.txt"
  while read -r t; do row "  failed" FAIL "$t"; done < "$logs/failed_tests.txt"
fi

# ---- 4. every trainer and kernel variant at the 124M config on the carried Brown shards
# One run per (script, kernel flag); each is cut at $run_limit s, and the stage stops starting runs
# once $stage_limit s of the whole check have passed, so the benchmarks still get their turn.
run_limit=${MN_GPU_CHECK_RUN_S:-100}
stage_limit=${MN_GPU_CHECK_STAGE_S:-390}
# the record paths first, the yardsticks (reference WKV-7, CUDA-core attention) last
train_runs=(
  "train_rwkv7.ts --fast_cuda" "train_gpt2.ts" "train_rwkv7.ts --wind_cuda"
  "train_rwkv6.ts" "train_rwkv6.ts --fla_cuda" "train_rwkv7.ts" "train_gpt2.ts --cuda_core_attention"
)
# "step ms/step, tok/s, MFU, first -> last loss, peak" from a trainer log. ms/step is the log's
# step_avg (steps 11.. as in the originals); for a run cut before that, the mean over steps 3.. of
# the cumulative train_time (steps 1-2 carry the warm-up).
run_stats() {
  awk -v tok=32768 '
    /^step:[0-9]+\/[0-9]+ train_loss/ {
      split($1, s, /[:\/]/); n = s[2] + 0
      match($0, /train_loss:[0-9.]+/); loss = substr($0, RSTART + 11, RLENGTH - 11)
      match($0, /train_time:[0-9.]+/); tt[n] = substr($0, RSTART + 11, RLENGTH - 11) + 0
      if (match($0, /step_avg:[0-9.]+ms/)) avg = substr($0, RSTART + 9, RLENGTH - 11) + 0
      if (n == 1) first = loss
      last = loss; lastn = n
    }
    /peak memory/ { sub(/.*: /, ""); peak = $0 }
    END {
      if (!lastn) { print "no step finished"; exit }
      ms = avg; how = "step_avg"
      if (!(ms > 0)) { k = (lastn < 10 ? lastn : 10); if (k >= 3) { ms = (tt[k] - tt[2]) / (k - 2); how = "steps 3-" k } }
      if (ms > 0) { tps = tok / (ms / 1000); printf "step %.1fms (%s), %.0f tok/s, MFU %.1f%%", ms, how, tps, 100 * tps * 6 * 1.24e8 / 989e12 }
      else printf "step n/a"
      printf ", loss %s -> %s (step %d), peak %s\n", first, last, lastn, (peak == "" ? "n/a" : peak)
    }' "$1"
}
# MN_GPU_CHECK_RUNS: how many of these to run (a short rerun)
train_runs=("${train_runs[@]:0:${MN_GPU_CHECK_RUNS:-${#train_runs[@]}}}")
if ! want trainers; then
  :
elif compgen -G "data/brown/brown_train_*.bin" >/dev/null; then
  for spec in "${train_runs[@]}"; do
    read -r script kern <<<"$spec"
    name="${script%.ts} ${kern:-default}"
    f="$logs/$(echo "$name" | tr ' ' _ | tr -d -).log"
    if ((SECONDS > stage_limit)); then row "$name" skip "time budget of the check spent (${SECONDS}s)"; continue; fi
    MN_BACKEND=cuda timeout -k 5 "$run_limit" deno run -A "$script" $kern --input_bin 'data/brown/brown_train_*.bin' \
      --input_val_bin 'data/brown/brown_val_*.bin' --device_bsz 32 --bsz 32 --num_iterations "$steps" \
      --warmdown_iters 2 --val_loss_every 0 --val_tokens 32768 --random_seed 1 --log_dir "$logs/runs" \
      > "$f" 2>&1
    rc=$?
    find "$logs/runs" -name '*.safetensors' -delete 2>/dev/null # the end-of-run checkpoint: GBs, unused
    stats=$(run_stats "$f")
    if ((rc == 0)); then
      row "$name" ok "$stats"
    elif grep -q "not landed\|not yet" "$f"; then
      row "$name" skip "$(grep -m1 "not landed\|not yet" "$f" | cut -c1-100)"
    elif ((rc == 124)) && [[ $stats == step* ]] && ! grep -qiE '^error|Error:' "$f"; then
      row "$name" cut "at ${run_limit}s: $stats"
    else
      row "$name" FAIL "rc $rc (124: cut at ${run_limit}s), see $f; $(grep -m1 -iE 'error' "$f" | cut -c1-120)"
    fi
  done
else
  row "trainers" FAIL "no data/brown shards carried (deno task data:brown; carry data/brown)"
fi

# ---- 5. CUDA graph replay (--cuda_graph, issue #16): one trainer run eagerly and replayed, the same
# steps on the same data. Both run the same kernels on the same inputs (the replay reads the per-step
# values from device memory, as the eager step does), so the losses are expected bit-identical
# (printed to 4 decimals, as logged); the row gives both losses and both step times (step_avg over
# steps 11.., as the trainers log it). A capture that failed falls back to eager: a FAIL row.
graph_runs=("train_gpt2.ts" "train_rwkv7.ts --fast_cuda")
graph_runs=("${graph_runs[@]:0:${MN_GPU_CHECK_GRAPH_RUNS:-1}}")
graph_steps=$((steps < 14 ? 14 : steps)) # step_avg needs steps past 11
last_loss() { grep -E '^step:[0-9]+/[0-9]+ train_loss' "$1" | tail -n1 | sed -E 's/.*train_loss:([0-9.]+).*/\1/'; }
step_ms() { grep -E '^step:[0-9]+/[0-9]+ train_loss' "$1" | tail -n1 | sed -E 's/.*step_avg:([0-9.na]+)ms.*/\1/'; }
if ! want graph; then
  :
elif compgen -G "data/brown/brown_train_*.bin" >/dev/null; then
  for spec in "${graph_runs[@]}"; do
    read -r script kern <<<"$spec"
    name="graph ${script%.ts} ${kern:-default}"
    declare -A grc=()
    for mode in eager replay; do
      f="$logs/graph_$(echo "${script%.ts}_${kern}_$mode" | tr -d -).log"
      flag=""; [[ $mode == replay ]] && flag=--cuda_graph
      MN_BACKEND=cuda timeout -k 5 "${MN_GPU_CHECK_GRAPH_S:-60}" deno run -A "$script" $kern $flag \
        --input_bin 'data/brown/brown_train_*.bin' --input_val_bin 'data/brown/brown_val_*.bin' \
        --device_bsz 32 --bsz 32 --num_iterations "$graph_steps" --warmdown_iters 2 --val_loss_every 0 \
        --val_tokens 32768 --random_seed 1 --log_dir "$logs/runs" > "$f" 2>&1
      grc[$mode]=$?
      find "$logs/runs" -name '*.safetensors' -delete 2>/dev/null
    done
    fe="$logs/graph_$(echo "${script%.ts}_${kern}_eager" | tr -d -).log"
    fr="$logs/graph_$(echo "${script%.ts}_${kern}_replay" | tr -d -).log"
    le=$(last_loss "$fe"); lr=$(last_loss "$fr")
    what="after $graph_steps steps: loss eager $le, replay $lr; step eager $(step_ms "$fe")ms, replay $(step_ms "$fr")ms"
    if grep -q "cuda_graph: capture failed" "$fr"; then
      row "$name" FAIL "$(grep -m1 'cuda_graph: capture failed' "$fr" | cut -c1-140)"
    elif ((grc[eager] || grc[replay])); then
      row "$name" FAIL "rc eager ${grc[eager]}, replay ${grc[replay]} (124: cut); see $fe, $fr"
    elif [[ -n $le && $le == "$lr" ]] && grep -q "cuda_graph: step captured" "$fr"; then
      row "$name" ok "$what"
    else
      row "$name" FAIL "$what"
    fi
  done
else
  row "graph" FAIL "no data/brown shards carried (deno task data:brown; carry data/brown)"
fi

# ---- 6. kernel micro-benchmarks at model shapes
if ! want bench; then
  :
elif timeout -k 5 "${MN_GPU_CHECK_BENCH_S:-120}" deno run -A bench/kernels.ts --size model --reps 20 --backends cuda \
  > "$logs/kernels_bench.log" 2>&1; then
  row "kernel benchmarks" ok "$logs/kernels_bench.log"
  cat "$logs/kernels_bench.log"
else
  row "kernel benchmarks" FAIL "rc $? (124: cut at ${MN_GPU_CHECK_BENCH_S:-120}s), see $logs/kernels_bench.log"
fi
# the record shapes (65,536 rows): each family measured against the step-cost model's estimate
if ! want bench; then
  :
elif timeout -k 5 "${MN_GPU_CHECK_RECORD_S:-90}" deno run -A bench/kernels.ts --record --reps 10 --backends cuda \
  > "$logs/kernels_record.log" 2>&1; then
  row "record-shape kernels" ok "$logs/kernels_record.log (measured/est per family)"
  cat "$logs/kernels_record.log"
else
  row "record-shape kernels" FAIL "rc $? (124: cut at ${MN_GPU_CHECK_RECORD_S:-90}s), see $logs/kernels_record.log"
fi
finish
