#!/usr/bin/env bash
# Step time of our cpu trainer against a matched-shape reference (issue #19): train_gpt2.ts
# --backend cpu at the small GPT-2 shape (4 layers, 128 wide, 2 heads, 8 x 64 tokens per step,
# vocab 50304, Muon + Adam) against karpathy/llm.c's CPU trainer train_gpt2.c at the same shape
# (AdamW, random weights; same Brown tokens), both with OMP_NUM_THREADS (default: all cores).
#
#   bench/cpu_step.sh                       # ours only, against llm.c's 0.657 s/step (issue #19)
#   bench/cpu_step.sh --llmc GIT_DIR        # also build and time llm.c from a git clone or mirror
#   bench/cpu_step.sh --demo                # the CPU demo instead: ./run_rwkv7.sh --fast_cuda
#   options: --rounds N (3) --steps N (ours: 20, the first 10 are warm-up; llm.c: 12, 2 warm-up)
#
# Runs are interleaved (ours, llm.c, ours, ...) so a machine shared with other jobs slows both
# alike; per-step times of all rounds are pooled and reported as min and median (the min is the
# least disturbed step). Logs go to a temporary folder, printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
source tools/bootstrap.sh
mn_ensure_deno || exit 1

REF_S=0.657 # llm.c train_gpt2.c at this shape, 2 threads, issue #19's 2-core machine
rounds=3 steps=20 llmc_steps=12 llmc="" demo=0
while (($#)); do
  case $1 in
    --rounds) rounds=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --llmc) llmc=${2:?}; shift 2 ;;
    --demo) demo=1; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((steps > 11)) || { echo "error: --steps must be > 11 (steps 1-10 are the trainer's warm-up)" >&2; exit 2; }

work=$(mktemp -d /tmp/mn-cpu-step.XXXXXX)
make -C cuda -j"$(nproc)" cpu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log"; exit 1; }
deno run -A data/brown.ts >"$work/data.log" 2>&1 || { cat "$work/data.log"; exit 1; }

# per-step seconds from our log: train_time restarts after step 10, so steps 11.. are timed
our_steps() {
  awk '/^step:[0-9]+\/[0-9]+ train_loss:/ {
    split($1, s, "[:/]"); n = s[2]; t = $3; sub("train_time:", "", t); sub("ms", "", t)
    if (n == 11) printf "%.4f\n", t / 1000; else if (n > 11) printf "%.4f\n", (t - prev) / 1000
    prev = t }' "$1"
}
# min, median and count of a file of numbers
stats() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (!NR) { print "no steps"; exit }
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "min %.3f s  median %.3f s  (%d steps)\n", v[1], m, NR }'; }
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if ((demo)); then
  : >"$work/demo.steps"
  for ((r = 1; r <= rounds; r++)); do
    t0=$(date +%s.%N)
    ./run_rwkv7.sh --fast_cuda --log_dir "$work/logs" >"$work/demo.$r.log" 2>&1 || { tail -n 20 "$work/demo.$r.log"; exit 1; }
    t1=$(date +%s.%N)
    our_steps "$work/demo.$r.log" | tee -a "$work/demo.steps" >/dev/null
    printf 'round %d: %.0f s wall; %s\n' "$r" "$(awk "BEGIN { print $t1 - $t0 }")" "$(grep -o 'val loss.*at step [0-9]*' "$work/demo.$r.log" | head -n1)"
  done
  echo "CPU demo (./run_rwkv7.sh --fast_cuda), s/step from step 11 on: $(stats "$work/demo.steps")"
  echo "logs: $work"
  exit 0
fi

shape=(--n_layer 4 --n_embd 128 --n_head 2 --sequence_length 64 --device_bsz 8 --bsz 8 --vocab_size 50304)
run_ours() {
  deno run -A train_gpt2.ts --backend cpu --input_bin 'data/brown/brown_train_*.bin' \
    --input_val_bin 'data/brown/brown_val_*.bin' "${shape[@]}" --num_iterations "$steps" \
    --warmdown_iters 5 --val_loss_every 0 --val_tokens 512 --random_seed 1 --log_dir "$work/logs" \
    >"$work/ours.$1.log" 2>&1 || { tail -n 20 "$work/ours.$1.log"; exit 1; }
  our_steps "$work/ours.$1.log" >>"$work/ours.steps"
}

