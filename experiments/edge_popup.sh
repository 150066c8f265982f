#!/usr/bin/env bash
# Strong tickets by edge-popup (Ramanujan et al. 2020) on frozen random weights:
# LeNet-300-100 on MNIST at k = 0.1, 0.3, 0.5, 0.7 (fraction kept per layer) with each
# weight initialisation (Kaiming normal, signed Kaiming constant, scaled signed constant),
# and the MNIST-1D MLP at the same k with the scaled signed constant.
# Optimiser (the paper's MNIST example): SGD 0.1, momentum 0.9, weight decay 5e-4, cosine,
# batch 128; 3,000 steps (~7 epochs, a shorter budget than the paper's 100 epochs):
# recipes edge-popup-lenet300 and edge-popup-mnist1d.
# Usage: bash experiments/edge_popup.sh [path/to/mnist.npz] [out dir]
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/edge_popup}
for init in scaled-signed-constant signed-constant kaiming-normal; do
  for keep in 0.1 0.3 0.5 0.7; do
    lotto supermask --recipe edge-popup-lenet300 --keep "$keep" --weight-init "$init" \
      --dataset "npz:$NPZ" --out "$OUT/lenet300_${init}_k${keep}"
  done
done
for keep in 0.1 0.3 0.5 0.7; do
  lotto supermask --recipe edge-popup-mnist1d --keep "$keep" --out "$OUT/mnist1d_k${keep}"
done
lotto report "$OUT"
