#!/usr/bin/env bash
# llamacpp.sh -- the second real engine inferscope is tested against: llama-cpp-python's
# OpenAI-compatible server (one process; llama.cpp in libllama.so) serving a tiny f16 GGUF converted
# from the tiny local Llama that scripts/engine.sh setup builds (no model downloads).  Idempotent.
#
#   scripts/llamacpp.sh [all] [PORT]     install + convert + start + wait (default PORT 8790)
#   scripts/llamacpp.sh setup            install + convert only (install / convert: one step)
#   scripts/llamacpp.sh start PORT [extra llama_cpp.server args...]
#   scripts/llamacpp.sh stop  PORT       SIGTERM the server we started
#
# Env knobs: ROOT (~/.cache/inferscope/llamacpp), PYTHON (python3, for the venv),
#            ROOT_VLLM (~/.cache/inferscope/vllm-cpu: where engine.sh keeps tiny-llm/ and its venv),
#            HF_MODEL ($ROOT_VLLM/tiny-llm), CONVERT_PYTHON ($ROOT_VLLM/venv/bin/python: needs
#            torch, numpy, safetensors, transformers), MODEL_WAIT (s to wait for HF_MODEL, default
#            1200), N_CTX (512), N_THREADS (1), READY_TIMEOUT (s, default 120),
#            LLAMACPP_VERSION (0.3.36), CMAKE_ARGS (-DGGML_NATIVE=OFF: a portable build),
#            INTERRUPT_REQUESTS (false: the server's own default, true, ends a running stream early
#            with [DONE] as soon as another request waits; false queues requests one at a time).
# Needs: PyPI and Debian's packages (cmake, ninja-build, build-essential); the first install compiles
#        llama.cpp (~6 min on 2 cores); pip's cache (wheel included) stays under $ROOT/cache.
set -euo pipefail
CACHE_BASE=${XDG_CACHE_HOME:-$HOME/.cache}/inferscope
ROOT=${ROOT:-$CACHE_BASE/llamacpp}
ROOT_VLLM=${ROOT_VLLM:-$CACHE_BASE/vllm-cpu}
HF_MODEL=${HF_MODEL:-$ROOT_VLLM/tiny-llm}
CONVERT_PYTHON=${CONVERT_PYTHON:-$ROOT_VLLM/venv/bin/python}
PY=${PYTHON:-python3}
LLAMACPP_VERSION=${LLAMACPP_VERSION:-0.3.36}
GGUF=$ROOT/tiny-llm.gguf
SRC=$ROOT/src/llama_cpp_python-$LLAMACPP_VERSION
CMD=${1:-all}; [[ "$CMD" =~ ^[0-9]+$ ]] && CMD=all || shift || true
PORT=${1:-8790}; shift || true

