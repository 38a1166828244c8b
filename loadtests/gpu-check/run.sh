#!/usr/bin/env bash
# loadtests/gpu-check/run.sh: node-probe on a real GPU machine, against ground truth.
#
#   bash loadtests/gpu-check/run.sh [NODE_PROBE]        (README.md beside this file)
#
# NODE_PROBE: the node-probe binary (default $NODE_PROBE, else target/release/node-probe in the
# repo, built beforehand with `cargo build --release -p node-probe`). Everything goes under
# ${OUT:-./gpu-check-out}. Stages, each with its own timeout, 8 minutes at most:
#   0 preflight (exit 2 when root, a GPU, torch with CUDA or node-probe is missing)
#   1 node-probe        2 gpu_engine.py (tiny Llama, CUDA graphs, vLLM's async pattern)
#   3 load (48 req.)    4 CUPTI counts of ~20 steps (torch.profiler, SIGUSR1 to the core)
#   5 A/B overhead (the same load without and with node-probe)
#   6 NCCL (nccl_pair.py)   7 NVML cost per call   8 compare.py -> summary.md, summary.json
# Environment: PYTHON (python3), GPU_CHECK_PORT (18080), GPU_CHECK_BUDGET_S (440),
# GPU_CHECK_AB_S (30: seconds of load per A/B arm), GPU_CHECK_AB_ROUNDS (2),
# GPU_CHECK_ENGINE_ARGS (extra gpu_engine.py options), GPU_CHECK_PACK (1: raw files into
# raw.tar.gz at the end, so that $OUT holds at most 8 files; 0: leave them loose),
# GPU_CHECK_REHEARSAL (1: a rehearsal of the script on a machine without a GPU: the engine runs
# on the CPU without graphs, with small loads; a missing GPU is not fatal, torch is required).
# No network is used beyond 127.0.0.1.
set -euo pipefail

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -n ${1:-} ]]; then
    NODE_PROBE=$1
elif [[ -z ${NODE_PROBE:-} ]]; then
    NODE_PROBE=$REPO/target/release/node-probe
