#!/usr/bin/env bash
# Installs Docker engine 20.10 (Debian bookworm's docker.io) plus compose v2 and buildx (from Debian trixie's
# .debs: bookworm has compose v1 only), and starts dockerd by hand (no service manager on CI machines).
# Idempotent: installs only what is missing and starts dockerd only when `docker info` fails.
# Env: POTLUCK_DEPLOY_LOGDIR (default /tmp/potluck-deploy-logs) for the daemon's log.
set -euo pipefail

LOGDIR="${POTLUCK_DEPLOY_LOGDIR:-/tmp/potluck-deploy-logs}"
mkdir -p "$LOGDIR"
log() { printf '[setup-docker %(%H:%M:%S)T] %s\n' -1 "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq >>"$LOGDIR/apt.log" 2>&1
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOGDIR/apt.log" 2>&1
}

apt_install docker.io containerd runc iptables debootstrap tini ca-certificates

# --- compose v2 + buildx from trixie (static Go binaries that need only libc) -----------------------------
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if ! "$PLUGIN_DIR/docker-compose" version >/dev/null 2>&1 || ! "$PLUGIN_DIR/docker-buildx" version >/dev/null 2>&1; then
    log "installing compose v2 and buildx from Debian trixie .debs"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    mkdir -p "$WORK/lists/partial" "$WORK/archives/partial"
    # A private sources list and state dir: the host's apt configuration stays bookworm-only.
    cat >"$WORK/trixie.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$WORK/sp" -o "Dir::State::Lists=$WORK/lists"
              -o "Dir::Cache::Archives=$WORK/archives" -o "Dir::State::Status=/var/lib/dpkg/status" -o "APT::Get::List-Cleanup=0")
    mkdir -p "$WORK/sp" && cp "$WORK/trixie.sources" "$WORK/sp/trixie.sources"
    apt-get "${APT_OPTS[@]}" update -qq >>"$LOGDIR/apt.log" 2>&1
    (cd "$WORK" && apt-get "${APT_OPTS[@]}" download docker-compose docker-buildx >>"$LOGDIR/apt.log" 2>&1)
    for deb in "$WORK"/docker-compose_*.deb "$WORK"/docker-buildx_*.deb; do
        dpkg-deb -x "$deb" "$WORK/x"
    done
    $SUDO mkdir -p "$PLUGIN_DIR"
    for bin in docker-compose docker-buildx; do
        # The plugin binary lives under .../docker/cli-plugins/ (other files of that name are lintian overrides).
        src="$(find "$WORK/x" -type f -path "*/cli-plugins/$bin" | head -n1)"
        [ -n "$src" ] || { echo "setup-docker: $bin not found in the trixie .deb" >&2; exit 1; }
        $SUDO install -m 0755 "$src" "$PLUGIN_DIR/$bin"
    done
    rm -rf "$WORK"
    trap - EXIT
fi

# --- the daemon -------------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: $LOGDIR/dockerd.log)"
    # --ip=127.0.0.1: every published port binds to loopback only.
    nohup $SUDO dockerd --storage-driver=overlay2 --ip=127.0.0.1 </dev/null >>"$LOGDIR/dockerd.log" 2>&1 &
    for _ in $(seq 300); do
        docker info >/dev/null 2>&1 && break
        sleep 0.2
    done
    docker info >/dev/null 2>&1 || { echo "setup-docker: dockerd did not come up; see $LOGDIR/dockerd.log" >&2; tail -n 30 "$LOGDIR/dockerd.log" >&2; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
