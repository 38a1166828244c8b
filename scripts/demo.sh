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
target/release/node-probe --cmdline "vllm serve .* --port $PORT" --requests \
  > "$OUT/requests.jsonl" 2> "$OUT/probe.log" &
PROBE=$!
trap 'kill -TERM $PROBE 2>/dev/null || true' EXIT
until grep -qs "node-probe attached" "$OUT/probe.log"; do
  kill -0 $PROBE 2>/dev/null || { cat "$OUT/probe.log" >&2; exit 1; }; sleep 0.2
done
target/release/loadgen --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY"
sleep 1
kill -TERM $PROBE; wait $PROBE 2>/dev/null || true; trap - EXIT
echo
echo "== per-request breakdown from node-probe ($(wc -l < "$OUT/requests.jsonl") requests) =="
python3 - "$OUT/requests.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def q(vals, p):
    vals = sorted(v for v in vals if v is not None)
    return vals[min(len(vals) - 1, round((len(vals) - 1) * p))] / 1e6 if vals else float("nan")
cols = ["e2e_ns", "ttft_ns", "tpot_ns", "frontend_ns", "queue_ns", "prefill_ns", "decode_ns", "delivery_ns"]
print(f"  {'ms':<10}" + "".join(f"{c[:-3]:>10}" for c in cols))
for p in (0.5, 0.9, 0.99):
    print(f"  p{int(p*100):<9}" + "".join(f"{q([r.get(c) for r in rows], p):>10.1f}" for c in cols))
slow = max(rows, key=lambda r: r["e2e_ns"])
print(f"  slowest: trace {slow['trace_id']} {slow['path']} e2e {slow['e2e_ns']/1e6:.1f} ms, "
      f"{slow.get('engine_steps', 0)} engine steps")
PY
echo "records: $OUT/requests.jsonl (format: docs/request-format.md)   probe log: $OUT/probe.log"
echo "(stop vLLM: scripts/engine.sh stop $PORT)"
