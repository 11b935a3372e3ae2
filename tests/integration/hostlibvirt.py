"""A libvirtd of the test's own, set up as a compute node's, beside the host's.

It runs in a private mount namespace: a fresh /run (so its sockets, pid files, D-Bus and
polkit are its own), fresh /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt (so it knows none of the host daemon's guests). Its /run/libvirt is a
directory of the test's, so its sockets are reachable from the host at `socket_dir`.
The host's libvirtd and its configuration are never touched.

Two shapes, as the agent meets them on real nodes:

- `debian`: Debian's and Ubuntu's packaged defaults. The read-only socket is 0777 and
  `auth_unix_ro` is polkit (libvirt's default when built with polkit), with a D-Bus system bus
  and polkitd running, reading the rules libvirt-daemon-system installs: polkit is really
  consulted for every non-root client.
- `kolla`: Kolla-Ansible's `nova_libvirt`. Kolla's libvirtd.conf sets no `auth_unix_ro` (so
  polkit, the default), its container runs no D-Bus or polkitd, and libvirtd resolves its
  clients' ids in the image's own user database (Kolla's fixed ids: nova 42436, qemu 42427,
  group libvirt 42473), not the host's. Kolla's TCP listener is left out: nothing here may
  listen beyond loopback.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

START_S = 60.0
# Kolla's fixed ids (kolla/common/users.py), as its images' /etc/passwd and /etc/group hold them.
KOLLA_USERS = [("nova", 42436, 42436), ("qemu", 42427, 42427)]
PACKAGED = {"nobody", "nogroup", "libvirt-qemu", "kvm"}
KOLLA_GROUPS = [("nova", 42436), ("qemu", 42427), ("libvirt", 42473)]
# ansible/roles/nova-cell/templates/libvirtd.conf.j2 without its TCP/TLS listener.
KOLLA_LIBVIRTD_CONF = 'log_level = 3\nlog_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
# ansible/roles/nova-cell/templates/qemu.conf.j2, with the defaults of its variables.
KOLLA_QEMU_CONF = 'stdio_handler = "logd"\nuser = "nova"\ngroup = "nova"\n'
DEBIAN_LIBVIRTD_CONF = "# Debian's packaged defaults: every setting commented out\n"


class HostLibvirtd:
    """A libvirtd of shape `kind` ("debian" or "kolla") in a mount namespace of its own."""

    def __init__(self, workdir: Path, kind: str) -> None:
        if kind not in ("debian", "kolla"):
            raise ValueError(f"kind must be debian or kolla, not {kind!r}")
        self.kind = kind
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        self.socket_dir = workdir / "run-libvirt"
        self.ro_socket = self.socket_dir / "libvirt-sock-ro"
        self.rw_socket = self.socket_dir / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.rw_socket}"
        self.log_path = workdir / "start.log"
        for d in ("run-libvirt", "etc", "lib", "log", "cache"):
            (workdir / d).mkdir(exist_ok=True)
        self._write_config()
        self.start()

    def _write_config(self) -> None:
        etc = self.workdir / "etc"
        for name in ("qemu.conf", "virtlogd.conf", "libvirt.conf"):
            if Path("/etc/libvirt", name).exists():
                shutil.copy(Path("/etc/libvirt", name), etc / name)
        (etc / "qemu").mkdir(exist_ok=True)  # no domains of the host's daemon
        conf = KOLLA_LIBVIRTD_CONF if self.kind == "kolla" else DEBIAN_LIBVIRTD_CONF
        (etc / "libvirtd.conf").write_text(conf)
        if self.kind == "kolla":
            (etc / "qemu.conf").write_text(KOLLA_QEMU_CONF)
            self._write_user_database()

    def _write_user_database(self) -> None:
        # The image's own database: the distribution's system accounts and the ones its
        # libvirt package creates (libvirtd resolves its built-in qemu user at start), nobody,
        # and Kolla's fixed ids; none of the host's other users.
        users = [u for u in pwd.getpwall() if u.pw_uid < 1000 or u.pw_name in PACKAGED]
        groups = [g for g in grp.getgrall() if g.gr_gid < 1000 or g.gr_name in PACKAGED]
        passwd = [
            ":".join((u.pw_name, "x", str(u.pw_uid), str(u.pw_gid), "", u.pw_dir, u.pw_shell))
            for u in users
        ]
        passwd += [f"{n}:x:{u}:{g}::/var/lib/{n}:/usr/sbin/nologin" for n, u, g in KOLLA_USERS]
        group = [f"{g.gr_name}:x:{g.gr_gid}:{','.join(g.gr_mem)}" for g in groups]
        group += [f"{n}:x:{gid}:" for n, gid in KOLLA_GROUPS]
        (self.workdir / "passwd").write_text("\n".join(passwd) + "\n")
        (self.workdir / "group").write_text("\n".join(group) + "\n")

    def _script(self) -> str:
        w = self.workdir
        lines = [
            "set -e",
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            "mkdir -p /run/libvirt /run/dbus /run/lock",
            f"mount --bind {w}/run-libvirt /run/libvirt",
            f"mount --bind {w}/etc /etc/libvirt",
            f"mount --bind {w}/lib /var/lib/libvirt",
            f"mount --bind {w}/log /var/log/libvirt",
            f"mount --bind {w}/cache /var/cache/libvirt",
        ]
        if self.kind == "kolla":
            lines += [f"mount --bind {w}/passwd /etc/passwd", f"mount --bind {w}/group /etc/group"]
        else:
            lines += [
                f"dbus-daemon --system --fork --print-pid > {w}/dbus.pid",
                "for i in $(seq 100); do",
                "  [ -S /run/dbus/system_bus_socket ] && break; sleep 0.1",
                "done",
                "setpriv --reuid=polkitd --regid=polkitd --init-groups "
                f"/usr/lib/polkit-1/polkitd --no-debug >{w}/polkitd.log 2>&1 &",
                f"echo $! > {w}/polkitd.pid",
            ]
        lines += [
            f"virtlogd -d -p {w}/virtlogd.pid",
            f"libvirtd -d -f /etc/libvirt/libvirtd.conf -p {w}/libvirtd.pid",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        for tool in ("unshare", "libvirtd", "virtlogd", "dbus-daemon", "setpriv"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} not found: scripts/setup-host.sh installs it")
        if self.kind == "debian" and not Path("/usr/lib/polkit-1/polkitd").exists():
            pytest.fail("polkitd not installed: apt-get install polkitd (scripts/setup-host.sh)")
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "bash", "-c", self._script()],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        if result.returncode != 0:
            self.stop()
            pytest.fail(f"the {self.kind} libvirtd did not start:\n{self.log()}")
        deadline = time.monotonic() + START_S
        while not self.answers():
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the {self.kind} libvirtd does not answer: {self.uri}\n{self.log()}")
            time.sleep(0.3)

    def answers(self) -> bool:
        result = subprocess.run(
            ["virsh", "-c", self.uri, "version"], capture_output=True, timeout=30
        )
        return result.returncode == 0 and self.ro_socket.is_socket()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.workdir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_libvirtd(self) -> None:
        """libvirtd alone, as when it is stopped or crashes on a node."""
        self._kill("libvirtd")

    def _kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in ("libvirtd", "virtlogd", "polkitd", "dbus"):
            self._kill(name)
