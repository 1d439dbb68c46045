#!/usr/bin/env bash
# One-stop, idempotent setup for the deployment tests on a fresh Debian 12 machine (and safe to run twice):
# Docker engine + compose v2 + buildx, a running dockerd (published ports on loopback only), the locally built
# base images (no registry is reachable), and helm. Exports nothing; the caller sets the Testcontainers variables.
# Env: POTLUCK_DEPLOY_LOGDIR (logs, default /tmp/potluck-deploy-logs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
bash "$HERE/setup-docker.sh"
bash "$HERE/build-base-images.sh"
bash "$HERE/setup-helm.sh"
