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
from asn1crypto import core as asn1
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from lbtwist.security import devcerts
from lbtwist.security.devcerts import PrivateKey
from lbtwist.security.identity import VOMS_AC_OID, VOMS_CERTS_OID, VOMS_FQAN_OID, slash_dn

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


# VOMS


class _ACList(asn1.SequenceOf):
    _child_spec = cms.AttributeCertificateV2


class _ACFull(asn1.SequenceOf):
    _child_spec = _ACList


class _CertList(asn1.SequenceOf):
    _child_spec = ax509.Certificate


class _ACCerts(asn1.Sequence):
    _fields = [("certs", _CertList)]


class _IetfAttrList(asn1.SetOf):
    _child_spec = cms.IetfAttrSyntax


def _aname(n: x509.Name) -> ax509.Name:
    return ax509.Name.load(n.public_bytes())


def _agn(n: x509.Name) -> ax509.GeneralNames:
    return ax509.GeneralNames([ax509.GeneralName(name="directory_name", value=_aname(n))])


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
    Build a VOMS attribute certificate for C{holder} signed by C{voms}.

    @param holder_issuer: the name in the holder's baseCertificateID (default: the
        holder's issuer; old VOMS servers put the holder's subject there).
    """
    values = _IetfAttrList(
        [
            {
                "policy_authority": [
                    ax509.GeneralName(
                        name="uniform_resource_identifier", value=f"{vo}://{host}:15000"
                    )
                ],
                "values": [cms.IetfAttrValue(name="octets", value=f.encode()) for f in fqans],
            }
        ]
    )
    extensions = []
    if include_certs:
        certs = _ACCerts(
            {
                "certs": [
                    ax509.Certificate.load(c.public_bytes(Encoding.DER)) for c in voms.full_chain
                ]
            }
        )
        extensions.append(
            {"extn_id": VOMS_CERTS_OID, "critical": False, "extn_value": certs.dump()}
        )
    info = cms.AttributeCertificateInfoV2(
        {
            "version": "v2",
            "holder": {
                "base_certificate_id": {
                    "issuer": _agn(holder_issuer if holder_issuer is not None else holder.issuer),
                    "serial": holder_serial if holder_serial is not None else holder.serial_number,
                }
            },
            "issuer": cms.AttCertIssuer(
                name="v2_form", value={"issuer_name": _agn(voms.cert.subject)}
            ),
            "signature": {"algorithm": "sha256_ecdsa"},
            "serial_number": 42,
            "att_cert_validity_period": {
                "not_before_time": not_before,
                "not_after_time": not_after,
            },
            "attributes": [
                {
                    "type": VOMS_FQAN_OID,
                    "values": cms.SetOfAny([asn1.Any.load(v.dump()) for v in values]),
                }
            ],
            "extensions": extensions,
        }
    )
    key = sign_with or voms.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(info.dump(), ec.ECDSA(hashes.SHA256()))
    return cms.AttributeCertificateV2(
        {
            "ac_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )


def voms_extension(*acs: cms.AttributeCertificateV2) -> x509.UnrecognizedExtension:
    """
    @return: the proxy extension carrying the ACs (SEQUENCE OF SEQUENCE OF AC).
    """
    der = _ACFull([_ACList(list(acs))]).dump()
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(VOMS_AC_OID), der)


def write_lsc(
    voms_dir: Path, voms: Credential, vo: str = "testvo", host: str = "voms.example.org"
) -> Path:
    """
    Write C{<voms_dir>/<vo>/<host>.lsc} for the VOMS server C{voms}.
    """
    path = voms_dir / vo / f"{host}.lsc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{slash_dn(voms.cert.subject)}\n{slash_dn(voms.cert.issuer)}\n")
    return path
