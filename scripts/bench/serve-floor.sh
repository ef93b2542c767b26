#!/usr/bin/env bash
# Floors for row (b) of the serving benchmark (issue 5): how far the least
# a real-time answer needs can go on this machine, against tandem serve.
# Runs scripts/bench/serve-ab.sh on row (b) with, after the tandem build
# given, the feature_floor example in its three modes:
#
#   write  feature read (merged MGET) + model (tandem's batcher and model
#          thread) + write-back of changed predictions, nothing else
#   model  feature read + model
#   mget   feature read only
#
# With ROW=a, row (a) instead, against the floor's memory mode (batch
# predictions read from Redis once, then kept in memory for good).
#
#   [ROW=a] scripts/bench/serve-floor.sh ROUNDS [TANDEM_BIN]
#
# Needs the ceiling, feature_floor and batch_bench examples of a release
# build (T, default $CARGO_TARGET_DIR/release), redis-server and wrk;
# DURATION and WARMUP as for serve-ab.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
T="${T:-${CARGO_TARGET_DIR:-target}/release}"
BIN=${2:-$T/tandem}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for mode in write model mget memory; do
  # serve-ab.sh starts each build as `BIN serve --model M --store URL --listen ADDR`.
  cat >"$W/floor-$mode" <<SH
#!/bin/sh
while [ \$# -gt 0 ]; do
  case \$1 in --store) S=\$2; shift ;; --listen) L=\$2; shift ;; --model) M=\$2; shift ;; esac
  shift
done
exec "$T/examples/feature_floor" "\$L" "\$S" $mode "\$M"
SH
  chmod +x "$W/floor-$mode"
done
if [ "${ROW:-b}" = a ]; then
  scripts/bench/serve-ab.sh "$ROUNDS" a "$BIN" "$W/floor-memory"
else
  scripts/bench/serve-ab.sh "$ROUNDS" b "$BIN" "$W/floor-write" "$W/floor-model" "$W/floor-mget"
fi