export PIP_CACHE_DIR=$ROOT/cache/pip HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export TMPDIR=$ROOT/tmp
mkdir -p "$ROOT/tmp" "$ROOT/cache"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { printf '[llamacpp] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local apt=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
  # Update the lists only when the install fails (a fresh machine has none, or stale ones).
  "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

installed() {
  "$ROOT/venv/bin/python" - "$LLAMACPP_VERSION" <<'PYEOF' >/dev/null 2>&1
import importlib.metadata as m, sys
assert m.version("llama-cpp-python") == sys.argv[1]
import llama_cpp, llama_cpp.server.app  # loads libllama.so and the server's deps
PYEOF
}

install() {
  mkdir -p "$ROOT/src"
  local pkgs=(cmake ninja-build build-essential)
  # A venv needs ensurepip (Debian's python3 only has it with python3-venv).
  "$PY" -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
  # The sdist carries convert_hf_to_gguf.py (the wheel does not): download it once, unpack it.
  if [ ! -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    [ -x "$ROOT/venv/bin/pip" ] || { rm -rf "$ROOT/venv"; "$PY" -m venv "$ROOT/venv"; }
    "$ROOT/venv/bin/pip" download -q --no-binary llama-cpp-python --no-deps -d "$ROOT/cache/sdist" \
      "llama-cpp-python==$LLAMACPP_VERSION"
    tar -xzf "$ROOT/cache/sdist/llama_cpp_python-$LLAMACPP_VERSION.tar.gz" -C "$ROOT/src"
  fi
  installed && return 0
  apt_install "${pkgs[@]}"
  [ -x "$ROOT/venv/bin/pip" ] || { rm -rf "$ROOT/venv"; "$PY" -m venv "$ROOT/venv"; }
  log "building llama-cpp-python $LLAMACPP_VERSION (compiles llama.cpp, ~6 min on 2 cores)"
  local t0; t0=$(date +%s)
  # Installed by name, not from the downloaded file: pip caches the wheel it builds only then.
  CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF} "$ROOT/venv/bin/pip" install -q \
    "llama-cpp-python[server]==$LLAMACPP_VERSION"
  installed || { echo "llama-cpp-python $LLAMACPP_VERSION installed but does not import" >&2; exit 1; }
  log "installed in $(( $(date +%s) - t0 ))s"
}

wait_model() {
  local t0 said=""; t0=$(date +%s)
  # engine.sh writes tokenizer files, then config + model.safetensors: wait for the last to settle.
  until [ -f "$HF_MODEL/tokenizer.json" ] && [ -f "$HF_MODEL/config.json" ] && [ -f "$HF_MODEL/model.safetensors" ] \
        && [ "$(stat -c %s "$HF_MODEL/model.safetensors")" = "$(sleep 2; stat -c %s "$HF_MODEL/model.safetensors")" ]; do
    [ -n "$said" ] || { log "waiting for $HF_MODEL/model.safetensors (scripts/engine.sh setup builds it)"; said=1; }
    (( $(date +%s) - t0 > ${MODEL_WAIT:-1200} )) && {
      echo "no tiny model at $HF_MODEL after ${MODEL_WAIT:-1200}s: run scripts/engine.sh setup" >&2; exit 1; }
    sleep 5
  done
}

convert() {
  [ -s "$GGUF" ] && return 0
  wait_model
  [ -x "$CONVERT_PYTHON" ] || { echo "no converter python $CONVERT_PYTHON (set CONVERT_PYTHON)" >&2; exit 1; }
  local lc=$SRC/vendor/llama.cpp
  [ -f "$lc/convert_hf_to_gguf.py" ] || { echo "no $lc/convert_hf_to_gguf.py: run $0 install" >&2; exit 1; }
  # The converter knows BPE pre-tokenizers only by the hash of a fixed text's encoding, and a locally
  # trained ByteLevel BPE has none it knows: call it "gpt-2" (what a ByteLevel BPE is) when the
  # lookup fails, by wrapping get_vocab_base_pre rather than editing the vendored file.
  cat > "$ROOT/convert_tiny.py" <<'PYEOF'
import importlib.util, inspect, os, sys
lc, model, out = sys.argv[1:4]
sys.path[:0] = [lc, os.path.join(lc, "gguf-py")]   # conversion/ (when present) and gguf-py/
spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", os.path.join(lc, "convert_hf_to_gguf.py"))
conv = importlib.util.module_from_spec(spec); sys.modules["convert_hf_to_gguf"] = conv
spec.loader.exec_module(conv)

def wrap(orig):
    def get_vocab_base_pre(self, tokenizer):
        try:
            return orig(self, tokenizer)
        except NotImplementedError:
            print("convert_tiny: unknown BPE pre-tokenizer, using gpt-2 (ByteLevel)", file=sys.stderr)
            return "gpt-2"
    return get_vocab_base_pre

# get_vocab_base_pre lives in conversion/base.py (0.3.36) or convert_hf_to_gguf.py (older): patch every
# class defining it in any module loaded from the llama.cpp folder.
patched = {}
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None) or ""
    if mod is not conv and not os.path.abspath(f).startswith(os.path.abspath(lc) + os.sep):
        continue
    for cname, cls in inspect.getmembers(mod, inspect.isclass):
        if "get_vocab_base_pre" in cls.__dict__ and id(cls) not in patched:
            cls.get_vocab_base_pre = wrap(cls.__dict__["get_vocab_base_pre"])
            patched[id(cls)] = f"{cls.__module__}.{cls.__qualname__}"
print("convert_tiny: patched", sorted(patched.values()), file=sys.stderr)
if not patched:
    sys.exit("convert_tiny: found no get_vocab_base_pre to patch in " + lc)
sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f16"]
conv.main()
PYEOF
  log "converting $HF_MODEL to $GGUF"
  local t0; t0=$(date +%s)
  rm -f "$ROOT/tiny-llm.tmp.gguf"
  PYTHONPATH="$lc/gguf-py${PYTHONPATH:+:$PYTHONPATH}" \
    "$CONVERT_PYTHON" "$ROOT/convert_tiny.py" "$lc" "$HF_MODEL" "$ROOT/tiny-llm.tmp.gguf" > "$ROOT/convert.log" 2>&1 \
    || { tail -30 "$ROOT/convert.log" >&2; echo "GGUF conversion failed (log $ROOT/convert.log)" >&2; exit 1; }
  mv "$ROOT/tiny-llm.tmp.gguf" "$GGUF"
  log "converted in $(( $(date +%s) - t0 ))s: $GGUF ($(stat -c %s "$GGUF") bytes)"
}

