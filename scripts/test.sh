#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine (run as root: the eBPF tests need it).
# Idempotent: installs what is missing (apt packages, nightly rust-src, bpf-linker, ClickHouse,
# the UI build (before the aggregator, which embeds it), Chromium, the real vLLM), starts ONE real
# engine that every real-engine test shares (with its own OTLP traces going to a local collector,
# as ground truth), then runs fmt, clippy and every test (default members; probe-ebpf is built
# by node-probe).
#
# With INFERSCOPE_REQUIRE_BPF=1 (set by .ci/run) an eBPF or real-engine test that cannot run
# fails instead of skipping. INFERSCOPE_SKIP_ENGINE=1 skips starting the engine (its tests then
# skip, or fail when required).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }
t0=$(date +%s)
scripts/setup.sh
scripts/setup.sh browser   # headless Chromium for the UI's browser tests (loadtests/tests/ui.rs)
[ "${INFERSCOPE_SKIP_ENGINE:-0}" = 1 ] || scripts/setup.sh llamacpp   # vLLM, then llama.cpp
# A real ClickHouse cluster (ZooKeeper + 3 servers) for aggregator/tests/cluster.rs.
scripts/clickhouse-cluster.sh start
echo "[test] set-up done in $(( $(date +%s) - t0 ))s"

