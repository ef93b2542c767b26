#!/usr/bin/env bash
# Serving benchmark (issue 5): wrk, 64 connections, 2 cores shared by the
# load generator, tandem serve and Redis; entity ids drawn Zipf-like from 1M
# entities whose 32 features are in a local Redis; the 200-tree ensemble.
# Needs release builds:
#   cargo build --release -p tandem-cli --bin tandem -p tandem-server --example ceiling \
#     -p tandem-batch --example batch_bench
# and redis-server and wrk. DURATION (default 20s) per run; T names the
# build directory (default $CARGO_TARGET_DIR/release). For A/B comparisons
# on a noisy machine, see serve-ab.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
DATA="${DATA:-/tmp/tandem-bench}"
RPORT="${RPORT:-16391}"
PORT="${PORT:-18080}"
CPORT="${CPORT:-18081}"
DURATION="${DURATION:-20s}"
MODEL=fixtures/models/xgboost_200x6/1/model.onnx
mkdir -p "$DATA"
[ -f "$DATA/1m.parquet" ] || "$T/examples/batch_bench" "$DATA/1m.parquet" 1000000 "$MODEL" >/dev/null

redis-server --port "$RPORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-serve.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
REDIS="redis://127.0.0.1:$RPORT"
"$T/tandem" materialize -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null
"$T/tandem" batch -m "$MODEL" -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null

rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

"$T/tandem" serve --model "$MODEL" --store "$REDIS" --listen "127.0.0.1:$PORT" \
  >"$DATA/serve.out" 2>"$DATA/serve.log" &
pids+=($!)
SERVE=$!
"$T/examples/ceiling" "127.0.0.1:$CPORT" >/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
sleep 1
echo "idle RSS: tandem serve $(rss $SERVE) MB (200-tree model loaded)"

run() { # label, url, script, env...
  local label="$1" url="$2" script="$3"; shift 3
  env "$@" wrk -t2 -c64 -d"$DURATION" --latency ${script:+-s "$script"} "$url" >"$DATA/wrk.txt"
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$DATA/wrk.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$DATA/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$DATA/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$DATA/wrk.txt")
  echo "| $label | $rps | $p50 | $p99 | ${non2xx:-0} | $(rss $SERVE) MB |"
}

echo "| run | req/s | p50 | p99 | non-2xx | tandem RSS after |"
echo "|---|---:|---:|---:|---:|---:|"
run "ceiling: fixed body, same stack" "http://127.0.0.1:$CPORT/" ""
run "(a) hybrid, batch predictions present" "http://127.0.0.1:$PORT" scripts/bench/wrk/entity.lua
run "(b) real-time: feature fetch + model" "http://127.0.0.1:$PORT" scripts/bench/wrk/entity.lua SUFFIX='?mode=realtime_only'
run "(c) KServe V2 infer, features in request" "http://127.0.0.1:$PORT" scripts/bench/wrk/kserve.lua
curl -s "http://127.0.0.1:$PORT/v1/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print('answers:', s['answers'], 'tiers:', s['tiers'], 'writes:', s['writes'])"
