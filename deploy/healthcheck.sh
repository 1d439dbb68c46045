#!/bin/bash
# Container healthcheck without curl or wget (the ASP.NET base image has neither): bash's /dev/tcp.
#   POTLUCK_HEALTHCHECK_URL=http://HOST:PORT/PATH  healthy when the answer's status is 200
#   POTLUCK_HEALTHCHECK_URL=tcp://HOST:PORT        healthy when the port accepts a connection
# A process that exited (bad model path, unreachable Redis) takes the container down with it, so the
# healthcheck only has to tell "up and serving" from "still starting or stuck".
set -u
url="${1:-${POTLUCK_HEALTHCHECK_URL:-http://127.0.0.1:8080/healthz}}"
scheme="${url%%://*}"
rest="${url#*://}"
hostport="${rest%%/*}"
path="/${rest#*/}"
[ "$rest" = "$hostport" ] && path="/"
host="${hostport%:*}"
port="${hostport##*:}"

case "$scheme" in
    tcp)
        timeout 4 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null || { echo "unhealthy: nothing accepts connections on $host:$port"; exit 1; }
        echo "healthy: $host:$port accepts connections"
        ;;
    http)
        status="$(timeout 4 bash -c '
            exec 3<>"/dev/tcp/$0/$1" || exit 1
            printf "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$2" "$0" >&3
            IFS= read -r line <&3 && printf "%s" "$line"
        ' "$host" "$port" "$path" 2>/dev/null)"
        status="${status%$'\r'}"
        case "$status" in
            "HTTP/1."?" 200"*) echo "healthy: GET $url -> $status" ;;
            "") echo "unhealthy: no HTTP answer from $url"; exit 1 ;;
            *) echo "unhealthy: GET $url -> $status"; exit 1 ;;
        esac
        ;;
    *) echo "unhealthy: POTLUCK_HEALTHCHECK_URL must be http://... or tcp://... (got '$url')"; exit 1 ;;
esac
