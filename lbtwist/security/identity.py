# -*- test-case-name: tests.unit.test_identity -*-
"""
Who a client is: the DN of its certificate chain and its VOMS FQANs.

Chains are lists of C{cryptography} certificates, leaf first (as
L{lbtwist.security.tls.verified_chain} returns them). The functions take the time as
an argument; L{PeerIdentity}, the one peer-identity layer of every TLS port,
reads it from the reactor it is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

import attrs
from asn1crypto import cms
from asn1crypto import core as asn1
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.logger import Logger, LogLevel

from lbtwist.core.dn import normalize_dn as normalize_dn
from lbtwist.core.dn import same_dn as same_dn

# The one DN normalization is the core's (the store compares owners with it too);
# re-exported here for the callers that know it from this module.
from lbtwist.core.oids import SHORT_NAMES as _SHORT_NAMES

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IReactorTime

    from lbtwist.security.tls import CADirectory, RefusalLog, ServerContextSource

log = Logger()

PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"
#: The pre-RFC (GT3 draft) proxyCertInfo.
DRAFT_PROXY_CERT_INFO_OID = "1.3.6.1.4.1.3536.1.222"
VOMS_AC_OID = "1.3.6.1.4.1.8005.100.100.5"
VOMS_FQAN_OID = "1.3.6.1.4.1.8005.100.100.4"
VOMS_CERTS_OID = "1.3.6.1.4.1.8005.100.100.10"


@attrs.frozen
class Identity:
    """
    An authenticated client.

    @ivar dn: slash-form DN of the first non-proxy certificate.
    @ivar fqans: trusted VOMS FQANs, in AC order (may be empty).
    @ivar chain_subjects: slash-form subjects of the chain, leaf first.
    @ivar not_after: when the first certificate of the chain expires, seconds
        since the epoch (L{None}: not known); not part of equality.
    """

    dn: str
    fqans: tuple[str, ...] = ()
    chain_subjects: tuple[str, ...] = ()
    not_after: int | None = attrs.field(default=None, eq=False)


def chain_not_after(chain: Sequence[x509.Certificate]) -> int | None:
    """
    @return: the earliest end of validity of the chain's certificates (a proxy's
        remaining lifetime), seconds since the epoch; L{None} for an empty chain.
    """
    if not chain:
        return None
    return int(min(c.not_valid_after_utc for c in chain).timestamp())


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


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c == '"':
        return '\\"'
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: str) -> str:
    """
    @return: C{text} safe for a log line: control and format characters
        (escape sequences, bidirectional overrides, line breaks), backslashes
        and double quotes escaped Python-style (C{\\x1b}, C{\\u202e}).
    """
    if text.isprintable() and "\\" not in text and '"' not in text:
        return text
    return "".join(c if c.isprintable() and c not in '\\"' else _escape_char(c) for c in text)


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
    trust: Trust | None = None,
    crl: str = "if-present",
    allow_legacy: bool = False,
) -> Identity:
    """
    Build the L{Identity} of a verified chain (FQANs only with a C{voms_dir}).
    C{ca_certs}, C{trust} and C{crl} are as for L{voms_fqans}.
    """
    fqans: tuple[str, ...] = ()
    if voms_dir is not None:
        fqans = voms_fqans(
            chain,
            voms_dir=voms_dir,
            now=now,
            ca_certs=ca_certs,
            trust=trust,
            crl=crl,
            allow_legacy=allow_legacy,
        )
    return Identity(
        dn=dn_of_chain(chain, allow_legacy=allow_legacy),
        fqans=fqans,
        chain_subjects=tuple(slash_dn(c.subject) for c in chain),
        not_after=chain_not_after(chain),
    )


# Trust of certificates met outside the TLS handshake (VOMS servers).

#: The longest CA path walked from a VOMS server certificate to its root.
MAX_CA_DEPTH = 8


class Trust(Protocol):
    """
    Trust anchors and CRLs (as L{lbtwist.security.tls.CATrust} holds them).
    """

    @property
    def certs(self) -> tuple[x509.Certificate, ...]: ...

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]: ...

    @property
    def broken(self) -> Mapping[x509.Name, str]: ...


@attrs.frozen(eq=False)
class TrustAnchors:
    """
    A L{Trust} of CA certificates alone (no CRLs).
    """

    certs: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    broken: Mapping[x509.Name, str] = attrs.field(factory=dict)


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


@attrs.define
class _TrustIndex:
    """
    A trust's certificates by subject and CRLs by issuer (C{cryptography}
    builds a new name at each access: look them up once per trust), and the
    CRL signatures already checked.
    """

    cas: dict[x509.Name, list[x509.Certificate]]
    crls: dict[x509.Name, list[x509.CertificateRevocationList]]
    signature_ok: dict[tuple[int, int], bool] = attrs.Factory(dict)


_INDEXES: WeakKeyDictionary[Any, _TrustIndex] = WeakKeyDictionary()


def _index(trust: Trust) -> _TrustIndex:
    index = _INDEXES.get(trust)
    if index is None:
        cas: dict[x509.Name, list[x509.Certificate]] = {}
        for ca in trust.certs:
            cas.setdefault(ca.subject, []).append(ca)
        crls: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for revocation_list in trust.crls:
            crls.setdefault(revocation_list.issuer, []).append(revocation_list)
        index = _INDEXES[trust] = _TrustIndex(cas, crls)
    return index


def _revocation_problem(
    cert: x509.Certificate,
    ca: x509.Certificate,
    ca_name: x509.Name,
    trust: Trust,
    index: _TrustIndex,
    *,
    now: datetime,
    crl: str,
) -> str | None:
    problem = trust.broken.get(ca_name)
    if problem is not None:
        return f"cannot be checked: CRL unreadable ({problem})"
    lists = index.crls.get(ca_name, ())
    if not lists:
        return "cannot be checked: no CRL of its CA (crl = require)" if crl == "require" else None
    for revocation_list in lists:
        key = (id(revocation_list), id(ca))
        ok = index.signature_ok.get(key)
        if ok is None:
            ok = index.signature_ok[key] = revocation_list.is_signature_valid(
                # cryptography types public_key() wider than the issuer key types
                # is_signature_valid takes (a CA's key is one of them).
                ca.public_key()  # type: ignore[arg-type]
            )
        if not ok:
            return "cannot be checked: bad CRL signature"
        next_update = revocation_list.next_update_utc
        if now < revocation_list.last_update_utc or (next_update is not None and now > next_update):
            return "cannot be checked: CRL expired or not yet valid"
        if revocation_list.get_revoked_certificate_by_serial_number(cert.serial_number):
            return "revoked"
    return None


def signer_problem(
    cert: x509.Certificate, trust: Trust, *, now: datetime, crl: str = "if-present"
) -> str | None:
    """
    Check a certificate met outside a handshake (a VOMS server's) as TLS
    checks a peer: a path to a self-signed CA of C{trust}, every certificate
    valid at C{now}, and, unless C{crl} is C{"off"}, none revoked by its CA's
    CRL (C{"require"}: a CA without CRL fails; a CA whose CRL file is broken
    fails in both modes).

    @return: L{None} if it is trusted, else why not.
    """
    index = _index(trust)
    current = cert
    for _ in range(MAX_CA_DEPTH):
        if not _valid_at(current, now):
            if current is cert:
                return "expired or not yet valid"
            return f"issued under the CA {slash_dn(current.subject)}, expired or not yet valid"
        issuer_name = current.issuer
        issuer = None
        for ca in index.cas.get(issuer_name, ()):
            try:
                current.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            issuer = ca
            break
        if issuer is None:
            return "not issued by a trusted CA"
        if crl != "off":
            problem = _revocation_problem(
                current, issuer, issuer_name, trust, index, now=now, crl=crl
            )
            if problem is not None:
                return problem if current is cert else f"issued under a CA that is {problem}"
        if issuer_name == issuer.issuer:
            return None if _valid_at(issuer, now) else "issued by an expired CA"
        current = issuer
    return "too far from a trusted CA"


# VOMS attribute certificates: the ASN.1 forms of their extension (read here,
# written by lbtwist.security.devcerts).


class ACList(asn1.SequenceOf):  # type: ignore[misc]  # asn1crypto ships no type hints
    """
    The attribute certificates of one VOMS server.
    """

    _child_spec = cms.AttributeCertificateV2


class ACFull(asn1.SequenceOf):  # type: ignore[misc]  # asn1crypto ships no type hints
    """
    The VOMS extension of a proxy: an L{ACList} per server.
    """

    _child_spec = ACList


class CertList(asn1.SequenceOf):  # type: ignore[misc]  # asn1crypto ships no type hints
    """
    The VOMS server's certificate chain in an attribute certificate.
    """

    _child_spec = ax509.Certificate


class ACCerts(asn1.Sequence):  # type: ignore[misc]  # asn1crypto ships no type hints
    """
    The C{certs} extension of an attribute certificate: a L{CertList}.
    """

    _fields = [("certs", CertList)]


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
        certs = list(ACCerts.load(der)["certs"])
    except (ValueError, TypeError):
        certs = list(CertList.load(der))
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
    trust: Trust | None,
    crl: str,
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
    if trust is not None:
        problem = signer_problem(signer, trust, now=now, crl=crl)
        if problem is not None:
            raise VOMSError(f"VOMS server certificate {slash_dn(signer.subject)} {problem}")
    return fqans


def voms_fqans(
    chain: Sequence[x509.Certificate],
    *,
    voms_dir: str | Path,
    now: datetime,
    ca_certs: Sequence[x509.Certificate] | None = None,
    trust: Trust | None = None,
    crl: str = "if-present",
    allow_legacy: bool = False,
) -> tuple[str, ...]:
    """
    The trusted VOMS FQANs of a chain.

    The AC is taken from the first certificate (from the leaf) carrying the
    VOMS extension. It is trusted when signed by the VOMS server certificate
    it carries, whose DN chain matches C{<voms_dir>/<vo>/<host>.lsc}, within
    its validity window at C{now}, and held by the chain's user certificate.
    With a C{trust} (or only C{ca_certs}: anchors without CRLs), the VOMS
    server certificate must also pass L{signer_problem} under C{crl}. Any
    failure gives no FQANs and a log line, never an exception.
    """
    fqans, why = voms_fqans_why(
        chain,
        voms_dir=voms_dir,
        now=now,
        ca_certs=ca_certs,
        trust=trust,
        crl=crl,
        allow_legacy=allow_legacy,
    )
    if why is not None:
        log.warn(
            "ignoring VOMS attributes of {dn}: {why}",
            dn=printable(dn_of_chain(chain, allow_legacy=allow_legacy)),
            why=printable(why),
        )
    return fqans


def voms_fqans_why(
    chain: Sequence[x509.Certificate],
    *,
    voms_dir: str | Path,
    now: datetime,
    ca_certs: Sequence[x509.Certificate] | None = None,
    trust: Trust | None = None,
    crl: str = "if-present",
    allow_legacy: bool = False,
) -> tuple[tuple[str, ...], str | None]:
    """
    As L{voms_fqans}, logging nothing.

    @return: the trusted FQANs, and why the chain's AC was ignored
        (L{None}: it was not, or there is none).
    """
    try:
        holder = end_entity(chain, allow_legacy=allow_legacy)
    except ValueError:
        return (), None
    if trust is None and ca_certs is not None:
        trust = TrustAnchors(tuple(ca_certs))
        crl = "off"
    for cert in chain:
        ext = next((e for e in cert.extensions if e.oid.dotted_string == VOMS_AC_OID), None)
        if ext is None:
            continue
        try:
            raw = ext.value.value
            fqans: list[str] = []
            for ac_list in ACFull.load(raw):
                for ac in ac_list:
                    fqans.extend(
                        _check_ac(
                            ac, holder, voms_dir=Path(voms_dir), now=now, trust=trust, crl=crl
                        )
                    )
            return tuple(fqans), None
        except VOMSError as e:
            return (), str(e)
        except Exception as e:
            return (), f"malformed VOMS attributes: {e!r}"
    return (), None


class PeerIdentity:
    """
    The peer-identity layer of every TLS port: the verified chain of a
    connection -> L{Identity} (DN, trusted FQANs), computed once per
    connection (again only if the CA trust changed since) and cached in a
    weak dictionary keyed by the connection (Twisted owns its app data).

    VOMS server certificates are checked against the same L{CADirectory}
    and CRL mode as the TLS handshakes of the port (L{for_source}): a
    revoked VOMS server, or one whose CA has a broken CRL, gives no FQANs.
    Without a CA directory no FQANs are trusted at all.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        voms_dir: str | os.PathLike[str] | None = None,
        ca_directory: CADirectory | None = None,
        crl: str = "if-present",
        allow_legacy: bool = False,
        refresh: bool = False,
        refusals: RefusalLog | None = None,
    ) -> None:
        """
        @param clock: the reactor (the time of the VOMS checks).
        @param refresh: re-read C{ca_directory} (if changed) for each new
            connection; leave off when a L{lbtwist.security.tls.ServerContextSource}
            already does so for the same directory.
        @param refusals: the rate-limited log for ignored VOMS attributes.
        """
        from lbtwist.security.tls import RefusalLog

        self.clock = clock
        self.voms_dir = Path(voms_dir) if voms_dir is not None else None
        self.ca_directory = ca_directory
        self.crl = crl
        self.allow_legacy = allow_legacy
        self.refresh = refresh
        self.refusals = refusals if refusals is not None else RefusalLog(clock)
        self._cache: WeakKeyDictionary[SSL.Connection, tuple[object, Identity]] = (
            WeakKeyDictionary()
        )

    @classmethod
    def for_source(
        cls,
        source: ServerContextSource,
        *,
        clock: IReactorTime,
        voms_dir: str | os.PathLike[str] | None,
    ) -> PeerIdentity:
        """
        @return: the identity layer of the port whose TLS connections
            C{source} creates: its CA directory, CRL mode and proxy rules.
        """
        return cls(
            clock=clock,
            voms_dir=voms_dir,
            ca_directory=source.ca_directory,
            crl=source.crl,
            allow_legacy=source.allow_legacy_proxies,
            refusals=source.refusals,
        )

    def _trust(self) -> Trust:
        directory = self.ca_directory
        if directory is None:
            return _NO_TRUST
        if self.refresh or directory.trust is None:
            from lbtwist.security.tls import TLSConfigError

            try:
                return directory.current()
            except TLSConfigError as e:
                self.refusals.emit(
                    ("identity-ca-dir",),
                    LogLevel.error,
                    "cannot read the CA directory for VOMS checks: {why}",
                    why=printable(str(e)),
                )
        return directory.trust or _NO_TRUST

    def of_chain(self, chain: Sequence[x509.Certificate], *, peer: str = "") -> Identity:
        """
        @return: the identity of a verified chain, leaf first.
        @raise ValueError: the chain has no end-entity certificate.
        """
        return self._of_chain(chain, self._trust(), peer)

    def _of_chain(self, chain: Sequence[x509.Certificate], trust: Trust, peer: str) -> Identity:
        dn = dn_of_chain(chain, allow_legacy=self.allow_legacy)
        fqans: tuple[str, ...] = ()
        if self.voms_dir is not None:
            now = datetime.fromtimestamp(self.clock.seconds(), UTC)
            fqans, why = voms_fqans_why(
                chain,
                voms_dir=self.voms_dir,
                now=now,
                trust=trust,
                crl=self.crl,
                allow_legacy=self.allow_legacy,
            )
            if why is not None:
                self.refusals.emit(
                    ("voms", why, dn),
                    LogLevel.warn,
                    "ignoring VOMS attributes of {dn} ({peer}): {why}",
                    dn=printable(dn),
                    peer=peer or "unknown peer",
                    why=printable(why),
                )
        return Identity(
            dn=dn,
            fqans=fqans,
            chain_subjects=tuple(slash_dn(c.subject) for c in chain),
            not_after=chain_not_after(chain),
        )

    def of_connection(self, conn: SSL.Connection) -> Identity | None:
        """
        @return: the identity of the verified peer of C{conn} (L{None}
            before the handshake or without a usable chain).
        """
        directory = self.ca_directory
        hit = self._cache.get(conn)
        if hit is not None and (directory is None or hit[0] is directory.trust):
            return hit[1]
        from lbtwist.security.tls import peer_of, verified_chain

        chain = verified_chain(conn)
        if not chain:
            return None
        trust = self._trust()
        peer = peer_of(conn)[0]
        try:
            who = self._of_chain(chain, trust, peer)
        except ValueError as e:
            log.warn("no identity in the chain of {peer}: {why}", peer=peer, why=str(e))
            return None
        self._cache[conn] = (directory.trust if directory is not None else None, who)
        return who

    def of_transport(self, transport: object) -> Identity | None:
        """
        @return: the identity of a TLS transport's peer (C{getHandle()} is its
            L{SSL.Connection}), L{None} for anything else.
        """
        from OpenSSL import SSL

        handle = getattr(transport, "getHandle", lambda: None)()
        if not isinstance(handle, SSL.Connection):
            return None
        return self.of_connection(handle)

    def of_request(self, request: object) -> Identity | None:
        """
        @return: the identity of the peer of a web request's connection.
        """
        transport = getattr(getattr(request, "channel", None), "transport", None)
        return None if transport is None else self.of_transport(transport)


#: The trust without a CA directory: nothing is trusted.
_NO_TRUST = TrustAnchors(())
