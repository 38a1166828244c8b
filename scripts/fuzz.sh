#!/usr/bin/env bash
# Fuzzing the parsers (fuzz/README.md).
#
#   scripts/fuzz.sh setup          nightly + cargo-fuzz (cached in ~/.cargo/bin)
#   scripts/fuzz.sh run [RUNS]     every target: FUZZ_SECONDS (default 20) each, or RUNS executions
#                                  each; prints one figure line per target; fails on a crash
#   scripts/fuzz.sh cmin           minimizes each working corpus (fuzz/corpus/, ignored) into the
#                                  committed one (fuzz/seeds/), which every run starts from
set -euo pipefail
cd "$(dirname "$0")/.."
NIGHTLY=${INFERSCOPE_NIGHTLY:-nightly}
TARGETS="http_conn sse_scan vllm_ipc ring_record ingest_batch"
export INFERSCOPE_EBPF_STUB=1

setup() {
  rustup toolchain list | grep -q "^$NIGHTLY" || rustup toolchain install "$NIGHTLY" --profile minimal
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
}

seeds() {
  local d=fuzz/corpus t
  mkdir -p $d/http_conn $d/sse_scan $d/vllm_ipc $d/ring_record $d/ingest_batch
  # The committed, minimized corpus (scripts/fuzz.sh cmin) first; then the hand-written seeds.
  for t in $TARGETS; do
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$d/$t/" 2>/dev/null || true
  done
  # http_conn ops: [op][len lo][len hi][extra][data]; op 0 read, 1 write.
  local req='POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n{"model":"m","stream":true}'
  local resp='HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\ndata: {"id":"cmpl-1","x":1}\r\n\r\n0\r\n\r\n'
  [ -s $d/http_conn/seed-sse ] || {
    printf '\x00\x52\x00\x00'"$req"; printf '\x01\x7a\x00\x00'"$resp"; printf '\x03\x00\x00\x00'
  } > $d/http_conn/seed-sse
  [ -s $d/sse_scan/seed ] || printf '\x02\x05\x11data: {"model":"tiny","t":"a"}\n\ndata: [DONE]\r\n\r\n' > $d/sse_scan/seed
  [ -s $d/vllm_ipc/seed ] || printf '\x00\x30\x01\x01\x00\x02\x00\x00\x00\x00\x00\x00\x01{\xdc\x00\x16\xd9 cmpl-9f0db1b837668a6b-0-8c2050b7\x95\x01\xcd\x01\x1dQ\x09\x30\x01\x01\x00\x02\x00\x00\x00\x00\x00\x00\x01{\xdc\x00\x16\xd9 cmpl-9f0db1b837668a6b-0-8c2050b7\x95\x01\xcd\x01\x1dQ\x01\x03\x00\x01\x02\x0a\x03\x00\x01\x02' > $d/vllm_ipc/seed
  [ -s $d/ring_record/seed ] || head -c 256 /dev/zero > $d/ring_record/seed
  [ -s $d/ingest_batch/seed ] || printf '\x0a\x01n\x12\x01b\x18\x01\x22\x08\x0a\x02\x0a\x00\x12\x02\x0a\x00' > $d/ingest_batch/seed
}

run() {
  local runs=${1:-0} secs=${FUZZ_SECONDS:-20} t
  seeds
  cargo +"$NIGHTLY" fuzz build --sanitizer none --release 2>&1 | grep -E "^(error|warning: unused)" -A5 || true
  for t in $TARGETS; do
    local lim=(-max_total_time="$secs")
    [ "$runs" -gt 0 ] && lim=(-runs="$runs")
    local log=fuzz/target/$t.log
    mkdir -p fuzz/target
    if ! cargo +"$NIGHTLY" fuzz run --sanitizer none --release "$t" "fuzz/corpus/$t" -- \
        "${lim[@]}" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
      tail -40 "$log" >&2
      echo "[fuzz] $t: CRASH (input under fuzz/artifacts/$t)" >&2
      exit 1
    fi
    local n s
    n=$(grep 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $NF}')
    s=$(grep 'stat::average_exec_per_sec' "$log" | tail -1 | awk '{print $NF}')
    echo "[fuzz] $t: $n executions clean ($s/s), corpus $(ls "fuzz/corpus/$t" | wc -l) inputs"
  done
}

cmin() {
  local t n
  seeds
  for t in $TARGETS; do
    cargo +"$NIGHTLY" fuzz cmin --sanitizer none --release "$t" "fuzz/corpus/$t" -- -max_len=8192 \
      >"fuzz/target/$t.cmin.log" 2>&1 || { tail -20 "fuzz/target/$t.cmin.log" >&2; exit 1; }
    rm -rf "fuzz/seeds/$t"; mkdir -p "fuzz/seeds/$t"
    cp fuzz/corpus/"$t"/* "fuzz/seeds/$t/"
    n=$(ls "fuzz/seeds/$t" | wc -l)
    echo "[fuzz] $t: minimized corpus $n inputs, $(du -sk "fuzz/seeds/$t" | cut -f1) KiB"
  done
}

case "${1:-run}" in
  setup) setup ;;
  run) shift; setup; run "${1:-0}" ;;
  cmin) setup; mkdir -p fuzz/target; cmin ;;
  *) echo "usage: $0 setup|run [RUNS]|cmin" >&2; exit 2 ;;
esac
