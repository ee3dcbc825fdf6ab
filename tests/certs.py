# -*- test-case-name: tests.unit.test_identity -*-
"""
Test helpers: a small PKI built in-process (CA, users, RFC 3820 proxies,
CRLs, a VOMS server and VOMS attribute certificates).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from asn1crypto import cms
from cryptography import x509

from lbtwist.security import devcerts
from lbtwist.security.devcerts import PrivateKey

#: A fixed "now" for tests.
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def name(dn: str) -> x509.Name:
    """
    Build a name from a slash-form DN with DC/O/OU/CN/C/emailAddress parts.
    """
    oids = {
        "DC": x509.NameOID.DOMAIN_COMPONENT,
        "O": x509.NameOID.ORGANIZATION_NAME,
        "OU": x509.NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": x509.NameOID.COMMON_NAME,
        "C": x509.NameOID.COUNTRY_NAME,
        "emailAddress": x509.NameOID.EMAIL_ADDRESS,
    }
    attrs_ = []
    for part in dn.strip("/").split("/"):
        key, _, value = part.partition("=")
        attrs_.append(x509.NameAttribute(oids[key], value))
    return x509.Name(attrs_)


@attrs.define
class Credential:
    """
    A certificate, its key and the chain above it (leaf first, CA excluded).
    """

    cert: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate] = attrs.Factory(list)

    @property
    def full_chain(self) -> list[x509.Certificate]:
        return [self.cert, *self.chain]

    def pem(self) -> bytes:
        """
        @return: cert, key, then chain, as in a grid proxy file.
        """
        return (
            devcerts.cert_pem(self.cert)
            + devcerts.key_pem(self.key)
            + b"".join(devcerts.cert_pem(c) for c in self.chain)
        )

    def write(self, path: Path) -> Path:
        devcerts.write_file(path, self.pem(), 0o600)
        return path


@attrs.define
class TestCA:
    """
    A test CA able to issue users, hosts, proxies and CRLs.
    """

    cert: x509.Certificate
    key: PrivateKey
    now: datetime = NOW

    @classmethod
    def create(cls, dn: str = "/DC=org/DC=example/CN=Test CA", now: datetime = NOW) -> TestCA:
        cert, key = devcerts.make_ca(name(dn), now=now)
        return cls(cert, key, now)

    def user(
        self, dn: str = "/DC=org/DC=example/OU=People/CN=Test User", **kw: object
    ) -> Credential:
        cert, key = devcerts.issue_cert(name(dn), self.cert, self.key, now=self.now, **kw)  # type: ignore[arg-type]
        return Credential(cert, key)

    def host(self, hostname: str = "localhost") -> Credential:
        cert, key = devcerts.issue_cert(
            devcerts.host_name(hostname), self.cert, self.key, now=self.now, hostnames=[hostname]
        )
        return Credential(cert, key)

    def crl(
        self, revoked: Sequence[x509.Certificate] = (), **kw: object
    ) -> x509.CertificateRevocationList:
        return devcerts.make_crl(
            self.cert,
            self.key,
            now=self.now,
            revoked=[c.serial_number for c in revoked],
            **kw,  # type: ignore[arg-type]
        )

    def install(self, ca_dir: Path, crl: x509.CertificateRevocationList | None = None) -> None:
        devcerts.install_ca(ca_dir, self.cert, crl)


def proxy_of(cred: Credential, *, now: datetime = NOW, **kw: object) -> Credential:
    """
    @return: a proxy of C{cred} (RFC 3820 unless C{legacy=True}).
    """
    cert, key = devcerts.issue_proxy(cred.cert, cred.key, now=now, **kw)  # type: ignore[arg-type]
    return Credential(cert, key, [cred.cert, *cred.chain])


# VOMS (the builders are the library's: lbtwist.security.devcerts)


def make_ac(
    holder: x509.Certificate,
    voms: Credential,
    fqans: Sequence[str],
    *,
    vo: str = "testvo",
    host: str = "voms.example.org",
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(hours=12),
    include_certs: bool = True,
    holder_serial: int | None = None,
    holder_issuer: x509.Name | None = None,
    sign_with: PrivateKey | None = None,
) -> cms.AttributeCertificateV2:
    """
    Build a VOMS attribute certificate for C{holder} signed by C{voms}
    (L{devcerts.make_voms_ac}; C{sign_with}: another key signs it).
    """
    return devcerts.make_voms_ac(
        holder,
        voms.cert,
        sign_with or voms.key,
        fqans,
        vo=vo,
        host=host,
        not_before=not_before,
        not_after=not_after,
        carried=voms.full_chain if include_certs else (),
        holder_serial=holder_serial,
        holder_issuer=holder_issuer,
        serial=42,
    )


voms_extension = devcerts.voms_extension


def write_lsc(
    voms_dir: Path, voms: Credential, vo: str = "testvo", host: str = "voms.example.org"
) -> Path:
    """
    Write C{<voms_dir>/<vo>/<host>.lsc} for the VOMS server C{voms}.
    """
    return devcerts.write_lsc(voms_dir, vo, host, voms.cert)
