#!/usr/bin/env bash
# Refresh benchmark (issue 7): a full batch run of 1M entities into Redis
# against `tandem refresh` of the drifted copy (5 % of entities moved),
# without and with the digest index. Needs a release build, redis-server,
# $DATA/1m.parquet and $DATA/1m-drift.parquet (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
T="${TANDEM:-${CARGO_TARGET_DIR:-target}/release/tandem}"
DATA="${DATA:-/tmp/tandem-bench}"
PORT="${PORT:-16393}"
M=fixtures/models/xgboost_200x6/1/model.onnx
R="redis://127.0.0.1:$PORT"
redis-server --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir "$DATA" --logfile "$DATA/redis-refresh.log"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true' EXIT
wall() { python3 -c "import json,sys; s=json.load(sys.stdin); print('%.2f s' % s['wall_seconds'], *[f'{k}={s[k]}' for k in sys.argv[1:]])" "$@"; }

if [ -n "${PAIRS:-}" ]; then
  # PAIRS=N: N pairs of a full run with --index and the refresh right
  # after it (then the same refresh again, with nothing left to do).
  secs() { python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['wall_seconds'])"; }
  echo "| full run | refresh --index | ratio | no-op refresh |"
  echo "|---:|---:|---:|---:|"
  for i in $(seq "$PAIRS"); do
    rm -f "$DATA/1m.idx"
    full=$("$T" batch -m "$M" -i "$DATA/1m.parquet" --store "$R" --index "$DATA/1m.idx" --json | secs)
    refresh=$("$T" refresh -m "$M" -i "$DATA/1m-drift.parquet" --store "$R" --changed-threshold 0.5 --index "$DATA/1m.idx" --json | secs)
    noop=$("$T" refresh -m "$M" -i "$DATA/1m-drift.parquet" --store "$R" --changed-threshold 0.5 --index "$DATA/1m.idx" --json | secs)
    echo "| $full s | $refresh s | $(python3 -c "print('%.1fx' % ($full / $refresh))") | $noop s |"
  done
  exit 0
fi
echo "| run | wall | result |"
echo "|---|---:|---|"
for i in 1 2; do
  echo "| full batch run into Redis | $("$T" batch -m "$M" -i "$DATA/1m.parquet" --store "$R" --json | wall rows_written) |"
done
for i in 1 2; do
  "$T" batch -m "$M" -i "$DATA/1m.parquet" --store "$R" --json >/dev/null
  echo "| refresh, no index | $("$T" refresh -m "$M" -i "$DATA/1m-drift.parquet" --store "$R" --changed-threshold 0.5 --json | wall rescored) |"
done
for i in 1 2 3; do
  rm -f "$DATA/1m.idx"
  "$T" batch -m "$M" -i "$DATA/1m.parquet" --store "$R" --index "$DATA/1m.idx" --json >/dev/null
  echo "| refresh --index | $("$T" refresh -m "$M" -i "$DATA/1m-drift.parquet" --store "$R" --changed-threshold 0.5 --index "$DATA/1m.idx" --json | wall rescored cleared_by_index) |"
done
echo "| the same refresh again | $("$T" refresh -m "$M" -i "$DATA/1m-drift.parquet" --store "$R" --changed-threshold 0.5 --index "$DATA/1m.idx" --json | wall rescored cleared_by_index) |"
