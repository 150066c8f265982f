#!/usr/bin/env bash
# Essential sparsity (Jaiswal, Liu, Chen & Wang 2023, arXiv:2306.03805): prune a trained
# dense network one-shot by magnitude at 15 densities from 90 % to 1 %, globally and per
# layer, without retraining; find the knee ("sharp dropping point") of accuracy vs
# sparsity; then the same networks after a short retraining under their fixed masks.
#
# 1. LeNet-300-100 on MNIST: Frankle & Carbin's optimiser (recipe lenet300-dense: Adam
#    1.2e-3, batch 60, 5,000 validation images) for 10,000 steps instead of 50,000,
#    3 seeds (0, 1, 2) trained together; retraining 500 steps at the same learning rate.
# 2. The MNIST-1D MLP (40-500-500-10, residual second layer) with the MNIST-1D
#    notebook's optimiser (Adam 2e-2, batch 100 in fixed order, 1,500 steps), 3 seeds;
#    retraining 300 steps at 2e-3 (a tenth of the training rate).
# Knee: the "drop" rule (the last density within 1 point of the dense test accuracy,
# walking from dense), with the Kneedle knee beside it in results.json.
# Usage: bash experiments/essential_sparsity.sh [out dir] [path/to/mnist.npz]
set -euo pipefail
OUT=${1:-experiments/results/essential_sparsity}
NPZ=${2:-../shared/data/mnist.npz}
DENSITIES=(0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.15 0.1 0.07 0.05 0.03 0.02 0.01)
lotto train --model mnist1d_mlp --dataset mnist1d --steps 1500 --batch-size 100 \
  --optimizer adam --lr 2e-2 --no-shuffle --eval-every 100 --replicates 3 \
  --out "$OUT/mnist1d_dense"
lotto oneshot --run "$OUT/mnist1d_dense" --densities "${DENSITIES[@]}" \
  --scopes global layerwise --retrain-steps 300 --retrain-lr 2e-3 --out "$OUT/mnist1d_oneshot"
lotto train --recipe lenet300-dense --dataset "npz:$NPZ" --steps 10000 --eval-every 1000 \
  --replicates 3 --out "$OUT/lenet300_dense"
lotto oneshot --run "$OUT/lenet300_dense" --densities "${DENSITIES[@]}" \
  --scopes global layerwise --retrain-steps 500 --out "$OUT/lenet300_oneshot"
