#!/usr/bin/env bash
# One short lease of a GPU machine, every check in one command, each stage with its own time budget
# (issue #18): correctness first, then timings, memory at the record batches, the per-kernel profile
# at record shapes, and the PyTorch original beside ours. Logs are packed as they are made into
# $OUT/gpu_session.tar.gz (the device tool brings back at most 8 files), the summary into
# $OUT/summary.txt and stdout.
#
# Prepare on a machine with Deno (the GPU machine has no network):
#   deno task data:brown && ../shared/tools/pack-deno-for-gpu.sh
#   bench/gpu_session.sh --pack-blas            # .gpu-carry/blas.tar.xz: OpenBLAS for the cpu reference
#   make -C cuda cpu                            # the cpu reference (the GPU machine lacks cblas.h)
#   bench/original_side_by_side.sh prepare MIRROR   # optional: the originals, into .gpu-carry/original
# Carry .gpu-carry data/brown cuda/build/cpu cuda/build/libmn_cpu.so; run `bash bench/gpu_session.sh`.
# MN_GPU_SESSION_S (500): the whole budget; stages are cut so that the packing still happens.
# MN_GPU_SESSION_STAGES (tests,trainers,record,original): a shorter list for a rerun; the stage caps
# MN_GS_TESTS_S (170), MN_GS_TRAIN_S (185), MN_GS_TRAIN_STAGES (trainers,graph,bench),
# MN_GS_BENCH_S (25), MN_GS_KREC_S (20, bench/kernels.ts --record), MN_GS_RECORD_S (40/35 per run),
# and MN_GPU_CHECK_TESTS_FILTER / MN_GPU_CHECK_RUNS (gpu_check.sh).
# Progress goes straight to stdout (the device tool returns its tail; never pipe this into `tail`,
# which prints nothing when the command is cut), stage outputs to files: a stage that leaves a
# process behind holding its output cannot stall the script.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --pack-blas ]]; then
  d=$(mktemp -d)/blas && mkdir -p "$d" && for l in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$d/" || exit 1
  done
  mkdir -p .gpu-carry && tar -cJf .gpu-carry/blas.tar.xz -C "$(dirname "$d")" blas && ls -la .gpu-carry/blas.tar.xz
  exit
fi
budget=${MN_GPU_SESSION_S:-500}
stages=${MN_GPU_SESSION_STAGES:-tests,trainers,record,original}
want() { [[ ,$stages, == *,$1,* ]]; }
out=${OUT:-bench/gpu_logs}
L=/tmp/gpu_session
rm -rf "$L" && mkdir -p "$L" "$out"
# Logs only: the trainers' end-of-run checkpoints (1-2 GB each) once made this take minutes and
# the archive too big to come back (2026-12-04), so they are left out (and deleted after each run).
pack() {
  tar -czf "$out/gpu_session.tar.gz.tmp" --exclude='*.safetensors' --exclude='*.pt' -C /tmp gpu_session 2>/dev/null &&
    mv -f "$out/gpu_session.tar.gz.tmp" "$out/gpu_session.tar.gz"
}
say() {
  echo "[$(printf '%4d' $SECONDS)s] $*" | tee -a "$L/summary.txt"
  cp -f "$L/summary.txt" "$out/summary.txt"
}
left() { echo $((budget - SECONDS)); }
# a stage's limit: its own cap, or what is left of the budget less a reserve for later stages
cap() { local c=$1 reserve=${2:-0} l; l=$(($(left) - reserve)); ((l < c)) && c=$l; ((c < 0)) && c=0; echo $c; }
trap 'pack; cp -f "$L/summary.txt" "$out/summary.txt"' EXIT

# ---- setup: Deno, OpenBLAS for the cpu reference, the carried cpu build made newer than its sources
say "setup: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -n1)"
if [[ -f .gpu-carry/deno.xz ]] && ! command -v deno >/dev/null; then
  xz -d -c .gpu-carry/deno.xz > /tmp/deno 2>/dev/null ||
    python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.gpu-carry/deno.xz'),open('/tmp/deno','wb'))"
  chmod +x /tmp/deno && export PATH=/tmp:$PATH
