# -*- test-case-name: tests.e2e.test_query -*-
"""
Helpers around the real grid tools for the end-to-end query tests: a CA made
with the C{openssl} command (C{openssl ca}, so certificates can be revoked
and the CRL regenerated) in the IGTF hashed layout, RFC 3820 proxies from
C{grid-proxy-init}, VOMS proxies from C{voms-proxy-fake} (offline: it signs
the attribute certificate with a VOMS host certificate of ours), and C{curl}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

TOOLS = ("openssl", "grid-proxy-init", "voms-proxy-fake", "curl")

_CA_CONFIG = """\
[ ca ]
default_ca = testca

[ testca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/cacert.pem
private_key = $dir/cakey.pem
default_md = sha256
default_days = 365
default_crl_days = 30
policy = anything
unique_subject = no
copy_extensions = none

[ anything ]
domainComponent = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied

[ req ]
distinguished_name = dn
prompt = no

[ dn ]

[ ca_ext ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ user_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment, dataEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ host_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def missing_tools() -> list[str]:
    """
    @return: the grid tools not on C{PATH}.
    """
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def run(args: Sequence[str], *, input: str | None = None, timeout: float = 60) -> str:
    """
    Run a tool, fail with its output if it fails; return its standard output.
    """
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited with {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def openssl_subject(dn: str) -> str:
    """
    C{/DC=org/CN=x} is already the form C{openssl -subj} takes; check it.
    """
    if not dn.startswith("/"):
        raise ValueError(f"not a slash-form DN: {dn!r}")
    return dn


@attrs.frozen
class Cert:
    """
    A certificate and its unencrypted key, as files.
    """

    dn: str
    cert: Path
    key: Path


class OpenSSLCA:
    """
    A CA kept by C{openssl ca} under C{directory}, published in the hashed
    layout in C{ca_dir} (C{<hash>.0}, C{<hash>.r0}).
    """

    def __init__(self, directory: Path, ca_dir: Path, dn: str) -> None:
        self.dir = directory
        self.ca_dir = ca_dir
        self.dn = dn
        self.config = directory / "openssl.cnf"
        (directory / "newcerts").mkdir(parents=True, exist_ok=True)
        ca_dir.mkdir(parents=True, exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "crlnumber").write_text("1000\n")
        self.config.write_text(_CA_CONFIG.format(dir=directory))
        self.cert = directory / "cacert.pem"
        self.key = directory / "cakey.pem"
        run(
            [
                "openssl",
                "req",
                "-x509",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "3650",
                "-subj",
                openssl_subject(dn),
                "-config",
                str(self.config),
                "-extensions",
                "ca_ext",
            ]
        )
        self.hash = run(["openssl", "x509", "-in", str(self.cert), "-noout", "-hash"]).strip()
        shutil.copy(self.cert, ca_dir / f"{self.hash}.0")
        self.publish_crl()

    def issue(self, name: str, dn: str, *, host: bool = False) -> Cert:
        """
        Issue a user (or host) certificate with an unencrypted RSA key.
        """
        key = self.dir / f"{name}key.pem"
        req = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}cert.pem"
        run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(req),
                "-subj",
                openssl_subject(dn),
                "-config",
                str(self.config),
            ]
        )
        run(
            [
                "openssl",
                "ca",
                "-batch",
                "-config",
                str(self.config),
                "-extensions",
                "host_ext" if host else "user_ext",
                "-in",
                str(req),
                "-out",
                str(cert),
                "-notext",
            ]
        )
        os.chmod(key, 0o600)
        return Cert(dn, cert, key)

    def revoke(self, cert: Cert) -> None:
        """
        Revoke C{cert} and publish the new CRL (as fetch-crl would).
        """
        run(["openssl", "ca", "-config", str(self.config), "-revoke", str(cert.cert)])
        self.publish_crl()

    def publish_crl(self) -> None:
        crl = self.dir / "crl.pem"
        run(["openssl", "ca", "-config", str(self.config), "-gencrl", "-out", str(crl)])
        # Replace atomically, as fetch-crl does.
        tmp = self.ca_dir / f".{self.hash}.r0.tmp"
        shutil.copy(crl, tmp)
        os.replace(tmp, self.ca_dir / f"{self.hash}.r0")


def grid_proxy_init(user: Cert, out: Path, *, ca_dir: Path, valid: str = "12:00") -> Path:
    """
    An RFC 3820 proxy of C{user} made by C{grid-proxy-init}.
    """
    run(
        [
            "grid-proxy-init",
            "-rfc",
            "-q",
            "-bits",
            "2048",
            "-valid",
            valid,
            "-cert",
            str(user.cert),
            "-key",
            str(user.key),
            "-certdir",
            str(ca_dir),
            "-out",
            str(out),
        ]
    )
    return out


def voms_proxy_fake(
    user: Cert,
    out: Path,
    *,
    voms_host: Cert,
    ca_dir: Path,
    vo: str,
    fqans: Sequence[str],
    uri: str,
    hours: int = 12,
    past: str | None = None,
) -> Path:
    """
    An RFC 3820 proxy of C{user} carrying a VOMS AC for C{vo} signed with
    C{voms_host}, made offline by C{voms-proxy-fake}; with C{past}
    (C{H:M}), the proxy's validity starts that long ago.
    """
    args = [
        "voms-proxy-fake",
        "-q",
        "-rfc",
        "-cert",
        str(user.cert),
        "-key",
        str(user.key),
        "-hours",
        str(hours),
        "-certdir",
        str(ca_dir),
        "-out",
        str(out),
    ]
    if fqans:
        # -newformat: the AC holder names the user certificate's issuer (RFC 3281),
        # as current VOMS servers write it; the old format names its subject.
        args += ["-newformat", "-hostcert", str(voms_host.cert), "-hostkey", str(voms_host.key)]
        args += ["-voms", vo, "-uri", uri, "-vomslife", str(hours)]
        for fqan in fqans:
            args += ["-fqan", fqan]
    if past is not None:
        args += ["-pastproxy", past]
    run(args)
    return out


def write_lsc(voms_dir: Path, vo: str, host: str, voms_host: Cert, ca: OpenSSLCA) -> Path:
    """
    C{<voms_dir>/<vo>/<host>.lsc}: the VOMS server's DN and its CA's DN.
    """
    path = voms_dir / vo / f"{host}.lsc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{voms_host.dn}\n{ca.dn}\n")
    return path


def curl(
    url: str, *, proxy: Path | None, ca_dir: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """
    C{curl} as a grid user asks the query service: the proxy file as
    certificate and key, the CA directory as C{--capath}; JSON accepted.
    The HTTP status is the last line of the output.
    """
    args = ["curl", "-sS", "--max-time", str(int(timeout)), "--capath", str(ca_dir)]
    args += ["-H", "Accept: application/json", "-w", "\n%{http_code}"]
    if proxy is not None:
        args += ["--cert", str(proxy), "--key", str(proxy)]
    return subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout + 10)


def curl_status(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    """
    @return: the HTTP status (0 without an answer) and the body.
    """
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body
