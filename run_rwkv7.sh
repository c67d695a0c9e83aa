#!/usr/bin/env bash
# Launcher for train_rwkv7.ts: ./run_rwkv7.sh [--fast_cuda] [launcher flags] [trainer flags]
#
# With GPUs: trains the record config on FineWeb (data/fineweb10B; --download fetches 8 train shards
#   + val first). Without a GPU: says so and runs a small CPU config on the Brown corpus (built on
#   first use) so the whole pipeline can be seen working in a few minutes.
# Launcher flags: --nproc_per_node N (processes; only 1 until the NCCL path lands), --download,
#   --dry_run (print the command instead of running it). Every other flag goes to the trainer; a
#   flag given here overrides the default config's value.
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh

nproc=""
download=0
dry=0
args=()
while (($#)); do
  case $1 in
    --nproc_per_node) nproc=${2:?--nproc_per_node needs a value}; shift 2 ;;
    --nproc_per_node=*) nproc=${1#*=}; shift ;;
    --nnodes | --node_rank | --master_addr | --master_port | --nnodes=* | --node_rank=* | --master_addr=* | --master_port=*)
      echo "error: $1: multi-node training needs the NCCL path, which has not landed yet" >&2; exit 2 ;;
    --download) download=1; shift ;;
    --dry_run) dry=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
if [[ -n $nproc && $nproc != 1 ]]; then
  echo "error: --nproc_per_node $nproc: multi-process training needs the NCCL path, which has not landed yet (use 1; gradient accumulation gives the same result)" >&2
  exit 2
fi

mn_ensure_debs g++:g++ make:make /usr/include/x86_64-linux-gnu/cblas.h:libopenblas-dev
mn_ensure_deno

if ((ngpu > 0)); then
  backend=cuda
  defaults=()
  ((ngpu > 1)) && echo "note: $ngpu GPUs visible; multi-GPU (NCCL) has not landed yet, so this trains on GPU 0 with gradient accumulation (same loss curve, slower)" >&2
  if ! compgen -G "data/fineweb10B/fineweb_val_*.bin" >/dev/null; then
    if ((download)); then
      deno run -A data/cached_fineweb10B.ts 8
    else
      echo "error: no FineWeb shards in data/fineweb10B/: fetch them with ./run_rwkv7.sh --download (or: deno run -A data/cached_fineweb10B.ts 8)" >&2
      exit 2
    fi
  fi
else
  backend=cpu
  echo "no GPU visible: running the small CPU demo on the Brown corpus (see README 'Without a GPU'); the record config needs a GPU" >&2
  deno run -A data/brown.ts >&2
  # A 4-layer, 128-wide RWKV-7 (headsz 32) on 8 x 64-token windows per step: a few minutes on 2
  # cores (the 50304-way lm_head and cross-entropy are most of the time at this size).
  defaults=(--input_bin 'data/brown/brown_train_*.bin' --input_val_bin 'data/brown/brown_val_*.bin'
    --n_layer 4 --n_embd 128 --headsz 32 --sequence_length 64 --device_bsz 8 --bsz 8
    --num_iterations 200 --warmdown_iters 60 --val_loss_every 50 --val_tokens 16384
    --random_seed 1337)
fi

echo "building the $backend kernel library (make -C cuda $backend)" >&2
make -C cuda -j"$(nproc)" "$backend" >/tmp/mn-build.$$.log 2>&1 || { tail -n 30 /tmp/mn-build.$$.log; exit 1; }
rm -f /tmp/mn-build.$$.log

cmd=(deno run -A train_rwkv7.ts --backend "$backend" "${defaults[@]}" "${args[@]}")
if ((dry)); then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
exec "${cmd[@]}"
