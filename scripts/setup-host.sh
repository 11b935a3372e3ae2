#!/usr/bin/env bash
# Prepares this host for the test suite: Debian packages, libvirtd (started by hand, there is no
# systemd here) and the project's venv. Idempotent; takes well under a second when all is in place.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/sbin:/sbin:$PATH"
LIBVIRT_URI=qemu:///system
RO_SOCKET=/var/run/libvirt/libvirt-sock-ro
LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT

# Runs a noisy command with its output kept in a log that is shown only if it fails.
quietly() {
    local log="$LOG_DIR/$1"
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "setup-host: failed: $*" >&2
        cat "$log" >&2
        return 1
    fi
}

# --- Debian packages -------------------------------------------------------------------------
# docker.io and mmdebstrap: the worker stack's image, built and run (tests/integration/
# test_deploy.py starts dockerd itself and stops it); dbus and polkitd: the compute-node-like
# libvirtd that test runs beside the host's (tests/integration/hostlibvirt.py).
packages=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config
          gcc prometheus docker-compose systemd docker.io mmdebstrap dbus polkitd)
venv_stale() { [[ ! -e .venv/.installed || pyproject.toml -nt .venv/.installed ]]; }
if venv_stale; then
    # Debian's own python3 needs these for `-m venv` and to build libvirt-python (sdist only on
    # PyPI); a python3 from elsewhere (pyenv, python:3 images) has them built in.
    # shellcheck disable=SC2207  # the names have no spaces
    packages+=($(python3 -c 'import importlib.util as u, os, sysconfig
print("" if u.find_spec("ensurepip") else "python3-venv",
      "" if os.path.exists(sysconfig.get_path("include") + "/Python.h") else "python3-dev")'))
fi

missing=()
for pkg in "${packages[@]}"; do
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" == ii* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-update apt-get update -q
    quietly apt-install apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- libvirtd --------------------------------------------------------------------------------
# Without access to /dev/kvm for the qemu user, libvirt re-probes QEMU's capabilities on every
# call and each call takes seconds (REFERENCE.md §8).
if [[ -e /dev/kvm ]] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm
    chmod 660 /dev/kvm
fi

pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d

for ((i = 0; ; i++)); do
    virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1 && break
    if ((i >= 60)); then
        echo "setup-host: libvirtd did not answer on $LIBVIRT_URI within 30 s:" >&2
        virsh -c "$LIBVIRT_URI" version >&2 || true
        exit 1
    fi
    sleep 0.5
done
if [[ ! -S "$RO_SOCKET" ]]; then
    echo "setup-host: libvirtd runs but its read-only socket $RO_SOCKET is missing" >&2
    exit 1
fi

# --- a Linux kernel for a guest with a balloon driver -----------------------------------------
# The test guests have no OS, so their balloon reports no guest memory figures. One test guest
# boots Debian's cloud kernel with an initramfs that only loads virtio_balloon (built by the
# tests from these files): the kernel package and busybox, unpacked, never installed.
TEST_KERNEL_DIR=/var/cache/libvirt-pusher-tests/kernel
if [[ ! -e "$TEST_KERNEL_DIR/.ready" ]]; then
    echo "setup-host: fetching a kernel and busybox for the balloon test guest"
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    fetch_dir=$(mktemp -d)
    (cd "$fetch_dir" && quietly apt-download apt-get download "$kernel_pkg" busybox-static)
    rm -rf "$TEST_KERNEL_DIR"
    mkdir -p "$TEST_KERNEL_DIR"
    for deb in "$fetch_dir"/*.deb; do dpkg-deb -x "$deb" "$TEST_KERNEL_DIR"; done
    rm -rf "$fetch_dir"
    touch "$TEST_KERNEL_DIR/.ready"
fi

# --- Python venv -----------------------------------------------------------------------------
[[ -x .venv/bin/python ]] || quietly venv python3 -m venv .venv
if venv_stale; then
    echo "setup-host: installing the project into .venv"
    quietly pip .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch .venv/.installed
fi
