#!/usr/bin/env bash
# The main job on the embedded default, on a fresh Debian 12 machine (run as root).
# Idempotent. Sets up what is missing (toolchain pieces, ClickHouse, the real vLLM), starts a local
# ClickHouse and a real vLLM (CPU build, tiny local model), attaches node-probe to it, drives a
# bounded load, and prints what was captured.
#
# Env: PORT (vLLM port, default 8765), REQUESTS (default 40), CONCURRENCY (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8765}; REQUESTS=${REQUESTS:-40}; CONCURRENCY=${CONCURRENCY:-8}
OUT=${OUT:-$HOME/.cache/inferscope/demo}; mkdir -p "$OUT"
scripts/setup.sh all
cargo build --release -p node-probe -p inferscope-loadtests
scripts/engine.sh start "$PORT"
target/release/node-probe --cmdline "vllm serve .* --port $PORT" --print-events --format json \
  > "$OUT/events.jsonl" 2> "$OUT/probe.log" &
PROBE=$!
trap 'kill -TERM $PROBE 2>/dev/null || true' EXIT
until grep -qs "node-probe attached" "$OUT/probe.log"; do
  kill -0 $PROBE 2>/dev/null || { cat "$OUT/probe.log" >&2; exit 1; }; sleep 0.2
done
target/release/loadgen --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY"
sleep 1
kill -TERM $PROBE; wait $PROBE 2>/dev/null || true; trap - EXIT
echo
echo "== node-probe captured (events by kind and process) =="
python3 - "$OUT/events.jsonl" <<'PY'
import collections, json, sys
c = collections.Counter()
for line in open(sys.argv[1]):
    v = json.loads(line)
    if v["kind"] != "ready":
        c[(v["pid"], v["kind"], v.get("proto", ""))] += 1
for (pid, kind, proto), n in sorted(c.items()):
    print(f"  pid {pid:<8} {kind:<8} {proto:<6} {n}")
PY
echo "events: $OUT/events.jsonl   probe log: $OUT/probe.log   (stop vLLM: scripts/engine.sh stop $PORT)"