fi
[[ $NODE_PROBE == /* ]] || NODE_PROBE=$PWD/$NODE_PROBE
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
PORT=${GPU_CHECK_PORT:-18080}
BUDGET=${GPU_CHECK_BUDGET_S:-440}
AB_S=${GPU_CHECK_AB_S:-30}
AB_ROUNDS=${GPU_CHECK_AB_ROUNDS:-2}
PACK=${GPU_CHECK_PACK:-1}
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
# The loads (stage 3: MAIN_REQUESTS; stage 4: CUPTI_REQUESTS; prompts of 16..MAX_PROMPT words).
MAIN_REQUESTS=48 CUPTI_REQUESTS=16 MAX_PROMPT=1024 MAX_TOKENS=32
if ((REHEARSAL)); then
    MAIN_REQUESTS=8 CUPTI_REQUESTS=4 MAX_PROMPT=128 MAX_TOKENS=4
    AB_S=${GPU_CHECK_AB_S:-8}
fi
# shellcheck disable=SC2206 # word splitting intended: a list of options
ENGINE_ARGS=(${GPU_CHECK_ENGINE_ARGS:-})
((REHEARSAL)) && ENGINE_ARGS=(--device cpu --no-graphs "${ENGINE_ARGS[@]}")
TARGETS='gpu_engine\.py|nccl_pair\.py'

cd "$REPO"
exec > >(tee -a "$OUT/run.log") 2>&1
echo "gpu-check: out=$OUT node-probe=$NODE_PROBE python=$PY budget=${BUDGET}s"
((REHEARSAL)) && echo "gpu-check: REHEARSAL: CPU engine, small loads; the numbers mean nothing"

PROBE_PID="" ENGINE_PID="" CORE_PID="" BG_PID="" PREFLIGHT_DONE=0
STAGE="" STAGE_T0=0 STAGE_M0=0

# ---- helpers ----------------------------------------------------------------------------------

mono() { "$PY" -c 'import time; print(time.monotonic_ns())' 2>/dev/null || echo 0; }
left() { echo $((BUDGET - SECONDS)); }
have_time() { (($(left) >= $1)); }

stage_begin() { # NAME BUDGET_S
    STAGE=$1 STAGE_T0=$SECONDS STAGE_M0=$(mono)
    echo "== stage $1 (budget ${2}s, $(left)s left)"
}
stage_end() { # STATUS NOTE: one row of stages.tsv (compare.py says which stage failed and why)
    local note=${2:-}
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$STAGE" "$1" $((SECONDS - STAGE_T0)) "$STAGE_M0" \
        "$(mono)" "${note//$'\t'/ }" >>"$OUT/stages.tsv"
    echo "   stage $STAGE: $1${note:+ ($note)} in $((SECONDS - STAGE_T0))s"
}
skip_stage() { # NAME WHY
    STAGE=$1 STAGE_T0=$SECONDS STAGE_M0=0
    stage_end skipped "$2"
}

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() { # PID SIGNAL GRACE_S: signal, wait up to GRACE_S, then SIGKILL; reaps it
    local pid=$1 sig=$2 grace=$3 i
    alive "$pid" || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
        alive "$pid" || break
        sleep 0.2
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

http_get() { # URL -> body on stdout; fails on error
    "$PY" -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1" 2>/dev/null
}

start_probe() { # OUTFILE LOGFILE METRICS_PORT ARGS...: appends; waits until it attached (20 s)
    local out=$1 log=$2 mport=$3 i
    shift 3
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$NODE_PROBE" --cmdline "$TARGETS" --port "$PORT" \
        --metrics-listen "127.0.0.1:$mport" --rescan-s 1 --duration-s $(($(left) + 60)) \
        "$@" >>"$out" 2>>"$log" &
    PROBE_PID=$!
    for ((i = 0; i < 100; i++)); do
        if grep -q "node-probe attached" "$log" 2>/dev/null; then
            return 0
        fi
        if ! alive "$PROBE_PID"; then
            wait "$PROBE_PID" 2>/dev/null || true
            PROBE_PID=""
            echo "   node-probe exited at start-up; the end of $log:"
            tail -n 5 "$log" | sed 's/^/     /'
            return 1
        fi
        sleep 0.2
    done
    echo "   node-probe did not report 'node-probe attached' in 20 s"
    stop_probe
    return 1
}

stop_probe() { # SIGINT: it flushes what it holds and logs its counters
    stop_pid "$PROBE_PID" INT 10
    PROBE_PID=""
}

wait_libcuda() { # LOG TIMEOUT_S: until node-probe attached its uprobes to libcuda.so
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        grep -Eq 'uprobes attached.*libcuda\.so' "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

start_engine() { # waits for the frontend's JSON line and /health (bounded)
    local i line=""
    "$PY" -u "$HERE/gpu_engine.py" vllm serve --port "$PORT" --truth "$OUT/truth.jsonl" \
        --cupti-out "$OUT/cupti.json" "${ENGINE_ARGS[@]}" >"$OUT/engine.json" \
        2>>"$OUT/engine.log" &
    ENGINE_PID=$!
    for ((i = 0; i < 900; i++)); do # 180 s: torch import, model, graph capture
        line=$(head -n 1 "$OUT/engine.json" 2>/dev/null || true)
        [[ -n $line ]] && break
        alive "$ENGINE_PID" || break
        sleep 0.2
    done
    if [[ -z $line ]]; then
        echo "   the engine did not start; the end of engine.log:"
        tail -n 15 "$OUT/engine.log" | sed 's/^/     /'
        stop_engine
        return 1
    fi
    CORE_PID=$("$PY" -c 'import json, sys; print(json.loads(sys.argv[1])["core_pid"])' "$line")
    for ((i = 0; i < 50; i++)); do
        http_get "http://127.0.0.1:$PORT/health" >/dev/null && return 0
        sleep 0.2
    done
    echo "   the engine does not answer GET /health"
    return 1
}

stop_engine() { # SIGTERM to the frontend: it closes the socket, the core exits on EOF
    stop_pid "$ENGINE_PID" TERM 15
    stop_pid "$CORE_PID" TERM 3
    ENGINE_PID="" CORE_PID=""
}

run_load() { # OUTFILE TIMEOUT_S LOAD_ARGS...
    local out=$1 t=$2
    shift 2
    timeout --kill-after=5 "$t" "$PY" "$HERE/load.py" --port "$PORT" "$@" >"$out" \
        2>>"$OUT/load.log"
}

finish() { # the EXIT trap: stop everything, compare, pack
    local rc=$?
    trap - EXIT
    set +e
    stop_pid "$BG_PID" TERM 2
    stop_probe
    stop_engine
    if ((PREFLIGHT_DONE)); then
        STAGE=compare STAGE_T0=$SECONDS STAGE_M0=$(mono)
        echo "== stage compare"
        if timeout 30 "$PY" "$HERE/compare.py" --out "$OUT"; then
            stage_end ok
        else
            stage_end failed "compare.py exited $?"
        fi
        [[ -f $OUT/summary.md ]] && cat "$OUT/summary.md"
        if [[ $PACK == 1 ]]; then
            (
                cd "$OUT" || exit 0
                shopt -s nullglob
                files=()
                for f in *; do
                    case $f in summary.md | summary.json | env.txt | run.log | raw.tar.gz) ;;
                    *) [[ -f $f ]] && files+=("$f") ;;
                    esac
                done
                if ((${#files[@]})) && tar czf raw.tar.gz "${files[@]}"; then
                    rm -f "${files[@]}"
                    echo "gpu-check: raw files packed into $OUT/raw.tar.gz"
                fi
            )
        fi
    fi
    echo "gpu-check: done in ${SECONDS}s (exit $rc); outputs in $OUT"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---- 0. preflight -----------------------------------------------------------------------------

preflight() {
    local env=$OUT/env.txt fatal=() l caps py_out py_rc=0
    : >"$env"
    note() { printf '%s\n' "$*" >>"$env"; }
    missing() { printf 'MISSING: %s\n' "$*" | tee -a "$env"; }
    note "# gpu-check preflight $(date -u +%FT%TZ) on $(hostname)"
    if [[ $(id -u) == 0 ]]; then
        note "uid: 0 (root)"
    else
        missing "root (uid $(id -u)): node-probe loads eBPF programs and uprobes"
        fatal+=(root)
    fi
    note "kernel: $(uname -srm)"
    if grep -qi gvisor /proc/version 2>/dev/null || [[ $(uname -r) == 4.4.0 ]]; then
        missing "eBPF: this looks like gVisor (kernel $(uname -r)), which has none; node-probe cannot run"
    fi
    if [[ -r /sys/kernel/btf/vmlinux ]]; then
        note "btf: /sys/kernel/btf/vmlinux ($(stat -c %s /sys/kernel/btf/vmlinux) bytes)"
    else
        missing "kernel BTF (/sys/kernel/btf/vmlinux): node-probe needs it (CONFIG_DEBUG_INFO_BTF)"
    fi
    if [[ -d /sys/kernel/tracing/events || -d /sys/kernel/debug/tracing/events ]]; then
        note "tracefs: mounted"
    else
        missing "tracefs (/sys/kernel/tracing): node-probe reads tracepoint formats there (mount -t tracefs tracefs /sys/kernel/tracing)"
    fi
    if grep -q ' /sys/fs/bpf bpf ' /proc/mounts 2>/dev/null; then
        note "bpffs: mounted at /sys/fs/bpf"
    else
        note "bpffs: not mounted at /sys/fs/bpf (node-probe pins nothing there; informational)"
    fi
    if [[ -r /sys/kernel/security/lockdown ]]; then
        l=$(cat /sys/kernel/security/lockdown)
        note "lockdown: $l"
        [[ $l == *"[none]"* ]] ||
            missing "kernel lockdown is on ($l): eBPF reads of kernel memory are refused"
    else
        note "lockdown: no /sys/kernel/security/lockdown (no lockdown LSM, or securityfs not mounted)"
    fi
    note "kernel.unprivileged_bpf_disabled: $(cat /proc/sys/kernel/unprivileged_bpf_disabled 2>/dev/null || echo '?') (irrelevant as root)"
    note "kernel.perf_event_paranoid: $(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?')"
    caps=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    note "CapEff: $caps"
    if [[ -n $caps ]]; then
        # CAP_SYS_ADMIN (21), or CAP_BPF (39) with CAP_PERFMON (38).
        if ! (((0x$caps >> 21 & 1) || ((0x$caps >> 39 & 1) && (0x$caps >> 38 & 1)))); then
            missing "capabilities: neither CAP_SYS_ADMIN nor CAP_BPF+CAP_PERFMON in CapEff $caps"
        fi
    fi
    if command -v nvidia-smi >/dev/null; then
        note "--- nvidia-smi -q (head)"
        timeout 10 nvidia-smi -q 2>&1 | head -n 60 >>"$env" || true
        note "---"
        l=$(timeout 10 nvidia-smi -L 2>/dev/null || true)
        if [[ $l == *GPU* ]]; then
            note "gpus: $l"
        else
            missing "GPU: nvidia-smi -L lists none"
            ((REHEARSAL)) || fatal+=(GPU)
        fi
    elif compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
        missing "nvidia-smi (not on PATH; /dev/nvidia* exists)"
    else
        missing "GPU: no nvidia-smi and no /dev/nvidia* device"
        ((REHEARSAL)) || fatal+=(GPU)
    fi
    l=$(ldconfig -p 2>/dev/null | awk '/libnvidia-ml\.so\.1 / {print $NF; exit}')
    note "libnvidia-ml.so.1: ${l:-not in the ldconfig cache}"
    if command -v "$PY" >/dev/null; then
        py_out=$(timeout 40 "$PY" "$HERE/preflight.py" 2>&1) || py_rc=$?
        printf '%s\n' "$py_out" >>"$env"
        printf '%s\n' "$py_out" | grep '^MISSING:' || true
        # 3: torch without a usable GPU (tolerated by a rehearsal), 4: no torch at all.
        if ((py_rc != 0)) && ! ((REHEARSAL && py_rc == 3)); then
            ((py_rc == 124)) && missing "python preflight timed out after 40 s"
            fatal+=(torch-CUDA)
        fi
    else
        missing "python ($PY not found)"
        fatal+=(torch-CUDA)
    fi
    if [[ -x $NODE_PROBE ]]; then
        if l=$(timeout 5 "$NODE_PROBE" --version 2>&1); then
            note "node-probe: $NODE_PROBE ($l)"
        else
            missing "node-probe at $NODE_PROBE does not run here: ${l:0:200}"
            fatal+=(node-probe)
        fi
    else
        missing "node-probe binary at $NODE_PROBE (build it beforehand: cargo build --release -p node-probe; on the device machine it arrives through run's carry of target/release/node-probe)"
        fatal+=(node-probe)
    fi
    for t in timeout tar grep awk; do
        command -v "$t" >/dev/null || { missing "$t"; fatal+=("$t"); }
    done
    if ((${#fatal[@]})); then
        echo "preflight: missing ${fatal[*]}: stopping before anything else (exit 2); see $env"
        exit 2
    fi
    echo "preflight: ok ($env)"
}

STAGE=preflight STAGE_T0=$SECONDS
echo "== stage preflight (budget 10s)"
: >"$OUT/stages.tsv"
preflight
PREFLIGHT_DONE=1
STAGE_M0=$(mono)
stage_end ok

# ---- 1. node-probe ----------------------------------------------------------------------------

stage_begin probe 20
PROBE_OK=0
rm -f "$OUT/probe.jsonl" "$OUT/probe.log"
# --requests: request records with their engine steps; --print-events --format json adds every
# event, among them one `gpu_step` line per GPU step (and NCCL lines, where the build has them).
if start_probe "$OUT/probe.jsonl" "$OUT/probe.log" 9465 --requests --print-events --format json; then
    PROBE_OK=1
    stage_end ok "pid $PROBE_PID"
else
    stage_end failed "node-probe did not start: the stages below run without it"
fi

# ---- 2. engine --------------------------------------------------------------------------------

stage_begin engine 180
rm -f "$OUT/truth.jsonl" "$OUT/cupti.json"
if ! start_engine; then
    stage_end failed "gpu_engine.py did not start (engine.log)"
    exit 1
fi
note=""
if ((PROBE_OK)); then
    if wait_libcuda "$OUT/probe.log" 15; then
        note="node-probe attached to libcuda"
    else
        note="node-probe did not attach uprobes to libcuda.so in 15 s"
    fi
fi
stage_end ok "core pid $CORE_PID${note:+; $note}"

# ---- 3. load ----------------------------------------------------------------------------------

stage_begin load 100
if run_load "$OUT/load.json" 100 --requests "$MAIN_REQUESTS" --clients 8 --min-clients 4 \
    --min-prompt 16 --max-prompt "$MAX_PROMPT" --max-tokens "$MAX_TOKENS" --seed 1 \
    --timeout-s 90 --label main; then
    stage_end ok
else
    stage_end failed "load.py exited $? (load.log)"
fi

# ---- 4. CUPTI ---------------------------------------------------------------------------------

if have_time 150; then
    stage_begin cupti 40
    kill -USR1 "$CORE_PID" # the core profiles its next 20 steps, then writes cupti.json
    # In the background, as a plain command: $! is timeout's pid, which passes a TERM on.
    timeout --kill-after=5 40 "$PY" "$HERE/load.py" --port "$PORT" --requests "$CUPTI_REQUESTS" \
        --clients 8 --min-clients 8 --min-prompt 16 --max-prompt "$MAX_PROMPT" \
        --max-tokens "$MAX_TOKENS" --seed 2 --timeout-s 35 --label cupti \
        >"$OUT/cupti_load.json" 2>>"$OUT/load.log" &
    BG_PID=$!
    for ((i = 0; i < 175; i++)); do # 35 s
        [[ -s $OUT/cupti.json ]] && break
        sleep 0.2
    done
    for ((i = 0; i < 50; i++)); do # let the load end by itself (10 s)
        alive "$BG_PID" || break
        sleep 0.2
    done
    stop_pid "$BG_PID" TERM 5
    BG_PID=""
    if grep -q '"error": null' "$OUT/cupti.json" 2>/dev/null; then
        stage_end ok
    elif [[ -s $OUT/cupti.json ]]; then
        stage_end failed "$(grep -o '"error": "[^"]*"' "$OUT/cupti.json" | head -c 300)"
    else
        stage_end failed "no cupti.json in 35 s"
    fi
    if ! alive "$CORE_PID"; then # the profiler can take the core down: A/B needs an engine
        echo "   the engine core is gone after the CUPTI stage; restarting the engine"
        stop_engine
        start_engine || echo "   the engine did not restart: the A/B stage will fail"
    fi
else
    skip_stage cupti "not enough time left"
fi

if ((PROBE_OK)); then
    http_get "http://127.0.0.1:9465/metrics" >"$OUT/probe_metrics.txt" || true
    stop_probe
fi

# ---- 5. A/B overhead --------------------------------------------------------------------------

per=$((AB_S / AB_ROUNDS))
if have_time $((2 * AB_S + 15 * AB_ROUNDS + 110)); then
    stage_begin ab $((2 * AB_S + 15 * AB_ROUNDS))
    rm -f "$OUT"/ab_*.json "$OUT/probe_ab.jsonl" "$OUT/probe_ab.log"
    ab_note=""
    for ((r = 1; r <= AB_ROUNDS; r++)); do
        arms="off on"
        ((r % 2)) || arms="on off" # alternate the order: drifts do not favour one arm
        for arm in $arms; do
            if [[ $arm == on ]]; then
                if ! start_probe "$OUT/probe_ab.jsonl" "$OUT/probe_ab.log" 9466 --requests; then
                    ab_note="node-probe did not start for round $r"
                    continue
                fi
                wait_libcuda "$OUT/probe_ab.log" 10 || ab_note="no libcuda uprobes in round $r"
            fi
            run_load "$OUT/ab_${arm}_$r.json" $((per + 40)) --requests 0 --duration-s "$per" \
                --clients 8 --min-clients 4 --min-prompt 16 --max-prompt "$MAX_PROMPT" \
                --max-tokens "$MAX_TOKENS" --seed $((10 + r)) --timeout-s $((per + 30)) --label "$arm" ||
                ab_note="load.py failed in $arm/$r"
            if [[ $arm == on ]]; then stop_probe; fi
        done
    done
    timeout 30 "$PY" "$HERE/compare.py" --out "$OUT" --only overhead || ab_note="overhead: compare.py failed"
    if [[ -z $ab_note ]]; then stage_end ok; else stage_end partial "$ab_note"; fi
else
    skip_stage ab "not enough time left"
fi

stop_engine # frees the GPU for NCCL

# ---- 6. NCCL ----------------------------------------------------------------------------------

if have_time 110; then
    stage_begin nccl 75
    rm -f "$OUT/probe_nccl.jsonl" "$OUT/probe_nccl.log" "$OUT/nccl_truth.json"
    settle=0
    if start_probe "$OUT/probe_nccl.jsonl" "$OUT/probe_nccl.log" 9467 --requests \
        --print-events --format json; then
        settle=3 # each rank waits for node-probe's 1 s rescan to attach to libcuda/libnccl
    fi
    if timeout --kill-after=5 70 "$PY" "$HERE/nccl_pair.py" --out "$OUT/nccl_truth.json" \
        --port 29533 --settle-s "$settle" --timeout-s 60 >>"$OUT/nccl.log" 2>&1; then
        stage_end ok "$(tail -n 1 "$OUT/nccl.log")"
    else
        stage_end failed "nccl_pair.py exited $? (nccl.log)"
    fi
    stop_probe
else
    skip_stage nccl "not enough time left"
fi

# ---- 7. NVML ----------------------------------------------------------------------------------

if have_time 30; then
    stage_begin nvml 10
    if timeout 15 "$PY" "$HERE/nvml_cost.py" >"$OUT/nvml.json" 2>>"$OUT/nvml.log"; then
        stage_end ok
    else
        stage_end failed "nvml_cost.py exited $?"
    fi
else
    skip_stage nvml "not enough time left"
fi

# ---- 8. compare: in finish(), which also runs when a stage above aborted the script ----------
exit 0