fi
if [[ -f .gpu-carry/blas.tar.xz ]]; then
  tar -xJf .gpu-carry/blas.tar.xz -C /tmp && export LD_LIBRARY_PATH=/tmp/blas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# carried builds (cuda/build, or its cpu part) must look newer than the freshly copied sources
find cuda/build -exec touch {} + 2>/dev/null
# the cuda-vs-cpu tests run one process per test file, each with a cpu reference: no oversubscription
export OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2
{
  nvidia-smi; nvcc --version; deno --version; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
  deno eval 'import { findNvidiaLibrary } from "./cuda/libsearch.ts";
    for (const [s, e, w] of [["libcublas.so", "MN_CUBLAS", "cublas"], ["libcublasLt.so", "MN_CUBLASLT", "cublas"], ["libnccl.so", "MN_NCCL", "nccl"]]) console.log(s, findNvidiaLibrary(s, e, w));'
  ldd cuda/build/libmn_cpu.so
} > "$L/env.log" 2>&1
say "deno: $(deno --version 2>&1 | head -n1); $(grep -E '^libcublas.so ' "$L/env.log")"

# ---- in the background: the original's first run fills torch.compile's and the extension caches
# (CPU-bound, minutes), so that its timed run at the end starts fast.
if want original && [[ -d .gpu-carry/original ]]; then
  # its own process group (setsid), so that the whole tree can be stopped at once
  setsid bash -c "timeout -k 5 $(cap 200) bench/original_side_by_side.sh run rwkv7 2 32 $L/orig_rwkv7_warm.log
    timeout -k 5 $(cap 120) bench/original_side_by_side.sh run gpt2 2 32 $L/orig_gpt2_warm.log" &
  warm_pid=$!
fi

# ---- 1a. build and every cuda-vs-cpu test (never trimmed: this is what the lease is for)
check() { # log name, gpu_check flags...: the check's summary table into the session summary
  local f=$L/$1.txt; shift
  # live on stdout through tee, without making the script wait for whatever holds the output
  bash bench/gpu_check.sh --logs "$L/check" "$@" > >(tee "$f" | sed 's/^/  | /') 2>&1 < /dev/null
  sleep 1
  sed -n '/== gpu_check summary/,$p' "$f" >> "$L/summary.txt"
  cp -f "$L/summary.txt" "$out/summary.txt"
  pack
}
say "stage tests"
if want tests; then MN_GPU_CHECK_TESTS_S=$(cap "${MN_GS_TESTS_S:-170}" 250) check check_1 --stages build,tests
else check check_1 --stages build; fi
if [[ -n ${warm_pid:-} ]]; then
  # the timings below want the GPU and CPUs to themselves
  w=$(cap 40 220); say "waiting up to ${w}s for the original's warm-up"
  for ((i = 0; i < w; i++)); do kill -0 "$warm_pid" 2>/dev/null || break; sleep 1; done
  kill -- -"$warm_pid" 2>/dev/null; sleep 1; pkill -9 -f 'train_(rwkv7|gpt2)\.py' 2>/dev/null
  say "original warm-up: $(grep -hE '^step:[0-9]+/' "$L"/orig_*_warm.log 2>/dev/null | tail -n2 | tr '\n' ' ')"
fi

# ---- 1b. every trainer and kernel variant at the 124M config, B 32 x T 1024, then the kernel bench
# (a run may start until STAGE_S and then take RUN_S)
say "stage trainers"
if want trainers; then
  # the graph stage (eager vs --cuda_graph, 2 runs of <= 30 s) comes out of the trainers' share
  MN_GPU_CHECK_RUN_S=35 MN_GPU_CHECK_STAGE_S=$(($(cap "${MN_GS_TRAIN_S:-185}" 130) - 35 - 60)) MN_GPU_CHECK_GRAPH_S=30 \
    MN_GPU_CHECK_BENCH_S=$(cap "${MN_GS_BENCH_S:-25}" 100) MN_GPU_CHECK_RECORD_S=$(cap "${MN_GS_KREC_S:-20}" 100) \
    check check_2 --stages "${MN_GS_TRAIN_STAGES:-trainers,graph,bench}" --steps 14
