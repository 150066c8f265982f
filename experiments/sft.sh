#!/usr/bin/env bash
# Sparse fine-tuning (LT-SFT, Ansell et al. 2022, arXiv:2110.07560) and skill
# localisation by grafting (Panigrahi et al. 2023, arXiv:2302.06600) on
# LeNet-300-100 / MNIST: pretrain on digits 0-4, fine-tune on digits 5-9 with the
# shared 10-way head.
# Pretraining: Adam 1.2e-3, batch 60, 1,000 steps, 5,000 training images held out for
# validation. Each fine-tuning (full, LT-SFT, random-K; a fresh optimiser each):
# 500 steps at the same rate (about one epoch of task B).
# K = 0.1 %, 0.5 %, 1 %, 5 % of all 266,610 weights (biases included, as the
# reference's maskable parameters). Composition: task B's halves (5-7, 8-9)
# fine-tuned separately, θ0 + φ_B1 + φ_B2. Grafting on task B: base patches of
# 0.01 % and 0.1 %, 30 score steps of 1,000 examples at lr 3e5, 1e6, 3e6 and 1e7
# (the reference's), region chosen by validation accuracy.
# Seeds: init seed = data seed = s for s in SEEDS (default "0 1 2").
# Usage: bash experiments/sft.sh [path/to/mnist.npz] [out dir] ["seeds"]
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/sft}
SEEDS=${3:-0 1 2}
for s in $SEEDS; do
  lotto sft --model lenet300 --dataset "npz:$NPZ" --validation 5000 --seed "$s" \
    --data-seed "$s" --steps 1000 --finetune-steps 500 --batch-size 60 --optimizer adam \
    --lr 1.2e-3 --eval-every 250 --k 0.001 0.005 0.01 0.05 \
    --graft-fractions 0.0001 0.001 --graft-lrs 3e5 1e6 3e6 1e7 --graft-steps 30 \
    --graft-batch 1000 --out "$OUT/seed$s"
done
python experiments/sft_summary.py "$OUT"
