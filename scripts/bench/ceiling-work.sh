#!/usr/bin/env bash
# Calibration for the serving benchmark (issue 5): what a given amount of
# handler work costs the whole server when the load generator shares its
# cores. The ceiling example (a fixed body on tandem's server stack) is run
# with each busy time WORK_NS per request in turn (the first, 0 by default,
# is the reference) under the same wrk load as scripts/bench/serve.sh. Each
# run reports req/s, its share of the round's first run, the server's CPU
# time per request and the involuntary context switches (preemptions) of
# its threads per 1000 requests.
#
#   scripts/bench/ceiling-work.sh [ROUNDS] [WORK_NS ...]
#
# Needs the ceiling example of a release build (T, default
# $CARGO_TARGET_DIR/release) and wrk. DURATION per run (default 5s).
# Defaults: 2 rounds of 0 1500 3000 6000 ns.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-2}"
shift || true
WORKS=("$@")
[ ${#WORKS[@]} -gt 0 ] || WORKS=(0 1500 3000 6000)
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
D="${DURATION:-5s}"
PORT="${PORT:-18089}"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
preempted() { cat /proc/"$1"/task/*/status | awk '/^nonvoluntary_ctxt_switches/ {n += $2} END {print n}'; }
tick=$(getconf CLK_TCK)
echo "| round | work per request | req/s | of the round's first run | server CPU per request | preemptions per 1000 requests |"
echo "|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  base=""
  for w in "${WORKS[@]}"; do
    "$T/examples/ceiling" "127.0.0.1:$PORT" "$w" >/dev/null &
    pid=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
    # Another server already on the port would answer in its place.
    kill -0 "$pid" 2>/dev/null || { echo "the ceiling did not start on port $PORT (in use?)" >&2; exit 1; }
    c0=$(cpu "$pid"); p0=$(preempted "$pid")
    SUFFIX='' wrk -t2 -c64 -d"$D" -s scripts/bench/wrk/entity.lua "http://127.0.0.1:$PORT/" >"$OUT"
    c1=$(cpu "$pid"); p1=$(preempted "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$OUT")
    reqs=$(awk '/requests in/ {print $1}' "$OUT")
    [ -n "$base" ] || base=$rps
    printf '| %s | %s ns | %s | %s %% | %s us | %s |\n' "$r" "$w" "$rps" \
      "$(echo "scale=1; 100 * $rps / $base" | bc)" \
      "$(echo "scale=1; ($c1 - $c0) * 1000000 / $tick / $reqs" | bc)" \
      "$(( (p1 - p0) * 1000 / reqs ))"
  done
done
