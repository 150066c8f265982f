#!/usr/bin/env bash
# Frankle & Carbin 2019, LeNet-300-100 on MNIST (recipe lth-lenet300): Adam 1.2e-3,
# batch 60, Glorot normal init, 5,000 training images held out for validation, per-layer
# magnitude pruning of 20 % of the hidden layers' and 10 % of the output layer's
# survivors per round, rewind to init, and the random-reinitialisation control. The
# paper trains 50,000 iterations; the recipe trains 20,000 per round (a documented
# shorter budget: every early-stop iteration in the paper's LeNet figures is below
# 20,000 and ours lie below 5,000).
# Usage: bash experiments/lenet300_imp.sh [path/to/mnist.npz] [out dir] [rounds] [steps]
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/lenet300_imp}
ROUNDS=${3:-15}
STEPS=${4:-20000}
lotto imp --recipe lth-lenet300 --dataset "npz:$NPZ" --rounds "$ROUNDS" --steps "$STEPS" \
  --out "$OUT"
lotto report "$OUT"
