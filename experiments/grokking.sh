#!/usr/bin/env bash
# Grokking tickets (Minegishi, Iwasawa & Matsuo, arXiv:2310.19470): (a + b) mod 67 with
# 40 % of the 2,278 pairs a <= b in train, the paper's OnlyMLP (grok_mlp), AdamW 1e-3
# betas (0.9, 0.98) weight decay 1, full batch, train and test accuracy every 100 steps.
# For each init seed (the split is data seed 0's, as the recipes have it):
#   imp/          lotto imp --recipe grokking: round 0 the dense run (30,000 steps: it
#                 memorises, then groks); round 1 its ticket: the global magnitude mask
#                 of the grokked weights, 40 % kept over all four matrices, rewound to θ0
#   ticket/       that ticket (imp/round_001/mask from θ0) trained for STEPS, the budget
#                 of the runs below (the same computation as round 1, cut at STEPS)
#   pai_METHOD/   masks at init, 40 % kept globally: random, snip, grasp, synflow
#   mem_imp/      round 0 = the dense run's first MEM steps (memorised: train 100 %,
#                 test ~0 %); its round-1 mask is the ticket drawn during memorisation
#   mem_ticket/   that mask rewound to θ0, trained for STEPS
#   ticket_wd0/   the ticket retrained without weight decay (the reference's
#                 config_pruning.py), and dense_wd0/ the dense control, for STEPS
# Then the figure and the steps-to-95 % table (experiments/grokking_summary.py).
# Usage: [SEEDS="0 1 2"] [STEPS=30000] [MEM=1000] [REPS=1] bash experiments/grokking.sh [out dir]
# REPS=S > 1: seeds 0..S-1 as the replicates of one vmapped run per command, all in
# the out dir (SEEDS ignored; every mask and curve carries a replicate axis; lotto
# train --mask trains replicate i under IMP's mask i); ticket/ is left out (IMP round 1
# is the same computation). ONLY="imp" (or "controls") runs one half.
# (results/grokking: seed 0, STEPS=15000 on a shared 2-core CPU, single runs;
#  results/grokking/seeds3: REPS=3, STEPS=15000, the runs the README lists.)
set -euo pipefail
OUT=${1:-experiments/results/grokking}
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-30000}
MEM=${MEM:-1000}
REPS=${REPS:-1}
ONLY=${ONLY:-imp controls}
[ "$REPS" -gt 1 ] && SEEDS=0
for seed in $SEEDS; do
  d="$OUT/seed$seed"
  [ "$seed" = 0 ] && d="$OUT"  # seed 0 at the top level
  R=(--seed "$seed" --replicates "$REPS")
  if [[ " $ONLY " == *" imp "* ]]; then
    lotto imp --recipe grokking "${R[@]}" --out "$d/imp"
    [ "$REPS" = 1 ] && lotto train --recipe grokking-train --mask "$d/imp/round_001/mask" \
      --steps "$STEPS" "${R[@]}" --out "$d/ticket"
  fi
  [[ " $ONLY " == *" controls "* ]] || continue
  lotto imp --recipe grokking --steps "$MEM" "${R[@]}" --out "$d/mem_imp"
  lotto train --recipe grokking-train --mask "$d/mem_imp/round_001/mask" --steps "$STEPS" \
    "${R[@]}" --out "$d/mem_ticket"
  lotto train --recipe grokking-train --weight-decay 0 --steps "$STEPS" "${R[@]}" \
    --out "$d/dense_wd0"
  for method in random snip grasp synflow; do
    lotto pai --recipe grokking-pai --method "$method" --steps "$STEPS" "${R[@]}" \
      --out "$d/pai_$method"
  done
  lotto train --recipe grokking-train --mask "$d/imp/round_001/mask" --weight-decay 0 \
    --steps "$STEPS" "${R[@]}" --out "$d/ticket_wd0"
done
python experiments/grokking_summary.py "$OUT"
