#!/usr/bin/env bash
# Pruning at initialisation compared (Synaptic-Flow / Frankle et al. 2021 style):
# random, magnitude, SNIP, GraSP and SynFlow (100 rounds) at densities 10, 3.2, 1, 0.32
# and 0.1 %, one global threshold, then train the sparse network. The PaI methods also
# train their sanity checks: layerwise shuffle, reinitialisation and score inversion
# (LeNet: shuffle and reinitialisation).
# Usage: bash experiments/pai_compare.sh lenet300|mnist1d [out dir] [path/to/mnist.npz]
set -euo pipefail
SETTING=${1:-lenet300}
OUT=${2:-experiments/results/pai_$SETTING}
NPZ=${3:-../shared/data/mnist.npz}
case "$SETTING" in
  lenet300)  # recipe pai-lenet300: Frankle & Carbin's LeNet-300-100 optimiser; a shorter
             # budget (3,000 steps, 3.3 epochs) and two of the three sanity checks
    ARGS=(--recipe pai-lenet300 --dataset "npz:$NPZ")
    CONTROLS=(shuffle reinit) ;;
  mnist1d)   # recipe pai-mnist1d: the MNIST-1D notebook's MLP and optimiser
    ARGS=(--recipe pai-mnist1d)
    CONTROLS=(shuffle reinit invert) ;;
  *) echo "unknown setting $SETTING (lenet300 or mnist1d)" >&2; exit 2 ;;
esac
for density in 0.1 0.032 0.01 0.0032 0.001; do
  for method in random magnitude snip grasp synflow; do
    controls=(--controls)  # none for random and magnitude
    case "$method" in snip|grasp|synflow) controls=(--controls "${CONTROLS[@]}") ;; esac
    lotto pai "${ARGS[@]}" --method "$method" --density "$density" --scope global \
      "${controls[@]}" --out "$OUT/${method}_d${density}"
  done
done
lotto report "$OUT"
