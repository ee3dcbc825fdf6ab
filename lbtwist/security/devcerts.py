# -*- test-case-name: tests.unit.test_devcerts -*-
"""
Development PKI: a CA in the IGTF hashed layout with its CRL, a host
certificate, user certificates and an RFC 3820 proxy, generated in-process
with C{cryptography}.

The certificate builders here are also the ones the tests use (see
C{tests/certs.py}); nothing in this module reads the clock: callers pass
C{now}.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import attrs
from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: RFC 3820 proxyCertInfo extension.
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
#: RFC 3820 policy languages.
PPL_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
PPL_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
#: Globus "limited proxy" policy language.
PPL_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

log = Logger()

CA_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "lbtwist"),
        x509.NameAttribute(NameOID.COMMON_NAME, "lbtwist development CA"),
    ]
)


#: Key usage of end-entity and proxy certificates (signing, key exchange).
_END_ENTITY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def person_name(cn: str, ou: str = "Development") -> x509.Name:
    """
    @return: C{/DC=org/DC=lbtwist/OU=<ou>/CN=<cn>}.
    """
    return x509.Name(
        [
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "lbtwist"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


USER_NAME = person_name("lbtwist dev user")
USER2_NAME = person_name("lbtwist dev user two")


class _ProxyPolicy(asn1.Sequence):  # type: ignore[misc]  # asn1crypto ships no type hints
    _fields = [
        ("policy_language", asn1.ObjectIdentifier),
        ("policy", asn1.OctetString, {"optional": True}),
    ]


class _ProxyCertInfo(asn1.Sequence):  # type: ignore[misc]  # asn1crypto ships no type hints
    _fields = [
        ("path_len_constraint", asn1.Integer, {"optional": True}),
        ("proxy_policy", _ProxyPolicy),
    ]


def proxy_cert_info_der(
    policy_language: str = PPL_INHERIT_ALL, path_len: int | None = None
) -> bytes:
    """
    @return: the DER value of an RFC 3820 proxyCertInfo extension.
    """
    value: dict[str, object] = {"proxy_policy": {"policy_language": policy_language}}
    if path_len is not None:
        value["path_len_constraint"] = path_len
    der: bytes = _ProxyCertInfo(value).dump()
    return der


def new_key() -> PrivateKey:
    """
    @return: a fresh EC P-256 key (fast to generate, fine for tests and dev).
    """
    return ec.generate_private_key(ec.SECP256R1())


#: The size of the development PKI's RSA keys.
DEV_RSA_BITS = 2048


def new_rsa_key(bits: int = DEV_RSA_BITS) -> PrivateKey:
    """
    @return: a fresh RSA key: what the development PKI's CA, host and users get, since
        the grid tools (C{grid-proxy-init}, C{voms-proxy-init}) refuse EC keys.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _serial() -> int:
    return secrets.randbits(63) + 1


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    serial: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else _serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(
    name: x509.Name = CA_NAME,
    *,
    now: datetime,
    days: int = 3650,
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """
    Make a self-signed CA certificate.
    """
    key = key or new_key()
    builder = (
        _base(name, name, key, now - timedelta(hours=1), now + timedelta(days=days), None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256()), key


def issue_cert(
    subject: x509.Name,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    now: datetime,
    days: int = 365,
    hostnames: Sequence[str] = (),
    key: PrivateKey | None = None,
    serial: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """
    Issue an end-entity certificate (a host certificate when C{hostnames}).
    """
    key = key or new_key()
    builder = (
        _base(
            subject,
            issuer_cert.subject,
            key,
            not_before or now - timedelta(hours=1),
            not_after or now + timedelta(days=days),
            serial,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _END_ENTITY_USAGE,
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if hostnames:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def host_name(hostname: str) -> x509.Name:
    """
    @return: C{/DC=org/DC=lbtwist/OU=Hosts/CN=<hostname>}.
    """
    return person_name(hostname, ou="Hosts")


def issue_proxy(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    now: datetime,
    hours: float = 12,
    key: PrivateKey | None = None,
    serial: int | None = None,
    legacy: bool = False,
    limited: bool = False,
    policy_language: str | None = None,
    not_before: datetime | None = None,
    extra_extensions: Iterable[x509.ExtensionType] = (),
) -> tuple[x509.Certificate, PrivateKey]:
    """
    Issue a proxy certificate of C{issuer_cert} signed by its key.

    RFC 3820 by default: CN = the serial number appended to the subject,
    proxyCertInfo critical with id-ppl-inheritAll. With C{legacy}, a
    pre-RFC Globus proxy (CN=proxy or CN=limited proxy, no proxyCertInfo).
    """
    key = key or new_key()
    serial = serial if serial is not None else _serial()
    if legacy:
        cn = "limited proxy" if limited else "proxy"
    else:
        cn = str(serial)
    subject = x509.Name(
        list(issuer_cert.subject.rdns)
        + [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])]
    )
    start = not_before or now - timedelta(minutes=5)
    builder = _base(
        subject, issuer_cert.subject, key, start, now + timedelta(hours=hours), serial
    ).add_extension(
        _END_ENTITY_USAGE,
        critical=True,
    )
    if not legacy:
        language = policy_language or (PPL_LIMITED if limited else PPL_INHERIT_ALL)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_der(language)),
            critical=True,
        )
    for ext in extra_extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    now: datetime,
    revoked: Iterable[int] = (),
    days: float = 30,
    last_update: datetime | None = None,
) -> x509.CertificateRevocationList:
    """
    Make a CRL of C{ca_cert} revoking the given serial numbers.
    """
    last = last_update or now - timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(last)
        .next_update(last + timedelta(days=days))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def subject_hash(cert: x509.Certificate) -> str:
    """
    @return: OpenSSL's subject hash (C{openssl x509 -hash}) as 8 hex digits.
    """
    return f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """
    @return: the key as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """
    Write C{data} to C{path} atomically with the given mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_ca(
    ca_dir: Path,
    ca_cert: x509.Certificate,
    crl: x509.CertificateRevocationList | None = None,
) -> tuple[Path, Path | None]:
    """
    Write a CA certificate (and its CRL) into C{ca_dir} in the hashed layout.

    @return: the C{<hash>.0} path and the C{<hash>.r0} path (or L{None}).
    """
    h = subject_hash(ca_cert)
    cert_path = ca_dir / f"{h}.0"
    write_file(cert_path, cert_pem(ca_cert))
    crl_path = None
    if crl is not None:
        crl_path = ca_dir / f"{h}.r0"
        write_file(crl_path, crl_pem(crl))
    return cert_path, crl_path


