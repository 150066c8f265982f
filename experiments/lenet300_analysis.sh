#!/usr/bin/env bash
# Ticket analysis on LeNet-300-100 / MNIST ([5/6]): linear mode connectivity of the
# dense network and of IMP tickets at k = 0, and how much IMP, pruning at init and
# RigL masks at one density share.
#
# Reads the weight-IMP run of experiments/structured.sh (LeNet-300-100, Frankle &
# Carbin's optimiser, 5,000 steps per round, 20 % of each hidden layer and 10 % of the
# output layer per round, 3 seeds; it stores θ0 and every round's mask).
# 1. lotto stability: two copies from θ0 under the masks of rounds 0 (dense), 5 (32.9 %
#    of the weights) and 10 (10.9 %), data orders 1 and 2, replicate 0.
# 2. At the density of round 10 (10.9 % of the weights): SynFlow, SNIP and random masks
#    at init (lotto pai, global) and RigL (lotto dst, ERK), trained with the same
#    settings and seeds; then lotto compare: the round-10 tickets of the three seeds
#    against each other and against the other methods' masks (replicate 0).
# Usage: bash experiments/lenet300_analysis.sh [results dir] [path/to/mnist.npz]
set -euo pipefail
OUT=${1:-experiments/results}
NPZ=${2:-../shared/data/mnist.npz}
IMP=$OUT/structured/lenet300_weight
A=$OUT/lenet300_analysis
lotto stability --run "$IMP" --rewind-steps 0 --rounds 0 5 10 --out "$A/stability"
for method in synflow snip random; do  # recipe lenet300-5k-pai: lenet300-5k-imp's training
  lotto pai --recipe lenet300-5k-pai --dataset "npz:$NPZ" --method "$method" \
    --out "$A/pai_$method"
done
lotto dst --model lenet300 --dataset "npz:$NPZ" --validation 5000 --steps 5000 \
  --batch-size 60 --optimizer adam --lr 1.2e-3 --eval-every 500 --replicates 3 \
  --method rigl --density 0.109 --distribution erk --update-every 100 --out "$A/dst_rigl"
lotto compare "$IMP@10#0" "$IMP@10#1" "$IMP@10#2" "$A/pai_synflow#0" "$A/pai_snip#0" \
  "$A/pai_random#0" "$A/dst_rigl#0" --out "$A/compare_matrix"
lotto compare "$IMP@10#0" "$A/pai_synflow#0" --out "$A/compare_imp_synflow"
lotto compare "$IMP@10#0" "$A/dst_rigl#0" --out "$A/compare_imp_rigl"
