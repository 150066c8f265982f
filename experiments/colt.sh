#!/usr/bin/env bash
# COLT vs IMP on LeNet-300-100 / MNIST (Hossain et al. 2022, arXiv:2212.12770).
# Both: Adam 1.2e-3, batch 60, 3,000 steps per network, 5,000 training images held out
# for validation, rewind to θ0, global magnitude pruning of 15 % of the surviving kernel
# weights per round (output layer pooled with the others), seed 0 (replicates: seeds
# 0..S-1 and data orders 0..S-1, trained together in one vmapped step).
# COLT: classes 0-4 / 5-9 (labels remapped, as the reference code), one network per
# range per round, the next mask is the intersection of their pruned masks; each
# round's ticket is trained on all 10 classes (its accuracy is the one reported).
# IMP: the same settings, one network per round.
# Ablation: COLT with --labels keep (each class range trains its own output units).
# Control: IMP at 25 % per round (about COLT's density per round) for the same rounds.
# Usage: bash experiments/colt.sh [path/to/mnist.npz] [out dir] [colt rounds] [imp rounds] [steps] [replicates]
# (results/colt: replicates 3, i.e. `... results/colt 12 22 3000 3`, for colt, imp and
#  imp_f25; colt_keep there is the earlier replicates-1 run, seed 0.)
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/colt}
COLT_ROUNDS=${3:-12}
IMP_ROUNDS=${4:-22}
STEPS=${5:-3000}
REPS=${6:-1}
# (recipes colt-lenet300 and colt-imp-lenet300: lotto recipes)
COMMON=(--dataset "npz:$NPZ" --steps "$STEPS" --replicates "$REPS")
lotto colt --recipe colt-lenet300 "${COMMON[@]}" --rounds "$COLT_ROUNDS" --out "$OUT/colt"
lotto imp --recipe colt-imp-lenet300 "${COMMON[@]}" --rounds "$IMP_ROUNDS" --out "$OUT/imp"
# ablation: each range keeps its labels (its own output units of the shared head)
lotto colt --recipe colt-lenet300 "${COMMON[@]}" --rounds "$COLT_ROUNDS" --labels keep \
  --out "$OUT/colt_keep"
# control: IMP removing 25 % per round, about COLT's effective rate (0.75^12 = 3.2 %)
lotto imp --recipe colt-imp-lenet300 "${COMMON[@]}" --fraction 0.25 --rounds "$COLT_ROUNDS" \
  --out "$OUT/imp_f25"
lotto report "$OUT/colt"
lotto report "$OUT/imp"
python experiments/colt_table.py "$OUT"