@attrs.frozen
class DevPKI:
    """
    Paths of a development PKI (see L{make_dev_pki}).
    """

    directory: Path
    ca_dir: Path
    ca_cert: Path
    ca_key: Path
    crl: Path
    host_cert: Path
    host_key: Path
    user_cert: Path
    user_key: Path
    user_proxy: Path
    user2_cert: Path
    user2_key: Path

    @classmethod
    def under(cls, root: Path, ca_cert: Path, crl: Path) -> DevPKI:
        """
        @return: the paths of a development PKI in L{make_dev_pki}'s layout
            under C{root}, whose CA certificate and CRL are C{ca_cert} and C{crl}
            (their names are the CA's subject hash).
        """
        return cls(
            directory=root,
            ca_dir=root / "certificates",
            ca_cert=ca_cert,
            ca_key=root / "ca" / "cakey.pem",
            crl=crl,
            host_cert=root / "hostcert.pem",
            host_key=root / "hostkey.pem",
            user_cert=root / "user" / "usercert.pem",
            user_key=root / "user" / "userkey.pem",
            user_proxy=root / "user" / "x509up",
            user2_cert=root / "user2" / "usercert.pem",
            user2_key=root / "user2" / "userkey.pem",
        )

    def paths(self) -> list[tuple[str, Path]]:
        """
        @return: (description, path) of every file written.
        """
        return [
            ("CA certificate", self.ca_cert),
            ("CA key", self.ca_key),
            ("CRL", self.crl),
            ("host certificate", self.host_cert),
            ("host key", self.host_key),
            ("user certificate", self.user_cert),
            ("user key", self.user_key),
            ("user proxy", self.user_proxy),
            ("second user certificate", self.user2_cert),
            ("second user key", self.user2_key),
        ]

    def exists(self) -> bool:
        """
        @return: whether every file is present.
        """
        return all(p.exists() for _, p in self.paths())


