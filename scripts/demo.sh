#!/usr/bin/env bash
# The main job on the embedded default, on a fresh Debian 12 machine (run as root). Idempotent.
#
# Sets up what is missing (toolchain pieces, ClickHouse, the real vLLM), then runs the whole chain
# on this machine: a local ClickHouse, the aggregator, a real vLLM (CPU build, tiny local model),
# node-probe attached to it with zero instrumentation and exporting to the aggregator, a bounded
# load; then prints the tail-latency breakdown and where to look next.
#
# Env: PORT (vLLM, default 8765), REQUESTS (default 200), CONCURRENCY (default 8),
#      GRPC (aggregator gRPC, 127.0.0.1:7070), HTTP (aggregator HTTP/UI, 127.0.0.1:7071).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8765}; REQUESTS=${REQUESTS:-200}; CONCURRENCY=${CONCURRENCY:-8}
GRPC=${GRPC:-127.0.0.1:7070}; HTTP=${HTTP:-127.0.0.1:7071}
OUT=${OUT:-$HOME/.cache/inferscope/demo}; mkdir -p "$OUT"
TOKEN=${INFERSCOPE_TOKEN:-demo-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')}

scripts/setup.sh all
cargo build --release -p node-probe -p inferscope-aggregator -p inferscope-cli -p inferscope-loadtests
scripts/clickhouse.sh start

# Aggregator (restarted if one from an earlier demo is still up).
# The token travels in the environment, never on a command line (readable by every local user).
export INFERSCOPE_TOKEN="$TOKEN"
pkill -f "target/release/aggregator .*--http-listen $HTTP" 2>/dev/null || true
target/release/aggregator --grpc-listen "$GRPC" --http-listen "$HTTP" > "$OUT/aggregator.log" 2>&1 &
AGG=$!
until curl -sf "http://$HTTP/healthz" >/dev/null; do
  kill -0 $AGG 2>/dev/null || { cat "$OUT/aggregator.log" >&2; exit 1; }; sleep 0.3
done

scripts/engine.sh start "$PORT"
target/release/node-probe --cmdline "vllm serve .* --port $PORT" --export "http://$GRPC" \
  --batch-max-ms 500 --requests > "$OUT/requests.jsonl" 2> "$OUT/probe.log" &
PROBE=$!
trap 'kill -TERM $PROBE 2>/dev/null || true' EXIT
until grep -qs "node-probe attached" "$OUT/probe.log"; do
  kill -0 $PROBE 2>/dev/null || { cat "$OUT/probe.log" >&2; exit 1; }; sleep 0.2
done

FROM=$(date +%s)
target/release/loadgen --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY"
sleep 2   # let the last batch reach ClickHouse
kill -TERM $PROBE; wait $PROBE 2>/dev/null || true; trap - EXIT

echo
target/release/inferscope --api "http://$HTTP" breakdown --from "$((FROM - 5))" --quantiles 0.5,0.9,0.99
echo
target/release/inferscope --api "http://$HTTP" requests --from "$((FROM - 5))" --limit 5
echo
echo "UI:         http://$HTTP/"
echo "API:        http://$HTTP/api/v1/breakdown   (OpenAPI: http://$HTTP/openapi.yaml)"
echo "SQL:        scripts/clickhouse.sh client -q 'SELECT * FROM inferscope.requests_ms ORDER BY e2e_ms DESC LIMIT 5'"
echo "aggregator: pid $AGG, log $OUT/aggregator.log (ingest token: $INFERSCOPE_TOKEN as set above)"
echo "stop:       kill $AGG; scripts/engine.sh stop $PORT; scripts/clickhouse.sh stop"
