#!/usr/bin/env bash
# Linear mode connectivity of the MNIST-1D MLP (lotto stability; Frankle, Dziugaite, Roy &
# Carbin 2020): two copies of a network start from θk under a ticket's mask and train to
# the end with different data orders; the test (train) error barrier along the straight
# line between them measures their instability.
#
# 1. k = 0, the dense network (round 0) and the IMP ticket of round 10 (10.7 % of the
#    weights) of the mnist1d_lottery pooled run (replicate 0, seed 0; run
#    experiments/mnist1d_lottery.sh first: it stores θ0 and the masks).
# 2. k = 100 and k = 500 for the dense network: an IMP run of round 0 only with
#    --rewind step:K stores θK (the same θ0 and data order as replicate 0 above).
# The recipe reads the data in a fixed order; the copies reshuffle every epoch
# (lotto stability always does: else they would be identical).
# 3. Mask overlap of the three groupings' round-10 tickets (lotto compare).
# 4. An early-bird ticket at the density of IMP's round 10 (lotto earlybird, the
#    recipe's optimiser and fixed data order, kernels only, global magnitude masks at
#    every 100 steps, ε = 0.1), beside the kernels-only IMP run's round 10.
# 5. The same early-bird draw with WORM (--worm: masked-out gradients x 0.003 once the
#    FIFO's mean distance < 0.15), and with neuron masks (25 % of the units, layerwise).
# Usage: bash experiments/stability.sh [out dir]
set -euo pipefail
OUT=${1:-experiments/results}
LOTTERY=$OUT/mnist1d_lottery
lotto stability --run "$LOTTERY/pooled" --rewind-steps 0 --rounds 0 10 \
  --out "$OUT/stability_mnist1d"
for k in 100 500; do
  lotto imp --recipe mnist1d-lottery --replicates 1 --rounds 0 --rewind "step:$k" \
    --out "$OUT/stability_mnist1d_rewind/imp_k$k"
  lotto stability --run "$OUT/stability_mnist1d_rewind/imp_k$k" --rewind-steps 0 "$k" \
    --out "$OUT/stability_mnist1d_rewind/stability_k$k"
done
lotto compare "$LOTTERY/pooled@10" "$LOTTERY/per_leaf@10" "$LOTTERY/kernels_only@10" \
  --out "$OUT/compare_mnist1d"
lotto compare "$LOTTERY/pooled@10#0" "$LOTTERY/pooled@10#1" "$LOTTERY/pooled@10#2" \
  --out "$OUT/compare_mnist1d_seeds"     # the tickets of the three seeds
lotto earlybird --steps 1500 --batch-size 100 --optimizer adam --lr 2e-2 --no-shuffle \
  --eval-every 100 --density 0.107 --epsilon 0.1 --imp "$LOTTERY/kernels_only" \
  --out "$OUT/earlybird_mnist1d"
EB=(--steps 1500 --batch-size 100 --optimizer adam --lr 2e-2 --no-shuffle --eval-every 100
    --epsilon 0.1)
lotto earlybird "${EB[@]}" --density 0.107 --worm --out "$OUT/earlybird_mnist1d_worm"
lotto earlybird "${EB[@]}" --density 0.25 --structure neuron --scope layerwise \
  --out "$OUT/earlybird_mnist1d_neuron"
lotto earlybird "${EB[@]}" --density 0.25 --structure neuron --scope layerwise --worm \
  --out "$OUT/earlybird_mnist1d_neuron_worm"
