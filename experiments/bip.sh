#!/usr/bin/env bash
# BiP vs IMP (Zhang et al. 2022, arXiv:2210.04092) on LeNet-300-100 / MNIST and the
# MNIST-1D MLP, keeping 20, 10, 5 and 2 % of the weights (80-98 % sparsity), 3 seeds
# (replicates 0, 1, 2 trained together).
#   lenet300/        lotto bip --recipe bip-lenet300: pretraining = lenet300-5k-imp's
#                    round 0 (5,000 steps), then 5,000 BiP steps per keep
#   lenet300_hydra/  the same with --ig-scale 0: alternating score / weight training
#                    without the implicit-gradient term (the code's accelerate path)
#   lenet300_imp/    IMP at equal density: lotto imp --recipe lenet300-5k-imp extended
#                    to 18 rounds (20 % per layer and round, output 10 %; 1.9 % kept)
#   mnist1d/, mnist1d_hydra/, mnist1d_ig1/   lotto bip --recipe bip-mnist1d (1,500 +
#                    1,500 steps) with the default coefficient 1e-4, 0, and 1 (γ = 1);
#   mnist1d_ig1e4/   and 1e4 (1/γ with γ = the weight decay 1e-4)
#   mnist1d_long/    the same with 6,000 BiP steps (4x)
#   MNIST-1D IMP at equal density: experiments/results/mnist1d_lottery/kernels_only
#                    (committed metrics; experiments/mnist1d_lottery.sh), not rerun.
# Then the table and figure (experiments/bip_summary.py).
# Usage: bash experiments/bip.sh [path/to/mnist.npz] [out dir]
# (recipes bip-lenet300, bip-mnist1d, lenet300-5k-imp: lotto recipes)
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/bip}
lotto imp --recipe lenet300-5k-imp --dataset "npz:$NPZ" --structure weight --rounds 18 \
  --out "$OUT/lenet300_imp"
lotto bip --recipe bip-lenet300 --dataset "npz:$NPZ" --out "$OUT/lenet300"
lotto bip --recipe bip-lenet300 --dataset "npz:$NPZ" --ig-scale 0 --out "$OUT/lenet300_hydra"
lotto bip --recipe bip-mnist1d --out "$OUT/mnist1d"
lotto bip --recipe bip-mnist1d --ig-scale 0 --out "$OUT/mnist1d_hydra"
lotto bip --recipe bip-mnist1d --ig-scale 1 --out "$OUT/mnist1d_ig1"
lotto bip --recipe bip-mnist1d --ig-scale 1e4 --out "$OUT/mnist1d_ig1e4"
lotto bip --recipe bip-mnist1d --bip-steps 6000 --out "$OUT/mnist1d_long"
python experiments/bip_summary.py "$OUT"
