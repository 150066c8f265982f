#!/usr/bin/env bash
# Supermask variants (issue 15).
# (a) Lottery Jackpots (Zhang et al. 2021, arXiv:2104.08700) on LeNet-300-100 / MNIST:
#     the pretrained network is a dense LeNet trained 5,000 steps (Adam 1.2e-3, batch 60,
#     5,000 validation images: recipe lenet300-dense, shortened); the jackpot search keeps
#     0.5, 0.2, 0.1, 0.05 of the hidden layers' weights (one global |w| threshold, the
#     classifier dense), scores 1 / 0.99, the short restriction after every score step,
#     2,000 steps of SGD 0.1 momentum 0.9 cosine wd 5e-4 batch 128 (the driver's default).
#     One-shot magnitude pruning without search: the same command with a score learning
#     rate of 1e-30 (the CLI refuses 0; 1e-30 moves no float32 score of 1 or 0.99).
#     IMP at equal density: experiments/results/structured/lenet300_weight (committed
#     metrics.json; rounds 3, 7, 10 = 51.3 %, 21.1 %, 10.8 %), not rerun here.
# (b) Signed supermask (Koster et al. 2022, arXiv:2201.13361; our three-level rule: top-k
#     |s| per layer, sign(s) on the kept) vs edge-popup on the MNIST-1D MLP at k = 0.5,
#     0.3, 0.1 (fraction kept per layer), scaled signed constant weights, 3 replicates
#     (seeds 0, 1, 2), recipe edge-popup-mnist1d (3,000 steps).
#     Seeds (SEEDS, default "0 1 2"): seed S pretrains its own dense LeNet (init seed S,
#     data seed S: its data order and validation split) and searches in it with data
#     seed S; seed 0 at the top of the out dir, seed S in seedS/. One network per
#     command: the jackpot search takes one pretrained network (--replicates would
#     search the same weights with other data orders).
# Usage: [SEEDS="0 1 2"] [PARTS="a b"] bash experiments/supermask_variants.sh [path/to/mnist.npz] [out dir]
set -euo pipefail
NPZ=${1:-../shared/data/mnist.npz}
OUT=${2:-experiments/results/supermask_variants}
SEEDS=${SEEDS:-0 1 2}
PARTS=${PARTS:-a b}
for seed in $SEEDS; do
  [[ " $PARTS " == *" a "* ]] || break
  d="$OUT/seed$seed"
  [ "$seed" = 0 ] && d="$OUT"
  S=(--seed "$seed" --data-seed "$seed")
  lotto train --recipe lenet300-dense --dataset "npz:$NPZ" --steps 5000 --eval-every 500 \
    "${S[@]}" --out "$d/pretrained"
  PRE="$d/pretrained/train/final"
  for keep in 0.5 0.2 0.1 0.05; do
    lotto supermask --method jackpot --pretrained "$PRE" --keep "$keep" --model lenet300 \
      --dataset "npz:$NPZ" --validation 5000 --steps 2000 --eval-every 250 "${S[@]}" \
      --out "$d/jackpot_k${keep}"
    lotto supermask --method jackpot --pretrained "$PRE" --keep "$keep" --model lenet300 \
      --dataset "npz:$NPZ" --validation 5000 --steps 20 --eval-every 10 --lr 1e-30 \
      "${S[@]}" --out "$d/magnitude_k${keep}"
  done
done
for keep in 0.5 0.3 0.1; do
  [[ " $PARTS " == *" b "* ]] || break
  for method in signed edge-popup; do
    lotto supermask --recipe edge-popup-mnist1d --method "$method" --keep "$keep" \
      --replicates 3 --out "$OUT/mnist1d_${method}_k${keep}"
  done
done
python experiments/supermask_variants_summary.py "$OUT"
