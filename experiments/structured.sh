#!/usr/bin/env bash
# Structured tickets ([4/6]): what IMP finds when a round removes weights, whole neurons
# or whole residual blocks, and layer tickets at initialisation (Jordão et al.'s "When
# Layers Play the Lottery, all Tickets Win at Initialization").
#
# 1. ResMLP (8 pre-norm residual blocks, width 128, hidden 128; 273k parameters) on
#    MNIST-1D: Adam 2e-3, batch 100, 1,500 steps per round, 3 seeds trained together.
#    weight / neuron: 8 rounds of 20 % of each layer's survivors (layerwise: a global
#    ranking empties the blocks' fc2); layer: 4 rounds of 25 % of the remaining blocks.
# 2. Layer tickets at initialisation on the same ResMLP: SNIP, SynFlow and random block
#    scores summed per block, keeping 4 or 2 of the 8 blocks, trained once (3 seeds).
# 3. LeNet-300-100 on MNIST (Frankle & Carbin's optimiser, 5,000 steps per round
#    instead of 50,000): weight vs neuron IMP, 10 rounds of 20 %, 3 seeds.
# Then experiments/structured_speed.py times every round's compacted ticket (batch 256
# and 1) and draws accuracy vs parameters and vs inference time.
# Usage: bash experiments/structured.sh [out dir] [path/to/mnist.npz]
set -euo pipefail
OUT=${1:-experiments/results/structured}
NPZ=${2:-../shared/data/mnist.npz}
# (recipes resmlp-imp, resmlp-pai and lenet300-5k-imp: lotto recipes)
lotto imp --recipe resmlp-imp --structure weight --out "$OUT/resmlp_weight"
lotto imp --recipe resmlp-imp --structure neuron --out "$OUT/resmlp_neuron"
lotto imp --recipe resmlp-imp --structure layer --rounds 4 --fraction 0.25 \
  --out "$OUT/resmlp_layer"
for density in 0.5 0.25; do
  for method in snip synflow random; do
    lotto pai --recipe resmlp-pai --method "$method" --density "$density" \
      --out "$OUT/resmlp_pai_layer/${method}_d${density}"
  done
done
for structure in weight neuron; do
  lotto imp --recipe lenet300-5k-imp --dataset "npz:$NPZ" --structure "$structure" \
    --out "$OUT/lenet300_$structure"
done
lotto report "$OUT"