# One substitution in llm.c's main() that must match exactly once (else the source changed).
patch_once() { # file, sed expression, pattern
  local n
  n=$(grep -c -E "$3" "$1")
  [[ $n == 1 ]] || { echo "error: $1: expected one line matching '$3', found $n (llm.c changed?)" >&2; exit 1; }
  sed -i -E "$2" "$1"
}
if [[ -n $llmc ]]; then
  gitdir=$llmc
  [[ -d $llmc/.git ]] && gitdir=$llmc/.git
  mkdir -p "$work/llmc"
  git --git-dir="$gitdir" archive HEAD train_gpt2.c llmc | tar -x -C "$work/llmc" ||
    { echo "error: cannot read train_gpt2.c and llmc/ from $llmc" >&2; exit 1; }
  echo "llm.c: $(git --git-dir="$gitdir" log -1 --format='%h %cs')" >"$work/llmc/SOURCE"
  f=$work/llmc/train_gpt2.c
  patch_once "$f" 's|gpt2_build_from_checkpoint\(&model, "gpt2_124M.bin"\)|gpt2_build_from_checkpoint(\&model, getenv("MN_LLMC_CKPT"))|' 'gpt2_build_from_checkpoint\(&model, "gpt2_124M.bin"\)'
  patch_once "$f" 's|^(\s*)const char\* train_tokens = .*|\1const char* train_tokens = getenv("MN_LLMC_TRAIN");|' '^\s*const char\* train_tokens = '
  patch_once "$f" 's|^(\s*)const char\* val_tokens = .*|\1const char* val_tokens = getenv("MN_LLMC_VAL");|' '^\s*const char\* val_tokens = '
  patch_once "$f" 's|^(\s*)int B = 4;|\1int B = atoi(getenv("MN_LLMC_B"));|' '^\s*int B = 4;'
  patch_once "$f" 's|^(\s*)int T = 64;|\1int T = atoi(getenv("MN_LLMC_T"));|' '^\s*int T = 64;'
  patch_once "$f" 's|step <= 40; step\+\+|step < atoi(getenv("MN_LLMC_STEPS")); step++|' 'step <= 40; step\+\+'
  patch_once "$f" 's|if \(step % 10 == 0\) \{|if (0) { // no val loss in the timed run|' 'if \(step % 10 == 0\) \{'
  patch_once "$f" 's|if \(step > 0 && step % 20 == 0\) \{|if (0) { // no sampling in the timed run|' 'if \(step > 0 && step % 20 == 0\) \{'
  # llm.c's Makefile flags for its CPU build
  (cd "$work/llmc" && gcc -Ofast -march=native -fopenmp -DOMP -Wno-unused-result train_gpt2.c -lm -o train_gpt2) \
    >"$work/llmc/build.log" 2>&1 || { tail -n 20 "$work/llmc/build.log"; exit 1; }
  deno run -A bench/llmc_checkpoint.ts "$work/llmc/model.bin" --maxT 64 --V 50257 --Vp 50304 \
    --L 4 --NH 2 --C 128 || exit 1
fi
run_llmc() {
  MN_LLMC_CKPT=$work/llmc/model.bin MN_LLMC_TRAIN="$PWD/data/brown/brown_train_*.bin" \
    MN_LLMC_VAL="$PWD/data/brown/brown_val_*.bin" MN_LLMC_B=8 MN_LLMC_T=64 \
    MN_LLMC_STEPS=$llmc_steps "$work/llmc/train_gpt2" >"$work/llmc.$1.log" 2>&1 ||
    { tail -n 20 "$work/llmc.$1.log"; exit 1; }
  # per-step lines "step N: train loss L (took X ms)"; steps 0 and 1 are warm-up
  awk '/^step [0-9]+: train loss/ { n = $2 + 0; t = $7; sub(/^\(/, "", t)
    if (n >= 2) printf "%.4f\n", t / 1000 }' "$work/llmc.$1.log" >>"$work/llmc.steps"
}

: >"$work/ours.steps"
: >"$work/llmc.steps"
for ((r = 1; r <= rounds; r++)); do
  run_ours "$r"
  [[ -n $llmc ]] && run_llmc "$r"
  echo "round $r/$rounds done" >&2
done
threads=${OMP_NUM_THREADS:-$(nproc)}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads $threads; $(date -u +%F)"
echo "ours (train_gpt2.ts --backend cpu, L4 C128 NH2, B8 T64, V50304): $(stats "$work/ours.steps")"
ours_med=$(median "$work/ours.steps")
if [[ -n $llmc ]]; then
  echo "llm.c train_gpt2.c ($(cut -d' ' -f2- "$work/llmc/SOURCE"), same shape):  $(stats "$work/llmc.steps")"
  ref=$(median "$work/llmc.steps")
  echo "ratio of medians, ours / llm.c (measured here): $(awk "BEGIN { printf \"%.3f\", $ours_med / $ref }")"
fi
echo "ratio to llm.c's $REF_S s/step (issue #19, another 2-core machine): $(awk "BEGIN { printf \"%.3f\", $ours_med / $REF_S }")"
echo "logs: $work"
