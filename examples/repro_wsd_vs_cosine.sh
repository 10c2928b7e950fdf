#!/bin/bash
# CPU reproduction: cosine-to-10% vs WSD (20% 1-sqrt cooldowns from one constant run), tiny model, embedded corpus.
set -e
ENTRY=${ENTRY:-"python -m train"}
OUT=${OUT:-runs/repro}
COMMON="--preset tiny --batch-size 32 --acc-steps 1 --warmup-steps 30 --eval-interval 0 --eval-batches 32 --log-interval 0 --no-progress"
for T in 300 600 900; do
  $ENTRY $COMMON --scheduler cos --lr 4e-3 --iterations $T --out $OUT/cos_$T
done
$ENTRY $COMMON --scheduler wsd --lr 2e-3 --cooldown-targets 300,600,900 --wsd-fract-decay 0.2 --decay-type sqrt --out $OUT/wsd
for T in 300 600 900; do python -c "import json;s=json.load(open('$OUT/cos_$T/summary.json'));print('cos',$T,round(s['val_loss'],4),s['flops_this_run'])"; done
