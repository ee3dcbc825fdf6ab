# -*- test-case-name: tests.test_identity -*-
"""
Who a client is: the DN of its certificate chain and its VOMS FQANs.

Chains are lists of C{cryptography} certificates, leaf first (as
L{lbtwist.tls.verified_chain} returns them). Nothing here reads the clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import attrs
from asn1crypto import cms
from asn1crypto import core as asn1
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.logger import Logger

log = Logger()

PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"
#: The pre-RFC (GT3 draft) proxyCertInfo.
DRAFT_PROXY_CERT_INFO_OID = "1.3.6.1.4.1.3536.1.222"
VOMS_AC_OID = "1.3.6.1.4.1.8005.100.100.5"
VOMS_FQAN_OID = "1.3.6.1.4.1.8005.100.100.4"
VOMS_CERTS_OID = "1.3.6.1.4.1.8005.100.100.10"

#: Attribute short names as OpenSSL prints them in slash-form DNs.
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.46": "dnQualifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}


@attrs.frozen
class Identity:
    """
    An authenticated client.

    @ivar dn: slash-form DN of the first non-proxy certificate.
    @ivar fqans: trusted VOMS FQANs, in AC order (may be empty).
    @ivar chain_subjects: slash-form subjects of the chain, leaf first.
    """

    dn: str
    fqans: tuple[str, ...] = ()
    chain_subjects: tuple[str, ...] = ()


def _value_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def slash_dn(name: x509.Name) -> str:
    """
    @return: the OpenSSL slash form of C{name} (C{/DC=org/.../CN=Test User}).
    """
    parts = []
    for rdn in name.rdns:
        parts.append(
            "+".join(
                f"{_SHORT_NAMES.get(a.oid.dotted_string, a.oid.dotted_string)}={_value_text(a.value)}"
                for a in rdn
            )
        )
    return "".join("/" + p for p in parts)


def _asn1_slash_dn(name: ax509.Name) -> str:
    parts = []
    for rdn in name.chosen:
        parts.append(
            "+".join(
                f"{_SHORT_NAMES.get(a['type'].dotted, a['type'].dotted)}={_value_text(a['value'].native)}"
                for a in rdn
            )
        )
    return "".join("/" + p for p in parts)


_EMAIL = re.compile(r"/(?:emailaddress|email|e)=")


def normalize_dn(dn: str) -> str:
    """
    Normalize a DN for comparison as L&B does: case-insensitive, and
    C{/emailAddress=}, C{/Email=} and C{/E=} are the same attribute.
    """
    return _EMAIL.sub("/emailaddress=", dn.strip().lower())


def same_dn(a: str, b: str) -> bool:
    """
    @return: whether the two slash-form DNs name the same subject.
    """
    return normalize_dn(a) == normalize_dn(b)


def _has_extension(cert: x509.Certificate, dotted: str) -> bool:
    return any(ext.oid.dotted_string == dotted for ext in cert.extensions)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bc.value.ca


def is_legacy_proxy(cert: x509.Certificate) -> bool:
    """
    @return: whether C{cert} looks like a pre-RFC Globus proxy of its issuer
        (subject = issuer + C{CN=proxy} or C{CN=limited proxy}).
    """
    rdns = list(cert.subject.rdns)
    if len(rdns) < 2 or x509.Name(rdns[:-1]) != cert.issuer:
        return False
    last = list(rdns[-1])
    return (
        len(last) == 1
        and last[0].oid == x509.NameOID.COMMON_NAME
        and _value_text(last[0].value) in ("proxy", "limited proxy")
    )


def is_proxy(cert: x509.Certificate, *, allow_legacy: bool = False) -> bool:
    """
    @return: whether C{cert} is a proxy certificate (RFC 3820 or draft
        proxyCertInfo; pre-RFC Globus proxies only with C{allow_legacy}).
    """
    if _has_extension(cert, PROXY_CERT_INFO_OID) or _has_extension(cert, DRAFT_PROXY_CERT_INFO_OID):
        return True
    return allow_legacy and not _is_ca(cert) and is_legacy_proxy(cert)


def end_entity(
    chain: Sequence[x509.Certificate], *, allow_legacy: bool = False
) -> x509.Certificate:
    """
    @return: the first non-proxy certificate from the leaf.
    @raise ValueError: if there is none.
    """
    for cert in chain:
        if not is_proxy(cert, allow_legacy=allow_legacy):
            return cert
    raise ValueError("certificate chain has no end-entity certificate")


def dn_of_chain(chain: Sequence[x509.Certificate], *, allow_legacy: bool = False) -> str:
    """
    @return: the slash-form DN of the first non-proxy certificate from the leaf.
    @raise ValueError: if the chain is only proxies (or empty).
    """
    return slash_dn(end_entity(chain, allow_legacy=allow_legacy).subject)


def identity_of_chain(
    chain: Sequence[x509.Certificate],
    *,
    now: datetime,
    voms_dir: str | Path | None = None,
    ca_certs: Sequence[x509.Certificate] | None = None,
    allow_legacy: bool = False,
) -> Identity:
    """
    Build the L{Identity} of a verified chain (FQANs only with a C{voms_dir}).
    """
    fqans: tuple[str, ...] = ()
    if voms_dir is not None:
        fqans = voms_fqans(
            chain, voms_dir=voms_dir, now=now, ca_certs=ca_certs, allow_legacy=allow_legacy
        )
    return Identity(
        dn=dn_of_chain(chain, allow_legacy=allow_legacy),
        fqans=fqans,
        chain_subjects=tuple(slash_dn(c.subject) for c in chain),
    )


# VOMS attribute certificates.


class _ACList(asn1.SequenceOf):
    _child_spec = cms.AttributeCertificateV2


class _ACFull(asn1.SequenceOf):
    _child_spec = _ACList


class _CertList(asn1.SequenceOf):
    _child_spec = ax509.Certificate


class _ACCerts(asn1.Sequence):
    _fields = [("certs", _CertList)]


class VOMSError(Exception):
    """
    An attribute certificate that cannot be trusted (never leaves this module).
    """


def _extension_value(extensions: Iterable[ax509.Extension], dotted: str) -> bytes | None:
    for ext in extensions:
        if ext["extn_id"].dotted == dotted:
            value = ext["extn_value"]
            return bytes(value.contents)
    return None


def _ac_certs(ac_info: cms.AttributeCertificateInfoV2) -> list[x509.Certificate]:
    if not ac_info["extensions"]:
        return []
    der = _extension_value(ac_info["extensions"], VOMS_CERTS_OID)
    if der is None:
        return []
    try:
        certs = list(_ACCerts.load(der)["certs"])
    except (ValueError, TypeError):
        certs = list(_CertList.load(der))
    return [x509.load_der_x509_certificate(c.dump()) for c in certs]


def _fqans_and_authority(ac_info: cms.AttributeCertificateInfoV2) -> tuple[list[str], str]:
    fqans: list[str] = []
    authority = ""
    for attribute in ac_info["attributes"]:
        if attribute["type"].dotted != VOMS_FQAN_OID:
            continue
        for any_value in attribute["values"]:
            syntax = cms.IetfAttrSyntax.load(any_value.dump())
            for name in syntax["policy_authority"] or ():
                authority = authority or _value_text(name.native)
            for value in syntax["values"]:
                fqans.append(_value_text(value.native))
    return fqans, authority


def _verify_signature(ac: cms.AttributeCertificateV2, signer: x509.Certificate) -> None:
    algorithm = ac["signature_algorithm"]
    hash_name = algorithm.hash_algo
    digest: hashes.HashAlgorithm = {
        "sha1": hashes.SHA1(),
        "sha224": hashes.SHA224(),
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }[hash_name]
    data = ac["ac_info"].dump()
    signature = ac["signature"].native
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            raise VOMSError("unsupported VOMS signer key type")
    except InvalidSignature:
        raise VOMSError("bad AC signature") from None


def _lsc_chains(path: Path) -> list[list[str]]:
    chains: list[list[str]] = [[]]
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            chains.append([])
            continue
        chains[-1].append(line)
    return [c for c in chains if c]


def _signer_dns(signer: x509.Certificate, others: Sequence[x509.Certificate]) -> list[str]:
    dns = [slash_dn(signer.subject), slash_dn(signer.issuer)]
    current = signer
    for _ in range(len(others)):
        parent = next(
            (c for c in others if c.subject == current.issuer and c.subject != c.issuer), None
        )
        if parent is None:
            break
        dns.append(slash_dn(parent.issuer))
        current = parent
    return dns


def _check_ac(
    ac: cms.AttributeCertificateV2,
    holder: x509.Certificate,
    *,
    voms_dir: Path,
    now: datetime,
    ca_certs: Sequence[x509.Certificate] | None,
) -> list[str]:
    info = ac["ac_info"]
    fqans, authority = _fqans_and_authority(info)
    if not fqans:
        raise VOMSError("no FQANs in the AC")
    vo, _, hostport = authority.partition("://")
    if not vo:
        vo = fqans[0].strip("/").split("/")[0]
    host = hostport.rpartition(":")[0] if ":" in hostport else hostport

    validity = info["att_cert_validity_period"]
    if not (validity["not_before_time"].native <= now <= validity["not_after_time"].native):
        raise VOMSError("AC outside its validity period")

    base = info["holder"]["base_certificate_id"]
    if not base:
        raise VOMSError("AC holder has no baseCertificateID")
    if base["serial"].native != holder.serial_number:
        raise VOMSError("AC holder serial does not match the user certificate")
    # RFC 3281 names the holder certificate's issuer; old VOMS servers (and
    # voms-proxy-fake without -newformat) name its subject: accept both.
    issuers = [n.chosen for n in base["issuer"] if n.name == "directory_name"]
    accepted = (slash_dn(holder.issuer), slash_dn(holder.subject))
    if not any(same_dn(_asn1_slash_dn(n), dn) for n in issuers for dn in accepted):
        raise VOMSError("AC holder issuer does not match the user certificate")

    ac_issuer = info["issuer"]
    names = ac_issuer.chosen["issuer_name"] if ac_issuer.name == "v2_form" else ac_issuer.chosen
    issuer_dns = [_asn1_slash_dn(n.chosen) for n in names or () if n.name == "directory_name"]
    certs = _ac_certs(info)
    signer = next(
        (c for c in certs if any(same_dn(slash_dn(c.subject), d) for d in issuer_dns)), None
    )
    if signer is None:
        raise VOMSError("AC carries no certificate of its issuer")
    if not (signer.not_valid_before_utc <= now <= signer.not_valid_after_utc):
        raise VOMSError("VOMS server certificate expired or not yet valid")
    _verify_signature(ac, signer)

    vo_dir = voms_dir / vo
    lsc_files = [vo_dir / f"{host}.lsc"] if host else []
    if not lsc_files or not lsc_files[0].exists():
        lsc_files = sorted(vo_dir.glob("*.lsc")) if vo_dir.is_dir() else []
    dns = _signer_dns(signer, certs)
    matched = False
    for lsc in lsc_files:
        for chain in _lsc_chains(lsc):
            if len(chain) >= 2 and len(chain) <= len(dns):
                if all(same_dn(a, b) for a, b in zip(chain, dns, strict=False)):
                    matched = True
    if not matched:
        raise VOMSError(f"no .lsc file of VO {vo!r} matches the AC signer")
    if ca_certs is not None:
        trusted = False
        for ca in ca_certs:
            if ca.subject == signer.issuer:
                try:
                    signer.verify_directly_issued_by(ca)
                    trusted = True
                except (ValueError, TypeError, InvalidSignature):
                    pass
        if not trusted:
            raise VOMSError("VOMS server certificate not issued by a trusted CA")
    return fqans


def voms_fqans(
    chain: Sequence[x509.Certificate],
    *,
    voms_dir: str | Path,
    now: datetime,
    ca_certs: Sequence[x509.Certificate] | None = None,
    allow_legacy: bool = False,
) -> tuple[str, ...]:
    """
    The trusted VOMS FQANs of a chain.

    The AC is taken from the first certificate (from the leaf) carrying the
    VOMS extension. It is trusted when signed by the VOMS server certificate
    it carries, whose DN chain matches C{<voms_dir>/<vo>/<host>.lsc}, within
    its validity window at C{now}, and held by the chain's user certificate.
    With C{ca_certs}, the VOMS server certificate must also be issued by one
    of them. Any failure gives no FQANs and a log line, never an exception.
    """
    try:
        holder = end_entity(chain, allow_legacy=allow_legacy)
    except ValueError:
        return ()
    for cert in chain:
        ext = next((e for e in cert.extensions if e.oid.dotted_string == VOMS_AC_OID), None)
        if ext is None:
            continue
        try:
            raw = ext.value.value  # type: ignore[attr-defined]
            fqans: list[str] = []
            for ac_list in _ACFull.load(raw):
                for ac in ac_list:
                    fqans.extend(
                        _check_ac(ac, holder, voms_dir=Path(voms_dir), now=now, ca_certs=ca_certs)
                    )
            return tuple(fqans)
        except VOMSError as e:
            log.warn(
                "ignoring VOMS attributes of {dn}: {why}",
                dn=slash_dn(holder.subject),
                why=str(e),
            )
            return ()
        except Exception as e:
            log.warn(
                "ignoring malformed VOMS attributes of {dn}: {why!r}",
                dn=slash_dn(holder.subject),
                why=e,
            )
            return ()
    return ()
