#!/usr/bin/env bash
# Offline checks of the deployment files in deploy/ (no cluster, no systemd needed):
#
#   1. helm lint of the chart with its default values and each deploy/helm/inferscope/ci/*.yaml,
#      and a drift check: deploy/kubernetes/inferscope.yaml must be exactly what
#      deploy/kubernetes/render.sh renders from the chart now. Needs helm (the pinned one comes
#      from the npm registry, deploy/helm/get-helm.sh); skipped, saying so, without it.
#   2. Kubernetes JSON-schema validation (kubernetes-validate, strict: unknown fields are errors)
#      of the plain manifests and of every rendering above, against the oldest Kubernetes the
#      chart supports (1.25) and the newest the schemas know; the schemas ship in the package,
#      so this runs offline.
#   3. Consistency checks the schemas cannot make (deploy/kubernetes/check_manifests.py):
#      selectors, named ports, mounts, secret items, export URLs, the default security posture;
#      with built binaries (target/{release,debug}, or $INFERSCOPE_BIN_DIR), every flag in the
#      manifests and units exists in their --help, and the systemd example configs load.
#   4. systemd-analyze verify of both units (on copies whose /usr/local/bin/ programs are stubs,
#      since the binaries need not be installed here; any message is a failure), and
#      systemd-analyze security's exposure score, which must stay at or under 5 (of 10).
#
# The Python tools live in a venv under ~/.cache/inferscope/deploy-venv (created once).
# Exit status: 0 when every check that could run passed, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
chart=deploy/helm/inferscope
plain=deploy/kubernetes/inferscope.yaml
kv_version=1.37.0
k8s_versions=(1.25.0 1.37.0)
# Flags the deploy files use before the programs have them (while both are being changed at
# once): warned about, not failed, when the built binary lacks them. Keep it empty otherwise.
pending=()