ENGINE_PORT=${INFERSCOPE_TEST_ENGINE_PORT:-18765}
# A second instance on the same node, for the two-instance test (real_engine.rs).
ENGINE2_PORT=${INFERSCOPE_TEST_ENGINE2_PORT:-18766}
# The llama.cpp server (llamacpp.rs).
LLAMA_PORT=${INFERSCOPE_TEST_LLAMACPP_PORT:-18790}
OTLP_PORT=${INFERSCOPE_TEST_OTLP_PORT:-14318}
RUN=${INFERSCOPE_TEST_DIR:-$HOME/.cache/inferscope/test-run}
# Where scripts/engine.sh keeps the engine (the same default and overrides).
ENGINE_ROOT=${ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/vllm-cpu}
mkdir -p "$RUN"; rm -f "$RUN/otlp-spans.jsonl"
COLLECTOR=""
cleanup() {
  scripts/clickhouse-cluster.sh stop >/dev/null 2>&1 || true
  [ -n "$COLLECTOR" ] && kill "$COLLECTOR" 2>/dev/null || true
  [ "${INFERSCOPE_SKIP_ENGINE:-0}" = 1 ] || scripts/engine.sh stop "$ENGINE_PORT" >/dev/null 2>&1 || true
  [ "${INFERSCOPE_SKIP_ENGINE:-0}" = 1 ] || scripts/engine.sh stop "$ENGINE2_PORT" >/dev/null 2>&1 || true
  [ "${INFERSCOPE_SKIP_ENGINE:-0}" = 1 ] || scripts/llamacpp.sh stop "$LLAMA_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Build while the engine starts (both take a while; the engine mostly waits on Python imports).
if [ "${INFERSCOPE_SKIP_ENGINE:-0}" != 1 ]; then
  # A collector left over from an earlier run would hold the port: stop it first.
  if [ -f "$RUN/collector.pid" ]; then
    old=$(cat "$RUN/collector.pid")
    grep -qa otlp_collector "/proc/$old/cmdline" 2>/dev/null && kill "$old" 2>/dev/null || true
  fi
  "$ENGINE_ROOT/venv/bin/python" scripts/otlp_collector.py --port "$OTLP_PORT" \
    --out "$RUN/otlp-spans.jsonl" > "$RUN/collector.log" 2>&1 &
  COLLECTOR=$!
  echo "$COLLECTOR" > "$RUN/collector.pid"
  for _ in $(seq 1 100); do
    grep -qs '"port"' "$RUN/collector.log" && break
    kill -0 "$COLLECTOR" 2>/dev/null || { cat "$RUN/collector.log" >&2; echo "[test] OTLP collector failed to start" >&2; exit 1; }
    sleep 0.1
  done
  scripts/engine.sh stop "$ENGINE_PORT" >/dev/null 2>&1 || true
  scripts/engine.sh stop "$ENGINE2_PORT" >/dev/null 2>&1 || true
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf OTEL_BSP_SCHEDULE_DELAY=200 \
    scripts/engine.sh start "$ENGINE_PORT" --otlp-traces-endpoint "http://127.0.0.1:$OTLP_PORT/v1/traces" \
    > "$RUN/engine-start.log" 2>&1 &
  ENGINE_STARTER=$!
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf OTEL_BSP_SCHEDULE_DELAY=200 \
    scripts/engine.sh start "$ENGINE2_PORT" --otlp-traces-endpoint "http://127.0.0.1:$OTLP_PORT/v1/traces" \
    > "$RUN/engine2-start.log" 2>&1 &
  ENGINE2_STARTER=$!
fi
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --all-targets
# deploy/: the Helm chart lints, renders to the committed plain manifests, validates against the
# Kubernetes schemas offline; the systemd units verify; every flag they use exists.
scripts/check-deploy.sh
if [ "${INFERSCOPE_SKIP_ENGINE:-0}" != 1 ]; then
  if wait "$ENGINE_STARTER"; then
    export INFERSCOPE_ENGINE_URL="http://127.0.0.1:$ENGINE_PORT"
    INFERSCOPE_ENGINE_PID=$(cat "$ENGINE_ROOT/server-$ENGINE_PORT.pid")
    export INFERSCOPE_ENGINE_PID
    export INFERSCOPE_OTLP_SPANS="$RUN/otlp-spans.jsonl"
    echo "[test] real engine up: $INFERSCOPE_ENGINE_URL (pid $INFERSCOPE_ENGINE_PID) after $(( $(date +%s) - t0 ))s"
  else
    cat "$RUN/engine-start.log" >&2
    echo "[test] the real engine did not start" >&2
    exit 1
  fi
  scripts/llamacpp.sh stop "$LLAMA_PORT" >/dev/null 2>&1 || true
  if scripts/llamacpp.sh start "$LLAMA_PORT" > "$RUN/llamacpp-start.log" 2>&1; then
    export INFERSCOPE_LLAMACPP_URL="http://127.0.0.1:$LLAMA_PORT"
    INFERSCOPE_LLAMACPP_PID=$(cat "${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/llamacpp/server-$LLAMA_PORT.pid")
    export INFERSCOPE_LLAMACPP_PID
    echo "[test] llama.cpp server up: $INFERSCOPE_LLAMACPP_URL (pid $INFERSCOPE_LLAMACPP_PID)"
  else
    cat "$RUN/llamacpp-start.log" >&2
    echo "[test] the llama.cpp server did not start" >&2
    exit 1
  fi
  if wait "$ENGINE2_STARTER"; then
    export INFERSCOPE_ENGINE2_URL="http://127.0.0.1:$ENGINE2_PORT"
    INFERSCOPE_ENGINE2_PID=$(cat "$ENGINE_ROOT/server-$ENGINE2_PORT.pid")
    export INFERSCOPE_ENGINE2_PID
    echo "[test] second engine up: $INFERSCOPE_ENGINE2_URL (pid $INFERSCOPE_ENGINE2_PID)"
  else
    cat "$RUN/engine2-start.log" >&2
    echo "[test] the second real engine did not start" >&2
    exit 1
  fi
fi
export INFERSCOPE_FIGURES="$RUN/figures.txt"
rm -f "$INFERSCOPE_FIGURES"
status=0
cargo test --no-fail-fast || status=$?
# A short run of every fuzz target (fuzz/README.md); its figures join the others.
scripts/fuzz.sh run >>"$INFERSCOPE_FIGURES" 2>"$RUN/fuzz.log" || { tail -40 "$RUN/fuzz.log" >&2; status=1; }
if [ -s "$INFERSCOPE_FIGURES" ]; then
  echo "[test] figures measured by the tests:"
  sed 's/^/[test]   /' "$INFERSCOPE_FIGURES"
fi
[ "$status" = 0 ] || exit "$status"
echo "[test] all done in $(( $(date +%s) - t0 ))s"
