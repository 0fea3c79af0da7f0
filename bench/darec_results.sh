#!/usr/bin/env bash
# DARec results on ml-1m-subset (CPU), as recorded in docs/results.md: the adapter search, then
# every model trained and evaluated at the same budget, two jobs at a time, one torch thread each.
# Run from anywhere: bash bench/darec_results.sh  (needs the darec extra; ~80 min on 2 cores)
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=../shared/data/ml-1m-subset
OUT=runs/darec
BUDGET=${BUDGET:-480}
nice -n 5 $PY -m models.search --data-dir $DATA --dataset ml-1m-subset --protocol loo \
  --study-dir $OUT/search-loo --trials 10 --rounds 3 --round-batches 20 --valid-rows 1000 \
  --batch-size 64 --device cpu --set bf16=true > $OUT/search-loo.log 2>&1
BEST=$($PY -c "import json;print(json.load(open('$OUT/search-loo/best.json'))['best_adapters'])")
echo "best adapters: $BEST"
DAREC="--set bf16=true --batch-size 64 --eval-batch-size 256"
train() {  # name model protocol extra...
  local name=$1 model=$2 protocol=$3; shift 3
  nice -n 5 $PY -m models.train --model $model --dataset ml-1m-subset --data-dir $DATA \
    --protocol $protocol --out $OUT/ck/$name.safetensors --device cpu --threads 1 \
    --max-train-seconds $BUDGET --valid-rows 1000 --fresh --quiet "$@" > $OUT/logs/$name.train.log 2>&1
  local rows=""; [ "$protocol" = ttt4rec ] && rows="--rows 20000"
  nice -n 5 $PY -m models.evaluate --checkpoint $OUT/ck/$name.safetensors --protocol $protocol \
    --data-dir $DATA --dataset ml-1m-subset --device cpu --threads 1 --batch-size 256 --json $rows \
    > $OUT/logs/$name.eval.json 2> $OUT/logs/$name.eval.log
  echo "$(date +%T) done $name"
}
mkdir -p $OUT/ck $OUT/logs
train darec-loo darec loo $DAREC --set adapters=$BEST &
train darec-ttt4rec darec ttt4rec $DAREC --set adapters=$BEST &
wait
train darec-loo-nomask darec loo $DAREC --set adapters=$BEST --set context_masking=false &
train darec-loo-noinject darec loo $DAREC --set adapters=$BEST --set knowledge_injection=false &
wait
train darec-loo-fixed darec loo $DAREC --set adapters=lora8 &
train sasrec-loo sasrec loo &
wait
train ttt4rec-loo ttt4rec loo &
train t2arec-loo t2arec loo &
wait
train sasrec-ttt4rec sasrec ttt4rec &
train ttt4rec-ttt4rec ttt4rec ttt4rec &
wait
train t2arec-ttt4rec t2arec ttt4rec &
wait
echo "$(date +%T) all done"
