#!/usr/bin/env bash
# Interleaved serving comparison (issue 5) for a shared, noisy machine: one
# row (a, b or c of scripts/bench/serve.sh) against several `tandem` builds,
# each round running the ceiling and then every build, so that each build's
# share of the ceiling is taken within the same minute. Besides req/s and
# p99, each run reports the server's CPU time per request and Redis's
# (utime + stime from /proc, divided by the requests wrk completed). The
# builds take turns in alternating order. At the end, each build's share
# of the ceiling round by round and its median.
#
#   scripts/bench/serve-ab.sh ROUNDS ROW BIN [BIN ...]
#
# WARMUP (seconds, default 0) loads each build before the rounds; see below.
#
# Needs the ceiling example and batch_bench of a release build (T, default
# $CARGO_TARGET_DIR/release), redis-server and wrk. DURATION per run
# (default 5s). Loads 1M entities' features and the 200-tree ensemble's
# batch predictions into its own Redis first (as serve.sh does).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=$1; ROW=$2; shift 2
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
DATA="${DATA:-/tmp/tandem-bench}"
RPORT="${RPORT:-16392}"
D="${DURATION:-5s}"
MODEL=fixtures/models/xgboost_200x6/1/model.onnx
mkdir -p "$DATA"
[ -f "$DATA/1m.parquet" ] || "$T/examples/batch_bench" "$DATA/1m.parquet" 1000000 "$MODEL" >/dev/null
redis-server --port "$RPORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-ab.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
REDIS="redis://127.0.0.1:$RPORT"
"$1" materialize -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null
"$1" batch -m "$MODEL" -i "$DATA/1m.parquet" --store "$REDIS" --json >/dev/null
RP=$(redis-cli -p "$RPORT" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')

n=0
for bin in "$@"; do
  "$bin" serve --model "$MODEL" --store "$REDIS" --listen "127.0.0.1:$((18090 + n))" \
    >/dev/null 2>"$DATA/serve-ab-$n.log" &
  pids+=($!)
  n=$((n + 1))
done
"$T/examples/ceiling" 127.0.0.1:18089 >/dev/null &
pids+=($!)
for j in $(seq 0 $((n - 1))); do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((18090 + j))/readyz" >/dev/null && break; sleep 0.1; done
done
sleep 1
case $ROW in
  a) SUF=''; S=scripts/bench/wrk/entity.lua ;;
  b) SUF='?mode=realtime_only'; S=scripts/bench/wrk/entity.lua ;;
  c) SUF=''; S=scripts/bench/wrk/kserve.lua ;;
  *) echo "ROW is a, b or c" >&2; exit 2 ;;
esac
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
one() { # url script pid
  local c0 r0 c1 r1 reqs
  c0=$(cpu "$3"); r0=$(cpu "$RP")
  SUFFIX=$SUF wrk -t2 -c64 -d"$D" --latency ${2:+-s "$2"} "$1" >"$DATA/wrk-ab.txt"
  c1=$(cpu "$3"); r1=$(cpu "$RP")
  reqs=$(awk '/requests in/ {print $1}' "$DATA/wrk-ab.txt")
  printf '%s req/s, p99 %s, %s us CPU/req, Redis %s us/req%s' \
    "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$DATA/wrk-ab.txt")" \
    "$(awk '$1 == "99%" {print $2}' "$DATA/wrk-ab.txt")" \
    $(( (c1 - c0) * 1000000 / tick / reqs )) $(( (r1 - r0) * 1000000 / tick / reqs )) \
    "$(awk '/Non-2xx/ {print ", non-2xx " $5}' "$DATA/wrk-ab.txt")"
}
# WARMUP=S: before the rounds, S seconds of the row's load on each build,
# given in turns of DURATION so that no build idles for long (a memory
# tier's entries expire while it idles). For a steady state rather than a
# server's first minute.
warm=$(( ${WARMUP:-0} ))
if ((warm > 0)) && [[ ! $D =~ ^[0-9]+s$ ]]; then
  echo "with WARMUP, give DURATION in seconds (such as 5s)" >&2; exit 2
fi
while ((warm > 0)); do
  for j in $(seq 0 $((n - 1))); do
    SUFFIX=$SUF wrk -t2 -c64 -d"$D" ${S:+-s "$S"} "http://127.0.0.1:$((18090 + j))" >/dev/null
  done
  warm=$((warm - ${D%s}))
done
: >"$DATA/serve-ab-rounds.txt"
# Builds run in order in odd rounds and in reverse in even ones: the one
# that runs right after the ceiling (or after another build's load on
# Redis) does not always get the same turn.
for r in $(seq "$ROUNDS"); do
  line="round $r | ceiling $(one http://127.0.0.1:18089/ '' "${pids[$n]}")"
  results=()
  if ((r % 2)); then turns=$(seq 0 $((n - 1))); else turns=$(seq $((n - 1)) -1 0); fi
  for j in $turns; do
    results[j]=$(one "http://127.0.0.1:$((18090 + j))" "$S" "${pids[$j]}")
  done
  for j in $(seq 0 $((n - 1))); do
    line="$line | build $j: ${results[j]}"
  done
  echo "$line" | tee -a "$DATA/serve-ab-rounds.txt"
done
# Each build's share of its round's ceiling, round by round, and the
# median over the rounds (the machine's speed moves between rounds).
for j in $(seq 0 $((n - 1))); do
  shares=$(awk -v j="$j" -F' [|] ' '{
    split($2, c, " "); split($(j + 3), b, " "); printf "%.1f\n", 100 * b[3] / c[2]
  }' "$DATA/serve-ab-rounds.txt")
  median=$(sort -n <<<"$shares" | awk '{ v[NR] = $1 } END {
    printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  }')
  echo "build $j share of the ceiling: $(paste -sd/ <<<"$shares" | sed 's#/# / #g') %, median $median %"
done
