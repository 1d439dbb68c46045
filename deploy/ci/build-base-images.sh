#!/usr/bin/env bash
# Builds, under their official names, the base images that deploy/Dockerfile, docker-compose.yml and the tests use.
# No container registry is reachable on CI machines, so they are made locally from Debian packages:
#   debian:bookworm-slim               debootstrap --variant=minbase, imported
#   mcr.microsoft.com/dotnet/aspnet:10.0   runtime libraries from apt + the host's .NET runtime folders
#   redis:7.0                          Debian's redis-server (7.0.x) with an entrypoint like the official one
#   prom/prometheus:v2.42.0            Debian's prometheus (2.42.0) with the official image's layout
# Idempotent: an image that already exists is kept (POTLUCK_REBUILD_BASE_IMAGES=1 rebuilds all).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
LOGDIR="${POTLUCK_DEPLOY_LOGDIR:-/tmp/potluck-deploy-logs}"
mkdir -p "$LOGDIR"
log() { printf '[base-images %(%H:%M:%S)T] %s\n' -1 "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
MIRROR="${POTLUCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

have_image() { [ "${POTLUCK_REBUILD_BASE_IMAGES:-0}" != "1" ] && docker image inspect "$1" >/dev/null 2>&1; }
# BuildKit would try to pull its frontend image; the classic builder builds these offline.
build() { DOCKER_BUILDKIT=0 docker build -q "$@" >>"$LOGDIR/base-images.log" 2>&1 || { tail -n 40 "$LOGDIR/base-images.log" >&2; return 1; }; }

WORK="$(mktemp -d)"
cleanup() { $SUDO rm -rf "$WORK" 2>/dev/null || true; }
trap cleanup EXIT

# --- debian:bookworm-slim ---------------------------------------------------------------------------------
if ! have_image debian:bookworm-slim; then
    log "debootstrap bookworm (about a minute)"
    $SUDO debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >>"$LOGDIR/base-images.log" 2>&1
    # Slim like the official image: no package lists, docs or caches in the base layer.
    $SUDO rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin "$WORK/rootfs/usr/share/doc/"* "$WORK/rootfs/usr/share/man/"*
    $SUDO tar -C "$WORK/rootfs" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >>"$LOGDIR/base-images.log"
    $SUDO rm -rf "$WORK/rootfs"
    log "built debian:bookworm-slim"
fi

# --- mcr.microsoft.com/dotnet/aspnet:10.0 -------------------------------------------------------------------
if ! have_image mcr.microsoft.com/dotnet/aspnet:10.0; then
    DOTNET_ROOT_DIR="$(dirname "$(readlink -f "$(command -v dotnet)")")"
    ASPNET_VERSION="$(dotnet --list-runtimes | awk '/^Microsoft.AspNetCore.App 10\./ {print $2}' | sort -V | tail -n1)"
    [ -n "$ASPNET_VERSION" ] || { echo "base-images: the host has no ASP.NET Core 10 runtime" >&2; exit 1; }
    log "building mcr.microsoft.com/dotnet/aspnet:10.0 from the host's runtime $ASPNET_VERSION ($DOTNET_ROOT_DIR)"
    ctx="$WORK/aspnet"
    mkdir -p "$ctx/dotnet/shared"
    cp -a "$DOTNET_ROOT_DIR/dotnet" "$DOTNET_ROOT_DIR/LICENSE.txt" "$DOTNET_ROOT_DIR/ThirdPartyNotices.txt" "$ctx/dotnet/" 2>/dev/null || cp -a "$DOTNET_ROOT_DIR/dotnet" "$ctx/dotnet/"
    cp -a "$DOTNET_ROOT_DIR/host" "$ctx/dotnet/"
    # Only the runtime the SDK builds against: the image stays a runtime image (no SDK).
    mkdir -p "$ctx/dotnet/shared/Microsoft.NETCore.App" "$ctx/dotnet/shared/Microsoft.AspNetCore.App"
    cp -a "$DOTNET_ROOT_DIR/shared/Microsoft.NETCore.App/$ASPNET_VERSION" "$ctx/dotnet/shared/Microsoft.NETCore.App/"
    cp -a "$DOTNET_ROOT_DIR/shared/Microsoft.AspNetCore.App/$ASPNET_VERSION" "$ctx/dotnet/shared/Microsoft.AspNetCore.App/"
    cp "$HERE/base-images/aspnet.Dockerfile" "$ctx/Dockerfile"
    build --build-arg "DOTNET_VERSION=$ASPNET_VERSION" -t mcr.microsoft.com/dotnet/aspnet:10.0 -t "mcr.microsoft.com/dotnet/aspnet:$ASPNET_VERSION" "$ctx"
    log "built mcr.microsoft.com/dotnet/aspnet:10.0"
fi

# --- redis:7.0 ----------------------------------------------------------------------------------------------
if ! have_image redis:7.0; then
    log "building redis:7.0 from Debian's redis-server"
    build -t redis:7.0 -f "$HERE/base-images/redis.Dockerfile" "$HERE/base-images"
    log "built redis:7.0"
fi

# --- prom/prometheus:v2.42.0 ----------------------------------------------------------------------------------
if ! have_image prom/prometheus:v2.42.0; then
    log "building prom/prometheus:v2.42.0 from Debian's prometheus"
    build -t prom/prometheus:v2.42.0 -f "$HERE/base-images/prometheus.Dockerfile" "$HERE/base-images"
    log "built prom/prometheus:v2.42.0"
fi

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(debian:bookworm-slim|mcr.microsoft.com/dotnet/aspnet:10.0|redis:7.0|prom/prometheus:v2.42.0) ' || true
