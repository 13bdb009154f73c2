#!/usr/bin/env bash
# 15-epoch Fashion-MNIST FC1 l-inf 0.1 re-runs of the two best bilaw_meta settings (Table 1 schedule).
cd "$(dirname "$0")/../../../.."  # the repository root
BASE=docs/results/runs/meta_rerun/legacy_adam_1e-3/seed0/config.yaml
run() { # label seed overrides...
  local label=$1 seed=$2; shift 2
  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m bilaw.train --config $BASE --set seed=$seed --set plots=false "$@" \
     --out results/meta_rerun/$label/seed$seed --no-progress > results/meta_rerun/$label.seed$seed.log 2>&1
}
S=${1:-0}
run sgd_raw_0.025 $S --set meta_optimizer=sgd --set meta_lr=0.0249732861040606 --set meta_weight_decay=1e-05 --set meta_grad_scale=raw &
run adamw_raw_1.2e-4 $S --set meta_optimizer=adamw --set meta_lr=0.00012110667473884367 --set meta_weight_decay=0.0001 --set meta_grad_scale=raw &
wait
