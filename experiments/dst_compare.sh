#!/usr/bin/env bash
# Sparse training during training compared (issue 12): a fixed random mask (static),
# SET, RigL, GMP and GraNet at densities 10, 5, 2 and 1 %, ERK layer densities, mask
# updates every 100 steps, 3 seeds (replicates) per run, the same step budget for
# every method; SynFlow pruning at initialisation (100 rounds, global) at the same
# densities and budget beside them. IMP tickets come from lenet300_imp / mnist1d_lottery.
# Usage: bash experiments/dst_compare.sh lenet300|mnist1d [out dir] [path/to/mnist.npz]
set -euo pipefail
SETTING=${1:-lenet300}
OUT=${2:-experiments/results/dst_$SETTING}
NPZ=${3:-../shared/data/mnist.npz}
case "$SETTING" in
  lenet300)  # recipe dst-lenet300: Frankle & Carbin's optimiser, 6,000 steps
    ARGS=(--recipe dst-lenet300 --dataset "npz:$NPZ")
    PAI=(--recipe pai-lenet300 --dataset "npz:$NPZ" --steps 6000 --eval-every 500) ;;
  mnist1d)   # recipe dst-mnist1d: the MNIST-1D notebook's MLP and optimiser
    ARGS=(--recipe dst-mnist1d)
    PAI=(--recipe pai-mnist1d) ;;
  *) echo "unknown setting $SETTING (lenet300 or mnist1d)" >&2; exit 2 ;;
esac
for density in 0.1 0.05 0.02 0.01; do
  for method in static set rigl gmp granet; do
    extra=()
    [ "$method" = granet ] && extra=(--initial-density 0.5)  # GraNet's sparse start
    lotto dst "${ARGS[@]}" --method "$method" --density "$density" "${extra[@]}" \
      --out "$OUT/${method}_d${density}"
  done
  lotto pai "${PAI[@]}" --method synflow --density "$density" --scope global \
    --controls --replicates 3 --out "$OUT/synflow_d${density}"
done
lotto report "$OUT" || true  # the figures and tables (kept going if a kind is unknown)
