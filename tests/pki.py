"""A throwaway PKI for TLS tests, made with the `openssl` command (no Python dependency).

`make_pki(directory)` writes, all valid for two days:

    ca.pem / ca.key              the CA the agent is told to trust
    server.pem / server.key      signed by it, for 127.0.0.1 and localhost
    named.pem / named.key        signed by it, for mimir.test only (server_name tests)
    client.pem / client.key      signed by it, for client authentication (mTLS)
    other-ca.pem                 a CA nobody trusts
    rogue.pem / rogue.key        signed by other-ca, for 127.0.0.1 and localhost
    encrypted.key                client.key under a passphrase
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PKI", "make_pki"]


@dataclass(frozen=True)
class PKI:
    directory: Path

    def __getattr__(self, name: str) -> str:
        # pki.ca_pem -> ".../ca.pem", pki.other_ca_pem -> ".../other-ca.pem"
        stem, _, ext = name.rpartition("_")
        return str(self.directory / f"{stem.replace('_', '-')}.{ext}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, ca: str, alt_names: str, usage: str, cwd: Path) -> None:
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=cwd,
    )  # fmt: skip
    ext = cwd / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    if alt_names:
        lines.append(f"subjectAltName={alt_names}")
    ext.write_text("\n".join(lines) + "\n", encoding="ascii")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", ext.name,
        cwd=cwd,
    )  # fmt: skip


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    local = "IP:127.0.0.1,DNS:localhost"
    _leaf("server", "ca", local, "serverAuth", directory)
    _leaf("named", "ca", "DNS:mimir.test", "serverAuth", directory)
    _leaf("client", "ca", "", "clientAuth", directory)
    _leaf("rogue", "other-ca", local, "serverAuth", directory)
    _openssl(
        "pkey", "-in", "client.key", "-out", "encrypted.key", "-aes256", "-passout", "pass:pw",
        cwd=directory,
    )  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return PKI(directory)
