#!/usr/bin/env bash
# `make base-images`: the two base images every Dockerfile takes as a build argument, made from package
# registries only, for machines that reach no image registry:
#   $PYTHON_BASE  Debian bookworm (debootstrap --variant=minbase from the mirror apt uses here) with
#                 python3.11, its venv module, CA certificates and libgomp1 (XGBoost's OpenMP);
#   $UV_BASE      one file, /uv, the binary of uv's PyPI wheel (what ghcr.io/astral-sh/uv ships).
# Both carry the host's CA bundle, so downloads during builds work behind a TLS-inspecting proxy.
# Idempotent: an image that exists is kept (`docker rmi` it to rebuild). Needs root (debootstrap, chroot).
set -euo pipefail

DOCKER=${DOCKER:-docker}
PYTHON_BASE=${PYTHON_BASE:?set PYTHON_BASE (the Makefile does)}
UV_BASE=${UV_BASE:?set UV_BASE (the Makefile does)}
UV_VERSION=${UV_VERSION:?set UV_VERSION (the Makefile does)}
PYTHON=${PYTHON:-python3}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm

exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

install_tools() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v unzip >/dev/null || need+=(unzip)
    ((${#need[@]} == 0)) && return
    echo "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
}

# The Debian mirror apt is configured with (deb822 `URIs:` or a one-line `deb` entry).
debian_mirror() {
    local mirror
    mirror=$(grep -hE '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1)
    [[ -n "$mirror" ]] || mirror=$(grep -hE '^deb .*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        2>/dev/null | awk '{print $2}' | head -1)
    echo "${mirror:-http://deb.debian.org/debian}"
}

build_python_base() {
    local root mirror
    mirror=$(debian_mirror)
    root=$(mktemp -d /tmp/mlplatform-base.XXXXXX)
    # Unmount and remove the tree however this function ends.
    trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' RETURN
    echo "debootstrap $SUITE ($mirror) into $root"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -20 "$root.log"; exit 1; }
    rm -f "$root.log"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount --bind /proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3.11 python3.11-venv ca-certificates libgomp1 >/dev/null
    chroot "$root" apt-get clean
    umount "$root/proc"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/var/log/*.log
    : >"$root/etc/resolv.conf"
    # Where the python:3.11 images have it, so `python` works the same on either base.
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
    cp "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
    tar -C "$root" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV UV_NATIVE_TLS=1' \
        --change 'CMD ["python3"]' \
        - "$PYTHON_BASE" >/dev/null
}

build_uv_base() {
    local work
    work=$(mktemp -d /tmp/mlplatform-uv.XXXXXX)
    trap 'rm -rf "$work"' RETURN
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "manylinux_2_17_$(uname -m)" --python-version 3.11 -d "$work" "uv==$UV_VERSION"
    mkdir -p "$work/root"
    unzip -q -o -j "$work"/uv-*.whl '*.data/scripts/uv' -d "$work/root"
    chmod 0755 "$work/root/uv"
    tar -C "$work/root" -c uv | "$DOCKER" import --change 'ENTRYPOINT ["/uv"]' - "$UV_BASE" >/dev/null
}

"$DOCKER" info >/dev/null 2>&1 || { echo "no Docker engine answers (make docker-engine starts one)" >&2; exit 1; }
for image in "$PYTHON_BASE" "$UV_BASE"; do
    if exists "$image"; then
        echo "$image exists (docker rmi it to rebuild)"
        continue
    fi
    install_tools
    start=$SECONDS
    if [[ "$image" == "$PYTHON_BASE" ]]; then build_python_base; else build_uv_base; fi
    echo "$image built in $((SECONDS - start)) s, $("$DOCKER" image inspect -f '{{.Size}}' "$image") bytes"
done
