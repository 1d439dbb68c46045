#!/bin/bash
# Like the official redis image's entrypoint: flags alone mean redis-server; drop root to the redis user.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
    shift
    # The official image is built with protected mode off: inside a container network, clients are never loopback.
    set -- redis-server --protected-mode no --bind '* -::*' "$@"
    if [ "$(id -u)" = "0" ]; then
        chown -R redis:redis /data 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
