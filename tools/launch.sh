#!/usr/bin/env bash
# The launcher behind run_rwkv7.sh (and its siblings): tools/launch.sh SCRIPT [launcher flags] [trainer flags]
#
# With GPUs: trains SCRIPT's record config on FineWeb (data/fineweb10B; --download fetches val + the
#   18 train shards the run reads, 27 for RWKV-6), one process per GPU. Without a GPU: says so and
#   runs SCRIPT on the cpu backend with $MN_CPU_DEMO_ARGS (the wrapper's small config) on the Brown
#   corpus (built on first use), so the whole pipeline can be seen working.
# Launcher flags (torchrun's names):
#   --nproc_per_node N   processes on this machine (default: every visible GPU; 1 without GPUs)
#   --nnodes N --node_rank R --master_addr HOST --master_port PORT   multi-node (all nodes run this)
#   --download           fetch FineWeb shards when missing     --dry_run   print the commands only
# Every other flag goes to the trainer; a flag given here overrides the demo config's value.
# If any rank exits non-zero the others are stopped and the launcher exits non-zero, naming the
# rank and showing its last lines; Ctrl-C stops every rank.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/bootstrap.sh
script=${1:?usage: tools/launch.sh SCRIPT [flags]}
shift
[[ -f $script ]] || { echo "error: $script: no such trainer script" >&2; exit 2; }

nproc=""
nnodes=1
node_rank=0
master_addr=${MASTER_ADDR:-127.0.0.1}
master_port=${MASTER_PORT:-29500}
download=0
dry=0
args=()
need() { [[ $# -ge 2 && -n $2 ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while (($#)); do
  case $1 in
    --nproc_per_node | --nnodes | --node_rank | --master_addr | --master_port)
      need "$@"; v=$2; flag=${1#--}; shift 2 ;;
    --nproc_per_node=* | --nnodes=* | --node_rank=* | --master_addr=* | --master_port=*)
      v=${1#*=}; flag=${1%%=*}; flag=${flag#--}; shift ;;
    --download) download=1; shift; continue ;;
    --dry_run) dry=1; shift; continue ;;
    *) args+=("$1"); shift; continue ;;
  esac
  case $flag in
    nproc_per_node) nproc=$v ;;
    nnodes) nnodes=$v ;;
    node_rank) node_rank=$v ;;
    master_addr) master_addr=$v ;;
    master_port) master_port=$v ;;
  esac
done
for n in "${nproc:-1}" "$nnodes" "$node_rank" "$master_port"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "error: launcher flags take non-negative integers, got '$n'" >&2; exit 2; }
done
((node_rank < nnodes)) || { echo "error: --node_rank $node_rank must be below --nnodes $nnodes" >&2; exit 2; }

ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
# CUDA_VISIBLE_DEVICES hides GPUs from the CUDA runtime (which the trainers use) but not from
# nvidia-smi: count its entries, or every LOCAL_RANK past them would ask for a missing device.
if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]] && ((ngpu > 0)); then
  visible=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c '[^[:space:]]' || true)
  ngpu=$((visible < ngpu ? visible : ngpu))
fi
if [[ -z $nproc ]]; then nproc=$((ngpu > 0 ? ngpu : 1)); fi
((nproc >= 1)) || { echo "error: --nproc_per_node must be at least 1" >&2; exit 2; }
if ((ngpu > 0 && nproc > ngpu)); then
  echo "error: --nproc_per_node $nproc but only $ngpu GPU(s) visible" >&2
  exit 2
fi

if ((!dry)); then
  mn_ensure_debs g++:g++ make:make /usr/include/x86_64-linux-gnu/cblas.h:libopenblas-dev
  mn_ensure_deno
fi

if ((ngpu > 0)); then
  backend=cuda
  defaults=()
  # 100M tokens per shard; the record configs read bsz 512 x 1024 tokens a step: 3200-3242 steps
  # (RWKV-7, GPT-2) need 18 train shards, RWKV-6's 5100 steps 27 (the original README fetches 18).
  shards=18
  [[ $script == *rwkv6* ]] && shards=27
  have=$(compgen -G "data/fineweb10B/fineweb_train_*.bin" | wc -l || true)
  if ((!dry)) && { ! compgen -G "data/fineweb10B/fineweb_val_*.bin" >/dev/null || ((have < shards)); }; then
    if ((download)); then
      deno run -A data/cached_fineweb10B.ts "$shards"
    elif ((have == 0)); then
      echo "error: no FineWeb shards in data/fineweb10B/: fetch them by adding --download (or: deno run -A data/cached_fineweb10B.ts $shards)" >&2
      exit 2
    else
      echo "warning: data/fineweb10B/ has $have of the $shards train shards the record run reads: the data will repeat (add --download to fetch the rest)" >&2
    fi
  fi