start() {
  local url="http://127.0.0.1:$PORT/v1/models"
  if curl -sf "$url" >/dev/null 2>&1; then echo "already serving on $PORT"; return 0; fi
  [ -s "$GGUF" ] || { echo "no $GGUF: run $0 setup" >&2; exit 1; }
  cd "$ROOT"
  nohup "$ROOT/venv/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias tiny-llm \
    --host 127.0.0.1 --port "$PORT" --n_ctx "${N_CTX:-512}" --n_threads "${N_THREADS:-1}" \
    --interrupt_requests "${INTERRUPT_REQUESTS:-false}" "$@" > "$ROOT/server-$PORT.log" 2>&1 &
  echo $! > "$ROOT/server-$PORT.pid"
  local t0; t0=$(date +%s)
  until curl -sf "$url" >/dev/null 2>&1; do
    kill -0 "$(cat "$ROOT/server-$PORT.pid")" 2>/dev/null || { tail -40 "$ROOT/server-$PORT.log" >&2; echo "server died" >&2; exit 1; }
    (( $(date +%s) - t0 > ${READY_TIMEOUT:-120} )) && { echo "not ready after ${READY_TIMEOUT:-120}s (log $ROOT/server-$PORT.log)" >&2; exit 1; }
    sleep 0.5
  done
  echo "llama.cpp ready on http://127.0.0.1:$PORT after $(( $(date +%s) - t0 ))s, pid $(cat "$ROOT/server-$PORT.pid"), log $ROOT/server-$PORT.log"
}

stop() {
  local f="$ROOT/server-$PORT.pid"; [ -f "$f" ] || { echo "no pid file $f"; return 0; }
  local pid; pid=$(cat "$f")
  # A pid file that outlived its server (a reboot) may name an unrelated process now.
  if kill -0 "$pid" 2>/dev/null && grep -qa llama_cpp "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"; for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && { echo "pid $pid still alive after 30s" >&2; return 1; }
    echo "stopped server on $PORT (pid $pid)"
  else
    echo "stale pid file for $PORT (pid $pid is no llama_cpp server): removed"
  fi
  rm -f "$f"
}

case "$CMD" in
  all)     install; convert; start "$@" ;;
  setup)   install; convert ;;
  install) install ;;
  convert) convert ;;
  start)   start "$@" ;;
  stop)    stop ;;
  *) echo "usage: $0 [all|setup|install|convert|start|stop] [PORT] [extra llama_cpp.server args]" >&2; exit 2 ;;
esac
