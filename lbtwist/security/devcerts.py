# -*- test-case-name: tests.unit.test_devcerts -*-
"""
Development PKI: a CA in the IGTF hashed layout with its CRL, a host
certificate, user certificates, an RFC 3820 proxy and a VOMS server with its
C{vomsdir}, generated in-process with C{cryptography}; VOMS attribute
certificates (RFC 3281, as VOMS servers issue them) built with C{asn1crypto}.

The certificate builders here are also the ones the tests use (see
C{tests/certs.py}); nothing in this module reads the clock: callers pass
C{now}.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import attrs
from asn1crypto import cms
from asn1crypto import core as asn1
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lbtwist import config
from lbtwist.security.identity import (
    VOMS_AC_OID,
    VOMS_CERTS_OID,
    VOMS_FQAN_OID,
    ACCerts,
    ACFull,
    ACList,
    slash_dn,
)

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
        # The grid tools need it: voms-proxy-init and voms-proxy-fake name the user
        # certificate's key identifier in the proxy they make, and refuse one without.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
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


# VOMS attribute certificates (RFC 3281 ACs as VOMS servers issue them)


class _IetfAttrList(asn1.SetOf):  # type: ignore[misc]  # asn1crypto ships no type hints
    _child_spec = cms.IetfAttrSyntax


#: The port in the policy authority (C{vo://host:port}) of the development ACs: VOMS
#: servers listen from 15000 up.
DEV_VOMS_PORT = 15000
#: The VO the development VOMS server's C{.lsc} file is written for with the PKI
#: (C{lbtwist certs proxy --voms} adds the others it is asked for).
DEV_VO = "testvo"
#: RFC 5755 noRevAvail: VOMS servers mark their ACs as never revoked.
_NO_REV_AVAIL_OID = "2.5.29.56"


def _general_names(name: x509.Name) -> ax509.GeneralNames:
    return ax509.GeneralNames(
        [ax509.GeneralName(name="directory_name", value=ax509.Name.load(name.public_bytes()))]
    )


def _key_id(cert: x509.Certificate) -> bytes:
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    return ski.digest


def make_voms_ac(
    holder: x509.Certificate,
    signer: x509.Certificate,
    signer_key: PrivateKey,
    fqans: Sequence[str],
    *,
    vo: str,
    host: str,
    not_before: datetime,
    not_after: datetime,
    port: int = DEV_VOMS_PORT,
    carried: Sequence[x509.Certificate] | None = None,
    holder_serial: int | None = None,
    holder_issuer: x509.Name | None = None,
    serial: int | None = None,
) -> cms.AttributeCertificateV2:
    """
    Build the VOMS attribute certificate of C{holder} (the user certificate, not the
    proxy) that the VOMS server C{signer} of C{vo} issues: version 2, the holder's
    issuer and serial (baseCertificateID), the server's name (v2Form), the FQANs as one
    IetfAttrSyntax attribute with the policy authority C{vo://host:port}, and the
    extensions VOMS servers add (the server's certificates, noRevAvail, its key
    identifier). Signed with SHA-256 (RSA PKCS#1 v1.5 or ECDSA, by the key).

    @param carried: the certificates the AC carries (default: C{[signer]}; empty: none).
    @param holder_issuer: the name in the holder's baseCertificateID (default: the
        holder's issuer; old VOMS servers put the holder's subject there).
    """
    values = _IetfAttrList(
        [
            {
                "policy_authority": [
                    ax509.GeneralName(
                        name="uniform_resource_identifier", value=f"{vo}://{host}:{port}"
                    )
                ],
                "values": [cms.IetfAttrValue(name="octets", value=f.encode()) for f in fqans],
            }
        ]
    )
    chain = [signer] if carried is None else list(carried)
    extensions: list[dict[str, object]] = []
    if chain:
        certs = ACCerts(
            {
                "certs": [
                    ax509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
                    for c in chain
                ]
            }
        )
        extensions.append(
            {"extn_id": VOMS_CERTS_OID, "critical": False, "extn_value": certs.dump()}
        )
    extensions.append({"extn_id": _NO_REV_AVAIL_OID, "critical": False, "extn_value": b"\x05\x00"})
    extensions.append(
        {
            "extn_id": "authority_key_identifier",
            "critical": False,
            "extn_value": {"key_identifier": _key_id(signer)},
        }
    )
    if isinstance(signer_key, rsa.RSAPrivateKey):
        algorithm = "sha256_rsa"
    else:
        algorithm = "sha256_ecdsa"
    info = cms.AttributeCertificateInfoV2(
        {
            "version": "v2",
            "holder": {
                "base_certificate_id": {
                    "issuer": _general_names(
                        holder_issuer if holder_issuer is not None else holder.issuer
                    ),
                    "serial": holder_serial if holder_serial is not None else holder.serial_number,
                }
            },
            "issuer": cms.AttCertIssuer(
                name="v2_form", value={"issuer_name": _general_names(signer.subject)}
            ),
            "signature": {"algorithm": algorithm},
            "serial_number": serial if serial is not None else _serial(),
            # Whole seconds: RFC 5280 times have no fraction (the VOMS library crashes
            # on one).
            "att_cert_validity_period": {
                "not_before_time": not_before.replace(microsecond=0),
                "not_after_time": not_after.replace(microsecond=0),
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
    data = info.dump()
    if isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = signer_key.sign(data, ec.ECDSA(hashes.SHA256()))
    return cms.AttributeCertificateV2(
        {
            "ac_info": info,
            "signature_algorithm": {"algorithm": algorithm},
            "signature": signature,
        }
    )


def voms_extension(*acs: cms.AttributeCertificateV2) -> x509.UnrecognizedExtension:
    """
    @return: the (non-critical) proxy extension carrying the ACs, as VOMS proxies do:
        a SEQUENCE OF SEQUENCE OF AC.
    """
    der = ACFull([ACList(list(acs))]).dump()
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(VOMS_AC_OID), der)


def lsc_text(signer: x509.Certificate) -> str:
    """
    @return: the C{.lsc} file that trusts the VOMS server C{signer}: its DN, then its
        issuer's DN, one a line.
    """
    return f"{slash_dn(signer.subject)}\n{slash_dn(signer.issuer)}\n"


def write_lsc(voms_dir: Path, vo: str, host: str, signer: x509.Certificate) -> Path:
    """
    Write C{<voms_dir>/<vo>/<host>.lsc} for the VOMS server C{signer} (unchanged when
    it already says so).

    @return: the path.
    """
    path = voms_dir / vo / f"{host}.lsc"
    text = lsc_text(signer)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    write_file(path, text.encode())
    return path


_VO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_PART = r"[A-Za-z0-9_.-]+"
_FQAN = re.compile(rf"/({_PART})((?:/{_PART})*)(?:/Role=({_PART}))?(?:/Capability=({_PART}))?\Z")
_VOMS_FORMS = "VO, VO:/VO/group or VO:/VO/group/Role=role"


def parse_voms_request(text: str) -> tuple[str, str]:
    """
    Read one C{--voms} value: C{VO} (the VO's root group C{/VO}), C{VO:/VO/group...} or
    C{VO:/VO/group.../Role=role} (a C{/Capability=c} may follow, as in old FQANs).

    @return: the VO and the FQAN in the full form VOMS servers write
        (C{/VO/group/Role=role/Capability=NULL}, C{Role=NULL} when none is asked for).
    @raise ValueError: a malformed value (the message names it and the accepted forms).
    """
    vo, colon, fqan = text.partition(":")
    if not _VO_NAME.match(vo):
        raise ValueError(
            f"--voms {text!r}: {vo!r} is no VO name (letters, digits, '.', '_' and '-');"
            f" give {_VOMS_FORMS}"
        )
    if not colon:
        fqan = f"/{vo}"
    found = _FQAN.match(fqan)
    if found is None:
        raise ValueError(f"--voms {text!r}: {fqan!r} is no FQAN; give {_VOMS_FORMS}")
    if found.group(1) != vo:
        raise ValueError(f"--voms {text!r}: the FQAN {fqan} is not of VO {vo} (it starts /{vo})")
    role = found.group(3) or "NULL"
    capability = found.group(4) or "NULL"
    return vo, f"/{vo}{found.group(2)}/Role={role}/Capability={capability}"


def voms_requests(values: Sequence[str]) -> list[tuple[str, list[str]]]:
    """
    The ACs to issue for C{--voms} values (L{parse_voms_request}): one per VO in order
    of first mention, each with its FQANs in order (repeats dropped) then, as VOMS
    servers list the groups a member belongs to, the VO's root group if not asked for.

    @raise ValueError: a malformed value.
    """
    by_vo: dict[str, list[str]] = {}
    for value in values:
        vo, fqan = parse_voms_request(value)
        fqans = by_vo.setdefault(vo, [])
        if fqan not in fqans:
            fqans.append(fqan)
    for vo, fqans in by_vo.items():
        root = f"/{vo}/Role=NULL/Capability=NULL"
        if root not in fqans:
            fqans.append(root)
    return list(by_vo.items())


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
    voms_cert: Path
    voms_key: Path
    voms_dir: Path

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
            voms_cert=root / "voms" / "vomscert.pem",
            voms_key=root / "voms" / "vomskey.pem",
            voms_dir=root / config.DEV_VOMS_DIR,
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
            ("VOMS server certificate", self.voms_cert),
            ("VOMS server key", self.voms_key),
        ]

    def exists(self) -> bool:
        """
        @return: whether every file is present but the VOMS server's (a directory made
            before there was one gets it from L{ensure_voms_server}).
        """
        voms = (self.voms_cert, self.voms_key)
        return all(p.exists() for _, p in self.paths() if p not in voms)

    def has_voms_server(self) -> bool:
        """
        @return: whether the development VOMS server's certificate and key are present.
        """
        return self.voms_cert.exists() and self.voms_key.exists()


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
    C{user2/...}, the development VOMS server C{voms/vomscert.pem} and
    C{voms/vomskey.pem} (C{voms.<first host name>}) and its C{vomsdir/testvo/<host>.lsc}.
    Keys are mode 0600. Existing files are replaced.
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
    proxy, proxy_key = issue_proxy(user_cert, user_key, now=now, hours=12, key=new_rsa_key())
    write_file(pki.user_proxy, cert_pem(proxy) + key_pem(proxy_key) + cert_pem(user_cert), 0o600)

    user2_cert, user2_key = issue_cert(USER2_NAME, ca_cert, ca_key, now=now, key=new_rsa_key())
    write_file(pki.user2_cert, cert_pem(user2_cert))
    write_file(pki.user2_key, key_pem(user2_key), 0o600)
    _make_voms_server(pki, ca_cert, ca_key, now=now, hostname=hostnames[0])
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
            when = now or datetime.now(UTC)
            renew_dev_crl(found, when)
            renewed = renew_dev_certs(found, when)
            if ensure_voms_server(found, when):
                renewed.append("VOMS server certificate (new)")
            renew_user_proxy(found, when)
            print(f"renewed the CRL and the user proxy of {argv[0]}", file=out)
            for what in renewed:
                print(f"renewed: {what}", file=out)
            pki = found
        else:
            pki = make_dev_pki(argv[0], now=now or datetime.now(UTC))
    except (OSError, ValueError) as e:
        print(f"lbtwist certs dev: {e}", file=err if err is not None else sys.stderr)
        return 1
    for what, path in pki.paths():
        print(f"{what}: {path}", file=out)
    print(f"CA directory (X509_CERT_DIR): {pki.ca_dir}", file=out)
    print(f"VOMS directory (X509_VOMS_DIR): {pki.voms_dir}", file=out)
    return 0


#: The development PKI's directory under a state directory.
DEV_PKI_DIR = config.DEV_PKI_DIR


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
    complete (its VOMS server added if it has none: L{ensure_voms_server}), else
    generated there (shared by the query service and the relay).

    @param reactor: provides C{seconds()} (validity times of new certificates).
    """
    directory = Path(state_dir) / DEV_PKI_DIR
    found = existing_dev_pki(directory)
    now = datetime.fromtimestamp(reactor.seconds(), UTC)
    if found is not None:
        if ensure_voms_server(found, now):
            log.info("added the development VOMS server {path}", path=str(found.voms_cert))
        return found
    return make_dev_pki(directory, now=now, hostnames=hostnames)


#: A user proxy that expires sooner than this is renewed at start-up.
PROXY_RENEW_MARGIN = timedelta(hours=1)


def _proxy_valid(path: Path, now: datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > now + PROXY_RENEW_MARGIN


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{path}: not the RSA or EC key of a development PKI")
    return key


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value)


def renew_user_proxy(
    pki: DevPKI,
    now: datetime,
    *,
    hours: float = 12,
    voms: Sequence[tuple[str, Sequence[str]]] = (),
) -> None:
    """
    Write a fresh proxy of the development user (valid C{hours} from C{now})
    over C{pki.user_proxy}.

    @param voms: (VO, FQANs) pairs (L{voms_requests}): the proxy then carries one AC
        per VO from the development VOMS server (L{ensure_voms_server} made it), valid
        as long as the proxy, and each VO gets its C{.lsc} file in C{pki.voms_dir}.
    """
    user_cert = x509.load_pem_x509_certificate(pki.user_cert.read_bytes())
    user_key = _load_key(pki.user_key)
    start = now - timedelta(minutes=5)
    extensions: list[x509.ExtensionType] = []
    if voms:
        signer = x509.load_pem_x509_certificate(pki.voms_cert.read_bytes())
        signer_key = _load_key(pki.voms_key)
        host = _common_name(signer)
        acs = [
            make_voms_ac(
                user_cert,
                signer,
                signer_key,
                fqans,
                vo=vo,
                host=host,
                not_before=start,
                not_after=now + timedelta(hours=hours),
            )
            for vo, fqans in voms
        ]
        for vo, _ in voms:
            write_lsc(pki.voms_dir, vo, host, signer)
        extensions.append(voms_extension(*acs))
    proxy, proxy_key = issue_proxy(
        user_cert,
        user_key,
        now=now,
        hours=hours,
        key=new_rsa_key(),
        not_before=start,
        extra_extensions=extensions,
    )
    write_file(pki.user_proxy, cert_pem(proxy) + key_pem(proxy_key) + cert_pem(user_cert), 0o600)


def _make_voms_server(
    pki: DevPKI,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    now: datetime,
    hostname: str,
) -> None:
    host = f"voms.{hostname}"
    cert, key = issue_cert(
        host_name(host), ca_cert, ca_key, now=now, hostnames=[host], key=new_rsa_key()
    )
    write_file(pki.voms_key, key_pem(key), 0o600)
    write_file(pki.voms_cert, cert_pem(cert))
    write_lsc(pki.voms_dir, DEV_VO, host, cert)


def ensure_voms_server(pki: DevPKI, now: datetime) -> bool:
    """
    Give a development PKI its VOMS server if it has none (a directory made before
    there was one): an RSA key and a certificate of the development CA for
    C{voms.<host>} (the host certificate's name), and the C{.lsc} file of
    L{DEV_VO} in C{pki.voms_dir}.

    @return: whether the server was made now.
    """
    if pki.has_voms_server():
        return False
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    host_cert = x509.load_pem_x509_certificate(pki.host_cert.read_bytes())
    _make_voms_server(
        pki, ca_cert, _load_key(pki.ca_key), now=now, hostname=_common_name(host_cert)
    )
    return True


#: A development certificate that expires sooner than this is renewed by
#: C{lbtwist certs dev} on its directory.
CERT_RENEW_MARGIN = timedelta(days=30)


def renew_dev_certs(pki: DevPKI, now: datetime) -> list[str]:
    """
    Issue again, with the same subject, key and host names, the development PKI's host,
    user and VOMS server certificates that expire within L{CERT_RENEW_MARGIN} or lack
    a subject key identifier (made by older versions: the VOMS tools refuse such a
    user certificate).

    @return: the descriptions of the certificates renewed.
    """
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key: PrivateKey | None = None
    renewed = []
    for what, cert_path, key_path in (
        ("host certificate", pki.host_cert, pki.host_key),
        ("user certificate", pki.user_cert, pki.user_key),
        ("second user certificate", pki.user2_cert, pki.user2_key),
        ("VOMS server certificate", pki.voms_cert, pki.voms_key),
    ):
        if not cert_path.exists():
            continue
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            fresh = cert.not_valid_after_utc > now + CERT_RENEW_MARGIN
        except x509.ExtensionNotFound:
            fresh = False
        if fresh:
            continue
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hostnames = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            hostnames = []
        ca_key = ca_key or _load_key(pki.ca_key)
        again, _ = issue_cert(
            cert.subject, ca_cert, ca_key, now=now, hostnames=hostnames, key=_load_key(key_path)
        )
        write_file(cert_path, cert_pem(again))
        renewed.append(what)
    return renewed


def renew_dev_crl(pki: DevPKI, now: datetime) -> None:
    """
    Write a fresh (empty) CRL of the development CA over C{pki.crl}, valid 30 days.
    """
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    write_file(pki.crl, crl_pem(make_crl(ca_cert, _load_key(pki.ca_key), now=now)))


def main_certs_proxy(
    directory: str,
    *,
    hours: float = 12,
    voms: Sequence[str] = (),
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """
    C{lbtwist certs proxy DIR [--hours N] [--voms VO[:FQAN] ...]}: renew the
    development user's proxy, with VOMS attributes of the development VOMS server
    when C{voms} names some (L{voms_requests}).

    @return: the exit status (2: a usage error, one line on C{err}).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        requests = voms_requests(voms)
    except ValueError as e:
        print(f"lbtwist certs proxy: {e}", file=err)
        return 2
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
    when = now or datetime.now(UTC)
    try:
        if requests and ensure_voms_server(pki, when):
            print(f"added the development VOMS server: {pki.voms_cert}", file=out)
        renew_user_proxy(pki, when, hours=hours, voms=requests)
    except (OSError, ValueError) as e:
        print(f"lbtwist certs proxy: {e}", file=err)
        return 1
    print(f"user proxy (X509_USER_PROXY): {pki.user_proxy}, valid {hours:g} h", file=out)
    for vo, fqans in requests:
        print(f"VOMS attributes of VO {vo}: {' '.join(fqans)}", file=out)
    if requests:
        print(f"VOMS directory (X509_VOMS_DIR): {pki.voms_dir}", file=out)
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
