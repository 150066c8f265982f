#!/usr/bin/env bash
# Dense LeNet-300-100 on MNIST with Frankle & Carbin 2019's settings (recipe
# lenet300-dense: Adam 1.2e-3, batch 60, 50,000 iterations, 5,000 training images held
# out for validation).
# Usage: bash experiments/lenet300_dense.sh [path/to/mnist.npz] [out dir]
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/lenet300_dense}
lotto train --recipe lenet300-dense --dataset "npz:$NPZ" --out "$OUT"