else
  backend=cpu
  echo "no GPU visible: running the small CPU demo on the Brown corpus (see README 'Without a GPU'); the record config needs a GPU" >&2
  ((dry)) || deno run -A data/brown.ts >&2
  set -f # the demo args hold globs for the trainer, not for the shell
  # shellcheck disable=SC2206
  defaults=(${MN_CPU_DEMO_ARGS:-})
  set +f
  # The demo's --device_bsz is for one process; with several, each takes its share of the same
  # global --bsz (unless the command line sets the batch itself).
  world=$((nnodes * nproc))
  own_batch=0
  for a in "${args[@]}"; do [[ $a == --bsz || $a == --bsz=* || $a == --device_bsz* ]] && own_batch=1; done
  if ((world > 1 && !own_batch)); then
    for i in "${!defaults[@]}"; do
      [[ ${defaults[$i]} == --bsz ]] && demo_bsz=${defaults[$((i + 1))]}
    done
    for i in "${!defaults[@]}"; do
      if [[ ${defaults[$i]} == --device_bsz && -n ${demo_bsz:-} ]]; then
        if ((demo_bsz % world)); then
          echo "error: the CPU demo's --bsz $demo_bsz does not split over $world processes: choose a process count that divides it, or pass --bsz and --device_bsz" >&2
          exit 2
        fi
        if ((defaults[i + 1] * world > demo_bsz)); then
          defaults[i + 1]=$((demo_bsz / world))
          echo "CPU demo over $world processes: --device_bsz ${defaults[$((i + 1))]} each (global --bsz $demo_bsz unchanged)" >&2
        fi
      fi
    done
  fi
fi

if ((!dry)); then
  echo "building the $backend kernel library (make -C cuda $backend)" >&2
  make -C cuda -j"$(nproc)" "$backend" >/tmp/mn-build.$$.log 2>&1 || { tail -n 30 /tmp/mn-build.$$.log; exit 1; }
  rm -f /tmp/mn-build.$$.log
fi

cmd=(deno run -A "$script" --backend "$backend" "${defaults[@]}" "${args[@]}")
world=$((nnodes * nproc))
if ((dry)); then
  for ((r = 0; r < nproc; r++)); do
    echo "RANK=$((node_rank * nproc + r)) LOCAL_RANK=$r WORLD_SIZE=$world MASTER_ADDR=$master_addr MASTER_PORT=$master_port $(printf '%q ' "${cmd[@]}")"
  done
  exit 0
fi
export MASTER_ADDR=$master_addr MASTER_PORT=$master_port WORLD_SIZE=$world
if ((world == 1)); then
  export RANK=0 LOCAL_RANK=0
  exec "${cmd[@]}"
fi

# Several ranks: rank outputs go to logs/launch-<time>/rankN.log (this node's first rank also to
# the terminal); the first rank to fail stops the others.
logdir=logs/launch-$(date +%Y%m%d-%H%M%S)-node$node_rank
mkdir -p "$logdir"
pids=()
ranks=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 3
  # a rank stuck inside a collective does not answer SIGTERM: escalate
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap 'echo "interrupted: stopping all ranks" >&2; stop_all; exit 130' INT TERM
for ((r = 0; r < nproc; r++)); do
  rank=$((node_rank * nproc + r))
  if ((r == 0)); then
    RANK=$rank LOCAL_RANK=$r "${cmd[@]}" > >(tee "$logdir/rank$rank.log") 2>&1 &
  else
    RANK=$rank LOCAL_RANK=$r "${cmd[@]}" > "$logdir/rank$rank.log" 2>&1 &
  fi
  pids+=($!)
  ranks+=("$rank")
done
echo "started ranks ${ranks[*]} of $world (logs in $logdir)" >&2
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  set +e
  wait -n -p done_pid "${live[@]}"
  rc=$?
  set -e
  # wait only on ranks still running (bash says "no such job" for one already reaped)
  still=()
  for p in "${live[@]}"; do [[ $p == "$done_pid" ]] || still+=("$p"); done
  live=("${still[@]}")
  if ((rc != 0)); then
    for i in "${!pids[@]}"; do [[ ${pids[$i]} == "$done_pid" ]] && failed=${ranks[$i]}; done
    echo "error: rank ${failed:-?} exited with code $rc; stopping the other ranks. Its last lines ($logdir/rank${failed:-?}.log):" >&2
    tail -n 15 "$logdir/rank${failed:-?}.log" >&2 || true
    stop_all
    exit "$rc"
  fi
done
