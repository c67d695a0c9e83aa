#!/usr/bin/env bash
# ./run.sh [flags]: train_gpt2.ts (the 11/08/24 GPT-2 speedrun record) on every visible GPU
# (launcher flags and behaviour: tools/launch.sh). Without a GPU, this small CPU demo runs instead:
# a 4-layer, 128-wide GPT (2 heads of 64) on 8 x 64-token windows per step of the Brown corpus,
# 200 steps, a few minutes on 2 cores (the 50304-way lm_head and cross-entropy are most of the time).
export MN_CPU_DEMO_ARGS="--input_bin data/brown/brown_train_*.bin --input_val_bin data/brown/brown_val_*.bin
  --n_layer 4 --n_embd 128 --n_head 2 --sequence_length 64 --device_bsz 8 --bsz 8
  --num_iterations 200 --warmdown_iters 60 --val_loss_every 50 --val_tokens 16384 --random_seed 1337"
exec "$(dirname "$0")/tools/launch.sh" train_gpt2.ts "$@"