fi

# ---- 2+3. the record batches: peak memory (ours: the allocator's count; the card: nvidia-smi's
# sampled maximum) and every kernel timed at record shapes (MN_PROFILE with blocking launches: the
# calibration data of the step-cost model, per entry point and call shape, in profile_*.json)
record_run() { # name, limit, script, flags...
  local name=$1 lim=$2; shift 2
  ((lim < 10)) && { say "$name: skipped (budget spent)"; return; }
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$L/smi_$name.txt" 2>/dev/null &
  local smi=$!
  MN_BACKEND=cuda MN_PROFILE=1 MN_PROFILE_JSON="$L/profile_$name.json" CUDA_LAUNCH_BLOCKING=1 \
    timeout -k 5 "$lim" deno run -A "$@" --input_bin 'data/brown/brown_train_*.bin' \
    --input_val_bin 'data/brown/brown_val_*.bin' --num_iterations 3 --warmdown_iters 1 --val_loss_every 0 \
    --log_dir "$L/runs" > "$L/record_$name.log" 2>&1 < /dev/null
  local rc=$?
  kill "$smi" 2>/dev/null
  say "$name: rc $rc; $(grep -m1 'peak memory' "$L/record_$name.log"); card max $(sort -n "$L/smi_$name.txt" | tail -n1) MiB; $(grep -m1 -iE 'out of memory|error' "$L/record_$name.log" | cut -c1-160)"
  ((rc)) && tail -n 4 "$L/record_$name.log" | cut -c1-200
  find "$L/runs" -name '*.safetensors' -delete 2>/dev/null
  # the per-call-shape profile comes back on its own, not only inside the archive
  if [[ -f $L/profile_$name.json ]]; then
    gzip -c "$L/profile_$name.json" > "$out/profile_$name.json.gz"
    # measured vs the step-cost model, per ABI function (the calibration data)
    timeout -k 2 20 deno run -A bench/step_cost.ts --measured "$L/profile_$name.json" --hw H200 \
      > "$L/measured_vs_model_$name.md" 2>&1 < /dev/null
    head -n 12 "$L/measured_vs_model_$name.md" | cut -c1-200
  fi
  pack
}
v32=$((2 * 32 * 1024)); v64=$((64 * 1024))
say "stage record"
want record && record_run rwkv7_fast_b32 "$(cap "${MN_GS_RECORD_S:-40}" 60)" train_rwkv7.ts --fast_cuda --device_bsz 32 --bsz 32 --val_tokens $v32
want record && record_run gpt2_b64 "$(cap "${MN_GS_RECORD_S:-35}" 40)" train_gpt2.ts --device_bsz 64 --bsz 64 --val_tokens $v64
want record && record_run rwkv7_fast_b16 "$(cap 30 40)" train_rwkv7.ts --fast_cuda --device_bsz 16 --bsz 16 --val_tokens $v32
pack

# ---- 4. the original beside ours: same card, data, B 32 x T 1024, 16 steps (step_avg over 11..16)
if want original && [[ -d .gpu-carry/original ]]; then
  for m in rwkv7 gpt2; do
    lim=$(cap 60 5)
    ((lim < 20)) && { say "original $m: skipped (budget spent)"; continue; }
    timeout -k 5 "$lim" bench/original_side_by_side.sh run $m 16 32 "$L/orig_$m.log" < /dev/null
    say "original $m (rc $?): $(grep -E '^step:1/|^step:16/' "$L/orig_$m.log" | tr '\n' ' ') $(grep -m1 'peak memory' "$L/orig_$m.log")"
  done
fi
say "done; logs in gpu_session.tar.gz"
