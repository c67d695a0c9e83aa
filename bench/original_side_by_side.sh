#!/usr/bin/env bash
# The PyTorch originals (BlinkDL/modded-nanogpt-rwkv) on the same GPU and data as ours, for a
# side-by-side of step times and first losses. Their sources never enter this repository: `prepare`
# copies them from a git mirror into .gpu-carry/original/ (git-ignored, carried to the GPU machine)
# and turns the hard-coded run settings into environment variables, so that a short run on one GPU
# needs no edit by hand; wandb, which the GPU machine lacks, gets a do-nothing stand-in.
#
#   bench/original_side_by_side.sh prepare MIRROR_GIT_DIR   # here (e.g. the fetch tool's mirror)
#   bench/original_side_by_side.sh run rwkv7|gpt2 STEPS DEVICE_BSZ LOGFILE   # on the GPU machine
#
# `run` trains on data/brown (the Brown shards share the original's shard format) for STEPS steps of
# DEVICE_BSZ x 1024 tokens on one GPU (torchrun, one process), val on 2 batches at the end, no
# checkpoint. RWKV-7 runs with --fast_cuda. The original times steps 11.. (torch.compile warm-up
# excluded), as ours does, so STEPS >= 12 for a step_avg.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dest=.gpu-carry/original

# One substitution that must match exactly once, or the copy is not the script we think it is.
patch_once() { # file, sed expression, pattern that must appear once before
  local n
  n=$(grep -c -E "$3" "$1")
  [[ $n == 1 ]] || { echo "error: $1: expected one line matching '$3', found $n (the original changed?)" >&2; exit 1; }
  sed -i -E "$2" "$1"
}

case ${1:-} in
  prepare)
    mirror=${2:?usage: bench/original_side_by_side.sh prepare MIRROR_GIT_DIR}
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    git --git-dir="$mirror" archive HEAD train_rwkv7.py train_gpt2.py rwkv_cuda rwkv_cuda_wind | tar -x -C "$dest.tmp" ||
      { echo "error: cannot read the sources from $mirror" >&2; exit 1; }
    for f in "$dest.tmp"/train_rwkv7.py "$dest.tmp"/train_gpt2.py; do
      patch_once "$f" 's/^(\s*num_iterations : int = )([0-9]+)/\1int(os.environ.get("MN_ORIG_STEPS", "\2"))/' '^\s*num_iterations : int = [0-9]+'
      patch_once "$f" 's/^(\s*warmdown_iters : int = )([0-9]+)/\1int(os.environ.get("MN_ORIG_WARMDOWN", "\2"))/' '^\s*warmdown_iters : int = [0-9]+'
      patch_once "$f" 's/^(\s*val_loss_every : int = )([0-9]+)/\1int(os.environ.get("MN_ORIG_VAL_EVERY", "\2"))/' '^\s*val_loss_every : int = [0-9]+'
      patch_once "$f" 's/^(\s*val_tokens : int = )([0-9]+)/\1int(os.environ.get("MN_ORIG_VAL_TOKENS", "\2"))/' '^\s*val_tokens : int = [0-9]+'
      patch_once "$f" "s/^(\s*input_bin : str = )('[^']*')/\1os.environ.get('MN_ORIG_TRAIN', \2)/" "^\s*input_bin : str = '"
      patch_once "$f" "s/^(\s*input_val_bin : str = )('[^']*')/\1os.environ.get('MN_ORIG_VAL', \2)/" "^\s*input_val_bin : str = '"
      patch_once "$f" 's/^(\s*if master_process and \()last_step or/\1(last_step and os.environ.get("MN_ORIG_SAVE", "1") == "1") or/' '^\s*if master_process and \(last_step or'
    done
    # GPT-2's batch is hard-coded (RWKV-7 has --device_bsz/--bsz flags)
    patch_once "$dest.tmp/train_gpt2.py" 's/^(\s*batch_size : int = )([0-9*]+)/\1int(os.environ.get("MN_ORIG_BSZ", str(\2)))/' '^\s*batch_size : int = [0-9*]+'
    patch_once "$dest.tmp/train_gpt2.py" 's/^(\s*device_batch_size : int = )([0-9]+)/\1int(os.environ.get("MN_ORIG_DEVICE_BSZ", "\2"))/' '^\s*device_batch_size : int = [0-9]+'
    printf '%s\n' '# do-nothing stand-in for wandb (not installed on the GPU machine)' \
      'def init(*a, **k): pass' 'def log(*a, **k): pass' 'def finish(*a, **k): pass' > "$dest.tmp/wandb.py"
    git --git-dir="$mirror" log -1 --format='%H %cs' > "$dest.tmp/SOURCE_COMMIT"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
    echo "prepared $dest from $mirror ($(cat "$dest/SOURCE_COMMIT"))"
    ;;
  run)
    model=${2:?model}; steps=${3:?steps}; bsz=${4:?device_bsz}; logfile=${5:?logfile}
    [[ -d $dest ]] || { echo "error: $dest missing: run 'bench/original_side_by_side.sh prepare MIRROR' first and carry .gpu-carry" >&2; exit 1; }
    case $model in
      rwkv7) script=train_rwkv7.py; flags=(--fast_cuda --device_bsz "$bsz" --bsz "$bsz" --random_seed 1) ;;
      gpt2) script=train_gpt2.py; flags=() ;;
      *) echo "error: model $model: expected rwkv7 or gpt2" >&2; exit 2 ;;
    esac
    cd "$dest" || exit 1
    # the original must not see our OpenBLAS folder; torch brings its own libraries
    env -u LD_LIBRARY_PATH MN_ORIG_STEPS="$steps" MN_ORIG_WARMDOWN="$steps" MN_ORIG_VAL_EVERY=0 \
      MN_ORIG_VAL_TOKENS=$((2 * bsz * 1024)) MN_ORIG_TRAIN="$root/data/brown/brown_train_*.bin" \
      MN_ORIG_VAL="$root/data/brown/brown_val_*.bin" MN_ORIG_SAVE=0 MN_ORIG_BSZ="$bsz" MN_ORIG_DEVICE_BSZ="$bsz" \
      PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" \
      python3 -m torch.distributed.run --standalone --nproc_per_node=1 "$script" "${flags[@]}" > "$logfile" 2>&1
    ;;
  *)
    echo "usage: bench/original_side_by_side.sh prepare MIRROR_GIT_DIR | run rwkv7|gpt2 STEPS DEVICE_BSZ LOGFILE" >&2
    exit 2
    ;;
esac
