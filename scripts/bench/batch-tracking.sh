#!/usr/bin/env bash
# What a serving replica that tracks Redis's changes (memory.tracked_max_ttl,
# client-side caching) costs a batch run: `tandem batch` of the 1M-row file
# into a local Redis, ROUNDS times without and with an idle `tandem serve`
# attached to the same Redis. Each run reports its wall time and Redis's CPU
# (utime + stime from /proc); runs with the server report its CPU and how
# many changes it was told of.
#
#   scripts/bench/batch-tracking.sh ROUNDS
#
# T (default $CARGO_TARGET_DIR/release) holds the `tandem` build; DATA
# (default /tmp/tandem-bench) must hold 1m.parquet (scripts/bench/batch.sh
# makes it). Redis is emptied before each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=$1
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
DATA="${DATA:-/tmp/tandem-bench}"
PORT="${PORT:-16395}"
MODEL=fixtures/models/xgboost_200x6/1/model.onnx
redis-server --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-tracking.log"
SP=""
cleanup() {
  [ -n "$SP" ] && kill "$SP" 2>/dev/null || true
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 0.5
RP=$(redis-cli -p "$PORT" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
run() {
  redis-cli -p "$PORT" flushall >/dev/null
  sleep 1
  local c0 c1 t0 t1
  c0=$(cpu "$RP"); t0=$(date +%s%N)
  "$T/tandem" batch -m "$MODEL" -i "$DATA/1m.parquet" --store "redis://127.0.0.1:$PORT" --json >/dev/null
  t1=$(date +%s%N); c1=$(cpu "$RP")
  printf '%s: wall %d ms, Redis CPU %d ms' "$1" $(( (t1 - t0) / 1000000 )) $(( (c1 - c0) * 1000 / tick ))
}
for _ in $(seq "$ROUNDS"); do
  run "no serve"; echo
  "$T/tandem" serve --model "$MODEL" --store "redis://127.0.0.1:$PORT" --listen 127.0.0.1:18097 \
    >/dev/null 2>"$DATA/serve-tracking.log" &
  SP=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18097/readyz >/dev/null && break; sleep 0.1; done
  sleep 2
  s0=$(cpu "$SP")
  run "tracking serve attached"
  s1=$(cpu "$SP")
  printf ', serve CPU %d ms, changes told %s\n' $(( (s1 - s0) * 1000 / tick )) \
    "$(curl -s http://127.0.0.1:18097/metrics | awk '/^tandem_memory_tier_changes_reported_total/ {print $2}')"
  kill "$SP"; wait "$SP" 2>/dev/null || true; SP=""
done
