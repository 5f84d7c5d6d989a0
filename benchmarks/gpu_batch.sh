#!/usr/bin/env bash
# Every GPU run behind the quality and semantic-ID tables, launched at once on one GPU machine: the models
# are small, so one process per run (1 CPU thread each) shares the GPU. Each run gets a wall-time budget of
# BUDGET minutes (train.max_minutes); the semantic-ID runs also decay their learning rate over that budget
# (train.schedule_by=time). Run folders land in runs/bench and runs/bench-sid as usual; collect the tables
# afterwards with `python benchmarks/quality.py --collect` and `python benchmarks/semantic_ids.py --collect`.
#
#   GENREC_DATA_DIR=../shared/data BUDGET=5.5 bash benchmarks/gpu_batch.sh [LOG_DIR]
#   ONLY="amazon-beauty-tiger amazon-beauty-tiger-rqvae" bash benchmarks/gpu_batch.sh   # just these runs
#
# Processes sharing one GPU are time-sliced: with all 27 runs at once each ran about 3x slower than alone on
# 2 CPU cores, so give a short budget to few runs at a time.
#
# Needs runs/semantic_ids/<dataset>/{rqkmeans,rqvae} for amazon-beauty and microlens-50k (genrec tokenize).
set -u
LOGS=${1:-runs/gpu-logs}
BUDGET=${BUDGET:-5.5}
PY=${PYTHON:-python}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

job() {  # job NAME SCRIPT ARGS...: one benchmark invocation in the background, its log in $LOGS/NAME.log
  local name=$1 script=$2
  shift 2
  [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]] && return
  "$PY" "benchmarks/$script" --device cuda --threads 1 --out "/tmp/gpu-batch/$name" --set "train.max_minutes=$BUDGET" \
    "$@" >"$LOGS/$name.log" 2>&1 &
}

# Datasets are prepared once, before the parallel runs read them.
"$PY" -c "from genrec.data import load_dataset
for name in ('movielens-1m', 'amazon-beauty', 'microlens-50k'): print(load_dataset(name).stats()['name'])" || exit 1

# Sequential retrieval (quality table): 3 seeds of the runs that take < 30 min on 2 CPU cores, and
# HSTU-large on every window.
for seed in 0 1 2; do
  for cfg in movielens-1m/sasrec movielens-1m/hstu amazon-beauty/sasrec amazon-beauty/hstu; do
    job "${cfg/\//-}-s$seed" quality.py --skip-baselines --config "configs/$cfg.yaml" --seeds "$seed"
  done
done
job movielens-1m-hstu-large-all quality.py --skip-baselines --config configs/movielens-1m/hstu-large-all.yaml \
  --set train.schedule_by=time --set train.epochs=10000 --set train.patience=30

# Semantic IDs (semantic_ids table): generator x {RQ-KMeans, RQ-VAE}, SID-augmented SASRec/HSTU, cold start.
for ds in amazon-beauty microlens-50k; do
  for stem in tiger tiger-rqvae sasrec-sid hstu-sid tiger-cold hstu-sid-cold hstu-cold; do
    job "$ds-$stem" semantic_ids.py --config "configs/$ds/$stem.yaml" \
      --set train.schedule_by=time --set train.epochs=10000
  done
done

wait
grep -l "Traceback" "$LOGS"/*.log && echo "some runs failed (logs above)" || echo "all runs finished"
