#!/usr/bin/env bash
# Interleaved batch-into-Redis comparison (issue 4) for a shared, noisy
# machine: `tandem batch` of the 1M-row file into one local Redis with
# several `tandem` builds, in turn, ROUNDS times. Each run reports its wall
# time, the CPU time of `tandem` (user + system) and of Redis (utime +
# stime from /proc around the run), and tandem's peak RSS, so that what the
# client spends and what Redis spends are told apart.
#
#   scripts/bench/batch-ab.sh ROUNDS MODEL BIN [BIN ...]
#
# MODEL is a fixture name (xgboost_200x6, sklearn_mlp_32). Redis is emptied
# before each run (new keys) unless KEEP=1: then each run overwrites the
# records of the run before it, as a scheduled batch does. DATA (default
# /tmp/tandem-bench) must hold 1m.parquet (scripts/bench/batch.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=$1; MODEL=$2; shift 2
DATA="${DATA:-/tmp/tandem-bench}"
PORT="${PORT:-16394}"
redis-server --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-batch-ab.log"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
RP=$(redis-cli -p "$PORT" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    [ "${KEEP:-0}" = 1 ] || redis-cli -p "$PORT" flushall >/dev/null
    r0=$(cpu "$RP")
    /usr/bin/time -f "%e %U %S %M" -o "$DATA/batch-ab-time.txt" "$bin" batch \
      -m "fixtures/models/$MODEL/1/model.onnx" -i "$DATA/1m.parquet" \
      --store "redis://127.0.0.1:$PORT" --json >"$DATA/batch-ab.json"
    r1=$(cpu "$RP")
    read -r wall user sys rss <"$DATA/batch-ab-time.txt"
    written=$(python3 -c "import json; print(json.load(open('$DATA/batch-ab.json'))['rows_written'])")
    printf 'round %s | %s | %s s | tandem CPU %.2f s | Redis CPU %.2f s | peak RSS %s MiB | %s written\n' \
      "$r" "$bin" "$wall" "$(echo "$user + $sys" | bc)" "$(echo "($r1 - $r0) / $tick" | bc -l)" \
      "$((rss / 1024))" "$written"
  done
done
