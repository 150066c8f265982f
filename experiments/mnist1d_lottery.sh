#!/usr/bin/env bash
# The MNIST-1D lottery curve (Greydanus 2020, the repository's lottery-ticket notebook):
# MLP 40-500-500-10 with a residual second layer, PyTorch-default init, Adam 2e-2,
# batch 100 in fixed order, 1500 steps per round, test accuracy every 100 steps (the
# maximum is reported), magnitude pruning of 20 % of each layer's survivors per round,
# biases pruned too, rewind to init; random-mask and reinit controls at every round.
# 21 rounds reach 0.8^21 = 0.9 % of the weights.
# Usage: bash experiments/mnist1d_lottery.sh [out dir] [rounds]
set -euo pipefail
OUT=${1:-experiments/results/mnist1d_lottery}
ROUNDS=${2:-21}
lotto imp --model mnist1d_mlp --dataset mnist1d \
  --steps 1500 --batch-size 100 --optimizer adam --lr 2e-2 --no-shuffle --eval-every 100 \
  --prune-biases --fraction 0.2 --output-fraction None --scope layerwise --rewind init \
  --rounds "$ROUNDS" --controls random reinit --out "$OUT"
lotto report "$OUT"
