#!/usr/bin/env bash
# A rolling restart with and without `memory.preload` (issue 5, row (a)):
# a first server takes DURATION_WARM (default 30s) of the row's load, which
# fills the shared activity log; then, ROUNDS times, a fresh server for each
# PRELOAD count (default "0 100000 1000000") starts, is timed until /readyz,
# and takes 15 s of row (a) right after the ceiling's 5 s. Each run reports
# the time to ready, RSS at ready, the entities preloaded, the share of the
# ceiling and the memory tier's misses.
#
#   scripts/bench/serve-preload.sh ROUNDS
#
# Needs the ceiling example and batch_bench of a release build (T, default
# $CARGO_TARGET_DIR/release), redis-server and wrk; DATA as serve-ab.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=$1
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
DATA="${DATA:-/tmp/tandem-bench}"
RPORT="${RPORT:-16396}"
PRELOAD="${PRELOAD:-0 100000 1000000}"
MODEL=fixtures/models/xgboost_200x6/1/model.onnx
mkdir -p "$DATA"
[ -f "$DATA/1m.parquet" ] || "$T/examples/batch_bench" "$DATA/1m.parquet" 1000000 "$MODEL" >/dev/null
redis-server --port "$RPORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-preload.log"
SP=""; CP=""
cleanup() {
  for p in $SP $CP; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
REDIS="redis://127.0.0.1:$RPORT"
"$T/tandem" materialize -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null
"$T/tandem" batch -m "$MODEL" -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null
ready() {
  for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.05; done
}
"$T/tandem" serve --model "$MODEL" --store "$REDIS" --listen 127.0.0.1:18095 >/dev/null 2>&1 &
SP=$!
ready 18095
wrk -t2 -c64 -d"${DURATION_WARM:-30s}" -s scripts/bench/wrk/entity.lua http://127.0.0.1:18095 >/dev/null
kill "$SP"; wait "$SP" 2>/dev/null || true; SP=""
metric() { curl -s http://127.0.0.1:18096/metrics | awk -v r="$1" '$0 ~ "tier=\"memory\",result=\"" r "\"" {print $2}'; }
for round in $(seq "$ROUNDS"); do
  for pre in $PRELOAD; do
    t0=$(date +%s%N)
    TANDEM__MEMORY__PRELOAD=$pre "$T/tandem" serve --model "$MODEL" --store "$REDIS" \
      --listen 127.0.0.1:18096 >/dev/null 2>"$DATA/serve-preload.log" &
    SP=$!
    ready 18096
    t1=$(date +%s%N)
    rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$SP/status")
    "$T/examples/ceiling" 127.0.0.1:18089 >/dev/null 2>&1 &
    CP=$!
    sleep 0.3
    c=$(wrk -t2 -c64 -d5s http://127.0.0.1:18089 | awk '/Requests\/sec/ {print $2}')
    kill "$CP"; wait "$CP" 2>/dev/null || true; CP=""
    a=$(wrk -t2 -c64 -d15s -s scripts/bench/wrk/entity.lua http://127.0.0.1:18096 | awk '/Requests\/sec/ {print $2}')
    miss=$(metric miss); hit=$(metric hit)
    printf 'round %s, preload %s: ready in %d ms, RSS %s MB, %s; (a) %.0f req/s, %.1f %% of %.0f; memory misses %s of %s\n' \
      "$round" "$pre" $(( (t1 - t0) / 1000000 )) "$rss" \
      "$(grep -o 'loaded=[0-9]*' "$DATA/serve-preload.log" || echo 'loaded=0')" \
      "$a" "$(echo "100 * $a / $c" | bc -l)" "$c" "$miss" "$((miss + hit))"
    kill "$SP"; wait "$SP" 2>/dev/null || true; SP=""
  done
done
