#!/usr/bin/env bash
# Removes what the deployment tests may leave behind when a run is killed (no Ryuk on these machines):
# containers and networks labelled potluck.deploy-tests, and compose projects named potluck-test-*.
# Safe to run any time, also when docker is absent or not running.
set -uo pipefail
docker info >/dev/null 2>&1 || exit 0
ids="$(docker ps -aq --filter label=potluck.deploy-tests)"
[ -n "$ids" ] && docker rm -f -v $ids >/dev/null
for project in $(docker ps -a --filter label=com.docker.compose.project --format '{{.Label "com.docker.compose.project"}}' | sort -u); do
    case "$project" in potluck-test-*) docker compose -p "$project" down -v --timeout 5 >/dev/null 2>&1 ;; esac
done
docker network prune -f --filter label=potluck.deploy-tests >/dev/null
exit 0
