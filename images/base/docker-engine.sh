#!/usr/bin/env bash
# A Docker engine for the image builds and the container tier, on a machine that may have none:
# Debian's docker.io when no `docker` client is installed, then `dockerd --bridge=none --iptables=false`
# when no engine answers (no private bridge network: every build and container uses the host network).
# The daemon is left running for later targets; its log and pid are under $ENGINE_DIR.
set -euo pipefail

DOCKER=${DOCKER:-docker}
ENGINE_DIR=${ENGINE_DIR:-/tmp/mlplatform-dockerd}

if ! command -v "$DOCKER" >/dev/null || ! command -v dockerd >/dev/null; then
    echo "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
fi
"$DOCKER" info >/dev/null 2>&1 && exit 0

mkdir -p "$ENGINE_DIR"
echo "starting dockerd --bridge=none --iptables=false (log: $ENGINE_DIR/dockerd.log)"
setsid nohup dockerd --bridge=none --iptables=false >>"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null &
echo $! >"$ENGINE_DIR/dockerd.pid"
for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && exit 0
    sleep 1
done
tail -20 "$ENGINE_DIR/dockerd.log" >&2
echo "dockerd did not answer within 60 s (log: $ENGINE_DIR/dockerd.log)" >&2
exit 1
