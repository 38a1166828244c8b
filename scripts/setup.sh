#!/usr/bin/env bash
# Idempotent set-up for inferscope on Debian 12 (run as root, or with sudo available).
#
#   scripts/setup.sh [base|clickhouse|engine|all]   (default: base clickhouse)
#
# base        rust-src for the eBPF nightly, bpf-linker 0.13 built against that nightly's libLLVM
#             (cached under ~/.cache, rebuilt only when the LLVM major changes), tracefs mounted,
#             tcpdump/tshark for wire-fidelity tests.
# clickhouse  Debian's clickhouse-server/-client and a local server on 127.0.0.1 with a data directory
#             the project owns (INFERSCOPE_CH_DIR, default ~/.cache/inferscope/clickhouse).
# engine      the real vLLM (CPU build, tiny local model) via scripts/engine.sh setup.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${INFERSCOPE_CACHE:-$HOME/.cache/inferscope}
mkdir -p "$CACHE"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { printf '[setup] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local stamp="$CACHE/.apt-updated"
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
    $SUDO apt-get update -qq && touch "$stamp"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_base() {
  # rust-src for the nightly that builds the eBPF object (aya-build runs `cargo +nightly -Z build-std`).
  local nightly=${INFERSCOPE_NIGHTLY:-nightly}
  rustup toolchain list | grep -q "^$nightly" || rustup toolchain install "$nightly" --profile minimal
  rustup component list --toolchain "$nightly" --installed | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain "$nightly"

  # bpf-linker must link against the same LLVM major as nightly's rustc.
  local sysroot llvm_lib major prefix
  sysroot=$(rustc +"$nightly" --print sysroot)
  llvm_lib=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1)
  [ -n "$llvm_lib" ] || { echo "setup: no libLLVM.so.* in $sysroot/lib" >&2; exit 1; }
  major=$(basename "$llvm_lib" | sed -E 's/libLLVM\.so\.([0-9]+).*/\1/')
  prefix=$HOME/.cache/llvm-for-bpf-linker
  local stamp=$prefix/bpf-linker-llvm-$major.stamp
  if [ ! -f "$stamp" ] || [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
    log "building bpf-linker 0.13.0 against LLVM $major (a few minutes, cached)"
    mkdir -p "$prefix/lib"
    cp -f "$llvm_lib" "$prefix/lib/"
    ln -sf "$(basename "$llvm_lib")" "$prefix/lib/libLLVM.so"
    LLVM_PREFIX=$prefix cargo install bpf-linker@0.13.0 --locked --force \
      --no-default-features --features "llvm-$major" >/dev/null
    touch "$stamp"
  fi

  # tracefs for tracepoint attach.
  if [ ! -d /sys/kernel/tracing/events ]; then
    $SUDO mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "could not mount tracefs"
  fi
  # python3 runs the test fixtures; tcpdump/tshark give the wire truth; setpriv (util-linux)
  # drops privileges in the non-root test.
  apt_install python3 tcpdump curl ca-certificates util-linux
}

setup_clickhouse() {
  apt_install clickhouse-server clickhouse-client
  "$HERE/clickhouse.sh" start
}

case "${1:-default}" in
  base) setup_base ;;
  clickhouse) setup_clickhouse ;;
  engine) "$HERE/engine.sh" setup ;;
  default) setup_base; setup_clickhouse ;;
  all) setup_base; setup_clickhouse; "$HERE/engine.sh" setup ;;
  *) echo "usage: $0 [base|clickhouse|engine|all]" >&2; exit 2 ;;
esac
