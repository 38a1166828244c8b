#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine (run as root: the eBPF tests need it).
# Idempotent: installs what is missing (apt packages, nightly rust-src, bpf-linker, ClickHouse),
# then runs fmt, clippy and every test (default members; probe-ebpf is built by node-probe). With INFERSCOPE_REQUIRE_BPF=1 (set by .ci/run) an eBPF
# test that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }
t0=$(date +%s)
scripts/setup.sh
echo "[test] set-up done in $(( $(date +%s) - t0 ))s"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --no-fail-fast
echo "[test] all done in $(( $(date +%s) - t0 ))s"