failed=()
step() { printf '\n== %s\n' "$*"; }
ok() { echo "ok: $*"; }
# In CI (INFERSCOPE_REQUIRE_BPF=1, set by .ci/run) nothing may be skipped: a missing tool fails.
skip() {
    if [ "${INFERSCOPE_REQUIRE_BPF:-0}" = 1 ]; then
        fail "required (INFERSCOPE_REQUIRE_BPF=1) but skipped: $*"
    else
        echo "SKIPPED: $*"
    fi
}
fail() {
    echo "FAIL: $*"
    failed+=("$*")
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# -- Python tools --------------------------------------------------------------------------------
venv="${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/deploy-venv"
if ! "$venv/bin/python" -c "import kubernetes_validate, yaml, sys; \
        sys.exit(kubernetes_validate.__version__ != '$kv_version')" 2>/dev/null; then
    echo "setting up $venv (kubernetes-validate $kv_version)"
    python3 -m venv "$venv" &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version" ||
        { echo "FAIL: cannot install kubernetes-validate into $venv" >&2; exit 1; }
fi

# -- 1. helm lint and drift ----------------------------------------------------------------------
step "helm: lint, template, drift of $plain"
renderings=()
if helm="$(deploy/helm/get-helm.sh 2>"$tmp/get-helm.err")"; then
    sed 's/^/  /' "$tmp/get-helm.err"
    echo "helm: $helm ($("$helm" version --template '{{ .Version }}'))"
    for values in "" $chart/ci/*.yaml; do
        label="${values:-default values}"
        out="$tmp/render-$(basename "${values:-default}" .yaml).yaml"
        if ! "$helm" lint --strict "$chart" ${values:+-f "$values"} >"$tmp/lint.log" 2>&1; then
            cat "$tmp/lint.log"
            fail "helm lint ($label)"
        elif ! "$helm" template inferscope "$chart" --namespace inferscope ${values:+-f "$values"} \
            >"$out" 2>"$tmp/template.log"; then
            cat "$tmp/template.log"
            fail "helm template ($label)"
        else
            ok "helm lint --strict, helm template ($label)"
            renderings+=("$out")
        fi
    done
    if deploy/kubernetes/render.sh --stdout >"$tmp/plain.yaml" 2>"$tmp/render.log"; then
        if diff -u "$plain" "$tmp/plain.yaml" >"$tmp/drift.diff"; then
            ok "$plain matches the chart"
        else
            head -n 60 "$tmp/drift.diff"
            fail "$plain differs from the chart: run deploy/kubernetes/render.sh"
        fi
    else
        cat "$tmp/render.log"
        fail "deploy/kubernetes/render.sh"
    fi
else
    sed 's/^/  /' "$tmp/get-helm.err"
    skip "helm lint and the drift check of $plain: no helm (deploy/helm/get-helm.sh)"
fi

# -- 2. schemas ----------------------------------------------------------------------------------
step "Kubernetes schemas (kubernetes-validate $kv_version, --strict, offline)"
for v in "${k8s_versions[@]}"; do
    if "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$plain" "${renderings[@]}" >"$tmp/kv.log" 2>&1; then
        ok "Kubernetes $v: $plain and ${#renderings[@]} chart renderings ($(grep -c '^kind:' "$plain" "${renderings[@]}" | awk -F: '{n += $NF} END {print n}') objects)"
    else
        grep -v '^INFO' "$tmp/kv.log" | sed "s#$tmp/##g"
        fail "schema validation against Kubernetes $v"
    fi
done

# -- 3. consistency and flags --------------------------------------------------------------------
step "consistency of the manifests; flags against the built binaries"
newest() { # the newest existing file among the arguments
    local best=""
    for f in "$@"; do [[ -x "$f" && ( -z "$best" || "$f" -nt "$best" ) ]] && best="$f"; done
    echo "$best"
}
bin_dir="${INFERSCOPE_BIN_DIR:-}"
np_bin="$(newest ${bin_dir:+"$bin_dir/node-probe"} target/release/node-probe target/debug/node-probe)"
agg_bin="$(newest ${bin_dir:+"$bin_dir/aggregator"} target/release/aggregator target/debug/aggregator)"
bin_args=()
if [[ -n "$np_bin" && -n "$agg_bin" ]]; then
    echo "binaries: $np_bin, $agg_bin"
    bin_args=(--node-probe-bin "$np_bin" --aggregator-bin "$agg_bin" "${pending[@]/#/--pending=}")
else
    skip "flag checks: no built node-probe and aggregator (cargo build, or set INFERSCOPE_BIN_DIR)"
fi
if "$venv/bin/python" deploy/kubernetes/check_manifests.py --defaults "$plain" "${renderings[@]}" \
    --unit deploy/systemd/inferscope-node-probe.service --unit deploy/systemd/inferscope-aggregator.service \
    "${bin_args[@]}" 2>&1 | sed "s#$tmp/##g"; then
    ok "selectors, ports, mounts, secrets, export URLs, default security posture${bin_args:+, flags}"
else
    fail "manifest consistency (check_manifests.py)"
fi
if [[ -n "$np_bin" && -n "$agg_bin" ]]; then
    # --help after --config: the file is read (unknown keys and bad values are errors), nothing runs.
    for pair in "$np_bin:deploy/systemd/node-probe.json" "$agg_bin:deploy/systemd/aggregator.json"; do
        if "${pair%%:*}" --config "${pair#*:}" --help >/dev/null 2>"$tmp/config.log"; then
            ok "${pair#*:} loads in $(basename "${pair%%:*}")"
        else
            cat "$tmp/config.log"
            fail "${pair#*:} does not load"
        fi
    done
fi

# -- 4. systemd ----------------------------------------------------------------------------------
step "systemd units"
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$tmp/units/bin"
    for prog in node-probe aggregator; do
        printf '#!/bin/sh\nexit 0\n' >"$tmp/units/bin/$prog"
        chmod +x "$tmp/units/bin/$prog"
    done
    for unit in deploy/systemd/*.service; do
        name="$(basename "$unit")"
        sed "s#/usr/local/bin/#$tmp/units/bin/#g" "$unit" >"$tmp/units/$name"
        # verify exits 0 on unknown keys and bad values (it only logs them): any output fails.
        if (cd "$tmp/units" && systemd-analyze verify --man=no "$name") >"$tmp/verify.log" 2>&1 &&
            [[ ! -s "$tmp/verify.log" ]]; then
            ok "systemd-analyze verify $name"
        else
            sed "s#$tmp/units/##g" "$tmp/verify.log"
            fail "systemd-analyze verify $name"
        fi
        if score="$(systemd-analyze security --offline=true "$tmp/units/$name" 2>&1 |
            sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')" && [[ -n "$score" ]] &&
            awk -v s="$score" 'BEGIN { exit !(s <= 5.0) }'; then
            ok "systemd-analyze security $name: exposure $score"
        else
            fail "systemd-analyze security $name: exposure ${score:-unknown} (more than 5.0)"
        fi
    done
else
    skip "systemd-analyze not found (apt-get install systemd)"
fi

echo
if ((${#failed[@]})); then
    echo "check-deploy: ${#failed[@]} check(s) failed:" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "check-deploy: all checks passed"
