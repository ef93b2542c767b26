#!/usr/bin/env bash
# Distributed overhead (issue 9): the same 1M-entity batch job locally and on
# a one-executor Ballista cluster (tandem scheduler + tandem executor on this
# machine), into Redis and into Parquet; then the executor's task log, which
# shows one task per input partition and two running at once.
# Needs a release build (cargo build --release -p tandem-cli), redis-server,
# and the data of scripts/bench/batch.sh: $DATA/1m.parquet (one row group)
# and $DATA/1m-parts/ (the same rows as 8 files).
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${CARGO_TARGET_DIR:-target}/release"
DATA="${DATA:-/tmp/tandem-bench}"
PORT="${PORT:-16391}"
SCHED="${SCHED:-50150}"
MODEL=fixtures/models/xgboost_200x6/1/model.onnx

redis-server --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-cluster-bench.log"
"$T/tandem" scheduler --bind "127.0.0.1:$SCHED" >"$DATA/scheduler.log" 2>&1 &
SCHED_PID=$!
TANDEM_LOG="warn,ballista_executor=info" "$T/tandem" executor -m "$MODEL" \
  --scheduler "127.0.0.1:$SCHED" --bind-host 127.0.0.1 --flight-port 50151 \
  --grpc-port 50152 --concurrency 2 >/dev/null 2>"$DATA/executor.log" &
: >"$DATA/tasks.md"
EXEC_PID=$!
trap 'kill $EXEC_PID $SCHED_PID 2>/dev/null; redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true' EXIT
sleep 2

run() { # label, then tandem arguments
  local label="$1"; shift
  redis-cli -p "$PORT" flushall >/dev/null
  rm -rf "$DATA/out.parquet"
  local from=$(( $(wc -l <"$DATA/executor.log") + 1 ))
  "$T/tandem" "$@" --json >"$DATA/summary.json"
  sleep 0.2
  python3 scripts/bench/tasks.py "$DATA/executor.log" "$from" "$label" >>"$DATA/tasks.md"
  python3 - "$label" "$DATA/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {s['wall_seconds']:.2f} s | {s['rows_per_second']:,.0f} | {s['rows_written']:,} |")
PY
}

echo "| run | wall | rows/s | written |"
echo "|---|---:|---:|---:|"
for input in "$DATA/1m.parquet" "$DATA/1m-parts"; do
  name=$(basename "$input")
  run "$name local -> Redis" batch -m "$MODEL" -i "$input" --store "redis://127.0.0.1:$PORT"
  run "$name cluster -> Redis" batch -m "$MODEL" -i "$input" --store "redis://127.0.0.1:$PORT" --cluster "df://127.0.0.1:$SCHED" --partitions 2
  run "$name cluster -> Redis, 8 partitions" batch -m "$MODEL" -i "$input" --store "redis://127.0.0.1:$PORT" --cluster "df://127.0.0.1:$SCHED" --partitions 8
  run "$name local -> Parquet" batch -m "$MODEL" -i "$input" --output "$DATA/out.parquet"
  run "$name cluster -> Parquet (2 parts)" batch -m "$MODEL" -i "$input" --output "$DATA/out.parquet" --cluster "df://127.0.0.1:$SCHED" --parts 2 --partitions 2
done
echo
echo "## executor tasks per run, job and stage (a cluster run is a check job, then the scoring job(s))"
echo "| run | stage | tasks (partitions) | task time | wall | most at once |"
echo "|---|---:|---:|---:|---:|---:|"
grep -v ' local ' "$DATA/tasks.md" || true