def make_dev_pki(
    directory: str | os.PathLike[str],
    *,
    now: datetime,
    hostnames: Sequence[str] = ("localhost",),
) -> DevPKI:
    """
    Generate a development PKI under C{directory}.

    Layout: C{certificates/<hash>.0} and C{<hash>.r0} (the CA directory),
    C{ca/cakey.pem}, C{hostcert.pem}/C{hostkey.pem}, C{user/usercert.pem},
    C{user/userkey.pem}, C{user/x509up} (proxy cert, proxy key, user cert),
    C{user2/...}. Keys are mode 0600. Existing files are replaced.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    root = Path(directory)
    ca_cert, ca_key = make_ca(now=now, key=new_rsa_key())
    crl = make_crl(ca_cert, ca_key, now=now)
    ca_path, crl_path = install_ca(root / "certificates", ca_cert, crl)
    assert crl_path is not None
    pki = DevPKI.under(root, ca_path, crl_path)
    write_file(pki.ca_key, key_pem(ca_key), 0o600)

    host_cert, host_key = issue_cert(
        host_name(hostnames[0]), ca_cert, ca_key, now=now, hostnames=hostnames, key=new_rsa_key()
    )
    write_file(pki.host_cert, cert_pem(host_cert))
    write_file(pki.host_key, key_pem(host_key), 0o600)

    user_cert, user_key = issue_cert(USER_NAME, ca_cert, ca_key, now=now, key=new_rsa_key())
    write_file(pki.user_cert, cert_pem(user_cert))
    write_file(pki.user_key, key_pem(user_key), 0o600)
    proxy, proxy_key = issue_proxy(user_cert, user_key, now=now, hours=12)
    write_file(pki.user_proxy, cert_pem(proxy) + key_pem(proxy_key) + cert_pem(user_cert), 0o600)

    user2_cert, user2_key = issue_cert(USER2_NAME, ca_cert, ca_key, now=now, key=new_rsa_key())
    write_file(pki.user2_cert, cert_pem(user2_cert))
    write_file(pki.user2_key, key_pem(user2_key), 0o600)
    return pki


def main_certs_dev(
    argv: Sequence[str],
    *,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """
    C{lbtwist certs dev DIR}: write a development PKI and list the files.

    @param argv: the arguments after C{certs dev} (one: the directory).
    @return: the exit status.
    """
    out = out if out is not None else sys.stdout
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: lbtwist certs dev DIR", file=err if err is not None else sys.stderr)
        return 2
    try:
        found = existing_dev_pki(argv[0])
        if found is not None:
            # Keep the keys and certificates (clients and services trust them): renew
            # what expires, the CRL and the user proxy.
            renew_dev_crl(found, now or datetime.now(UTC))
            renew_user_proxy(found, now or datetime.now(UTC))
            print(f"renewed the CRL and the user proxy of {argv[0]}", file=out)
            pki = found
        else:
            pki = make_dev_pki(argv[0], now=now or datetime.now(UTC))
    except (OSError, ValueError) as e:
        print(f"lbtwist certs dev: {e}", file=err if err is not None else sys.stderr)
        return 1
    for what, path in pki.paths():
        print(f"{what}: {path}", file=out)
    print(f"CA directory (X509_CERT_DIR): {pki.ca_dir}", file=out)
    return 0


#: The development PKI's directory under a state directory.
DEV_PKI_DIR = "devcerts"


def existing_dev_pki(directory: str | os.PathLike[str]) -> DevPKI | None:
    """
    @return: the development PKI already written under C{directory} by
        L{make_dev_pki}, or L{None} if it is missing or incomplete.
    """
    root = Path(directory)
    ca_dir = root / "certificates"
    certs = sorted(ca_dir.glob("*.0")) if ca_dir.is_dir() else []
    if len(certs) != 1:
        return None
    ca_cert = certs[0]
    pki = DevPKI.under(root, ca_cert, ca_cert.with_name(ca_cert.stem + ".r0"))
    return pki if pki.exists() else None


def ensure_dev_pki(
    state_dir: str | os.PathLike[str],
    reactor: IReactorTime,
    *,
    hostnames: Sequence[str] = ("localhost",),
) -> DevPKI:
    """
    The development PKI of a service: reused from C{<state_dir>/devcerts} if
    complete, else generated there (shared by the query service and the relay).

    @param reactor: provides C{seconds()} (validity times of new certificates).
    """
    directory = Path(state_dir) / DEV_PKI_DIR
    found = existing_dev_pki(directory)
    if found is not None:
        return found
    now = datetime.fromtimestamp(reactor.seconds(), UTC)
    return make_dev_pki(directory, now=now, hostnames=hostnames)


#: A user proxy that expires sooner than this is renewed at start-up.
PROXY_RENEW_MARGIN = timedelta(hours=1)


def _proxy_valid(path: Path, now: datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > now + PROXY_RENEW_MARGIN


def renew_user_proxy(pki: DevPKI, now: datetime, *, hours: float = 12) -> None:
    """
    Write a fresh proxy of the development user (valid C{hours} from C{now})
    over C{pki.user_proxy}.
    """
    user_cert = x509.load_pem_x509_certificate(pki.user_cert.read_bytes())
    user_key = serialization.load_pem_private_key(pki.user_key.read_bytes(), None)
    if not isinstance(user_key, PrivateKey):
        raise ValueError(f"{pki.user_key}: not the EC key of a development PKI")
    proxy, proxy_key = issue_proxy(user_cert, user_key, now=now, hours=hours)
    write_file(pki.user_proxy, cert_pem(proxy) + key_pem(proxy_key) + cert_pem(user_cert), 0o600)


def renew_dev_crl(pki: DevPKI, now: datetime) -> None:
    """
    Write a fresh (empty) CRL of the development CA over C{pki.crl}, valid 30 days.
    """
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    if not isinstance(ca_key, PrivateKey):
        raise ValueError(f"{pki.ca_key}: not the key of a development CA")
    write_file(pki.crl, crl_pem(make_crl(ca_cert, ca_key, now=now)))


def main_certs_proxy(
    directory: str,
    *,
    hours: float = 12,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """
    C{lbtwist certs proxy DIR [--hours N]}: renew the development user's proxy.

    @return: the exit status.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    pki = existing_dev_pki(directory)
    if pki is None:
        print(
            f"lbtwist certs proxy: {directory}: no development PKI there"
            " (make one with lbtwist certs dev DIR)",
            file=err,
        )
        return 1
    if not 0 < hours <= 24 * 366:
        print("lbtwist certs proxy: --hours must be above 0 and at most a year", file=err)
        return 2
    try:
        renew_user_proxy(pki, now or datetime.now(UTC), hours=hours)
    except (OSError, ValueError) as e:
        print(f"lbtwist certs proxy: {e}", file=err)
        return 1
    print(f"user proxy (X509_USER_PROXY): {pki.user_proxy}, valid {hours:g} h", file=out)
    return 0


def dev_pki(state_dir: str | os.PathLike[str], reactor: IReactorTime) -> DevPKI:
    """
    The development PKI of C{twistd lbproxy}/C{lbserver} without host
    credentials: L{ensure_dev_pki} under C{state_dir}, its user proxy renewed
    (L{renew_user_proxy}) when it expires within L{PROXY_RENEW_MARGIN}.

    @param reactor: provides C{seconds()}.
    """
    pki = ensure_dev_pki(state_dir, reactor, hostnames=("localhost",))
    now = datetime.fromtimestamp(reactor.seconds(), UTC)
    if not _proxy_valid(pki.user_proxy, now):
        log.info("renewing the development user proxy {path}", path=str(pki.user_proxy))
        renew_user_proxy(pki, now)
    return pki
