#!/usr/bin/env bash
# Builds a stand-in for the Dockerfile's pinned Python base image where no image registry can be
# reached: Debian bookworm from the mirror apt uses on this machine (mmdebstrap, minbase), with
# python3, a venv on PATH (Debian's python refuses pip into the system), libpython3-dev (the
# build stage compiles libvirt-python), libvirt0 and ca-certificates, imported with
# `docker import`. The machine's own extra CA certificates go in too: the image build's pip and
# apt reach the network through the same TLS as this machine.
#
#   scripts/build-base-image.sh [TAG]      (default libvirt-pusher-base:bookworm)
#   docker build -f compose/Dockerfile --build-arg PYTHON_IMAGE=libvirt-pusher-base:bookworm .
#
# Idempotent: an image of that tag built from the same recipe and CA certificates is kept.
# A test stand-in only: it carries this machine's CA certificates; ship the pinned base.
set -euo pipefail

TAG=${1:-libvirt-pusher-base:bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-${MIRROR%/debian}/debian-security}
PACKAGES=python3,python3-venv,libpython3-dev,libvirt0,ca-certificates
EXTRA_CA=/usr/local/share/ca-certificates
VENV_PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

command -v mmdebstrap >/dev/null || { echo "build-base-image: mmdebstrap missing" \
    "(apt-get install mmdebstrap; scripts/setup-host.sh does)" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || { echo "build-base-image: no Docker engine answers" \
    "($DOCKER info fails)" >&2; exit 1; }

# The recipe's fingerprint: this script, the mirror and the CA certificates put in.
recipe=$( { cat "$0"; echo "$MIRROR $SECURITY"; cat "$EXTRA_CA"/*.crt 2>/dev/null || true; } \
    | sha256sum | cut -c1-16)
if [[ "$("$DOCKER" image inspect -f '{{ index .Config.Labels "libvirt-pusher.base-recipe" }}' \
        "$TAG" 2>/dev/null)" == "$recipe" ]]; then
    echo "build-base-image: $TAG is up to date ($recipe)"
    exit 0
fi

echo "build-base-image: building $TAG from $MIRROR"
hooks=(--customize-hook='chroot "$1" python3 -m venv /opt/venv'
       --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin')
if compgen -G "$EXTRA_CA/*.crt" >/dev/null; then
    hooks=(--customize-hook="copy-in $EXTRA_CA /usr/local/share"
           --customize-hook='chroot "$1" update-ca-certificates' "${hooks[@]}")
fi
mmdebstrap --quiet --variant=minbase --mode=root --include="$PACKAGES" "${hooks[@]}" \
    bookworm - "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main" \
    | "$DOCKER" import --change "ENV PATH=$VENV_PATH" \
        --change "LABEL libvirt-pusher.base-recipe=$recipe" - "$TAG" >/dev/null
echo "build-base-image: built $TAG ($recipe)"
