#!/usr/bin/env bash
# Batch benchmark (issue 4): 1M entities x 32 float features from Parquet,
# scored with a 200-tree ensemble and an MLP, into the embedded store, a local
# Redis, and Parquet only; materialize into Redis; peak RSS at 1M and 10M rows.
# Needs release builds:
#   cargo build --release -p tandem-cli --bin tandem -p tandem-batch --example batch_bench
# and redis-server (started here on a spare port, no persistence).
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
DATA="${DATA:-/tmp/tandem-bench}"
PORT="${PORT:-16390}"
mkdir -p "$DATA"
MODELS=(fixtures/models/xgboost_200x6/1/model.onnx fixtures/models/sklearn_mlp_32/1/model.onnx)

if [ "${ONLY_TEN_MILLION:-0}" != 1 ]; then
echo "## scan, scan + score, in-memory score"
"$T/examples/batch_bench" "$DATA/1m.parquet" 1000000 "${MODELS[@]}"
fi

redis-server --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis.log"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true' EXIT

run() { # label, then tandem arguments
  local label="$1"; shift
  redis-cli -p "$PORT" flushall >/dev/null
  rm -f "$DATA/store.redb" "$DATA/out.parquet"
  /usr/bin/time -v "$T/tandem" "$@" --json >"$DATA/summary.json" 2>"$DATA/time.txt"
  local rss wall rows
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f", $2 / 1024}' "$DATA/time.txt")
  wall=$(python3 -c "import json; print('%.2f' % json.load(open('$DATA/summary.json'))['wall_seconds'])")
  rows=$(python3 -c "import json; print('%.0f' % json.load(open('$DATA/summary.json'))['rows_per_second'])")
  echo "| $label | $wall s | $rows | $rss MB |"
}

echo
echo "## end to end (tandem binary)"
echo "| run | wall | rows/s | peak RSS |"
echo "|---|---:|---:|---:|"
[ "${ONLY_TEN_MILLION:-0}" = 1 ] || for m in "${MODELS[@]}"; do
  name=$(basename "$(dirname "$(dirname "$m")")")
  run "$name -> embedded store" batch -m "$m" -i "$DATA/1m.parquet" --store "$DATA/store.redb"
  run "$name -> Redis" batch -m "$m" -i "$DATA/1m.parquet" --store "redis://127.0.0.1:$PORT"
  run "$name -> Parquet only" batch -m "$m" -i "$DATA/1m.parquet" --output "$DATA/out.parquet"
done
[ "${ONLY_TEN_MILLION:-0}" = 1 ] || run "materialize 32 features -> Redis" materialize -i "$DATA/1m.parquet" --store "redis://127.0.0.1:$PORT"

if [ "${TEN_MILLION:-1}" = 1 ]; then
  [ -f "$DATA/10m.parquet" ] || "$T/examples/batch_bench" "$DATA/10m.parquet" 10000000 "${MODELS[1]}" >/dev/null
  run "xgboost_200x6, 10M rows -> Parquet only" batch -m "${MODELS[0]}" -i "$DATA/10m.parquet" --output "$DATA/out.parquet"
  run "sklearn_mlp_32, 10M rows -> Parquet only" batch -m "${MODELS[1]}" -i "$DATA/10m.parquet" --output "$DATA/out.parquet"
  run "xgboost_200x6, 10M rows -> Redis" batch -m "${MODELS[0]}" -i "$DATA/10m.parquet" --store "redis://127.0.0.1:$PORT"
  run "xgboost_200x6, 10M rows -> embedded store" batch -m "${MODELS[0]}" -i "$DATA/10m.parquet" --store "$DATA/store.redb"
fi
