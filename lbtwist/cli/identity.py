# -*- test-case-name: tests.unit.test_cli -*-
"""
The DN the client tools log events as, when C{-U} does not give one.

The DN is read from the proxy (or certificate) file by a small DER reader of
its own (L{light_certificate_dn}): the Job Wrapper logs every event with
C{$X509_USER_PROXY} set, and loading cryptography and the security layer for
one name would cost each call several times the rest of its work. A file that
reader cannot read plainly (an unusual string type, a long tag) is read with
cryptography as before (L{certificate_dn}); both give the same DN.
"""

from __future__ import annotations

from lbtwist.core.oids import SHORT_NAMES as _SHORT_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def _is_proxy_cn(value: str) -> bool:
    """
    Whether a CN value names a proxy (RFC 3820 digits, legacy Globus names).
    """
    if value.endswith("\n"):
        # As a regular expression's "$" would, a final line feed is let through.
        value = value[:-1]
    return (value.isdigit() and value.isascii()) or value in ("proxy", "limited proxy")


#: The OIDs of the proxyCertInfo extension (RFC 3820, and the pre-RFC draft).
_PROXY_CERT_INFO = ("1.3.6.1.5.5.7.1.14", "1.3.6.1.4.1.3536.1.222")
_BASIC_CONSTRAINTS = "2.5.29.19"
_COMMON_NAME = "2.5.4.3"


#: DER string tags read here: UTF8String, PrintableString, IA5String.
_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii"}

_PRINTABLE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"

#: A name: its RDNs, each a tuple of (OID, value) in DER order.
_Name = tuple[tuple[tuple[str, str], ...], ...]


class _Unreadable(Exception):
    """
    Not plain DER as this reader knows it: leave it to cryptography.
    """


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """
    The DER element at C{pos}: (tag, start of its value, end of its value).
    """
    if pos + 2 > end:
        raise _Unreadable()
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise _Unreadable()
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > end:
            raise _Unreadable()
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _Unreadable()
    return tag, pos, pos + length


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _tlv(data, start, end)
        items.append(item)
        start = item[2]
    return items


def _oid(data: bytes) -> str:
    if not data or data[-1] & 0x80:
        raise _Unreadable()
    arcs: list[int] = []
    value = 0
    for byte in data:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _name(data: bytes, start: int, end: int) -> _Name:
    rdns = []
    for tag, s, e in _items(data, start, end):
        if tag != 0x31:
            raise _Unreadable()
        rdn = []
        for atag, a_s, a_e in _items(data, s, e):
            parts = _items(data, a_s, a_e)
            if atag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06:
                raise _Unreadable()
            vtag, v_s, v_e = parts[1]
            encoding = _STRING_TAGS.get(vtag)
            if encoding is None:
                raise _Unreadable()
            try:
                text = data[v_s:v_e].decode(encoding)
            except UnicodeDecodeError:
                raise _Unreadable() from None
            if vtag == 0x13 and text.strip(_PRINTABLE):
                # Not PrintableString's alphabet: cryptography's to judge.
                raise _Unreadable()
            rdn.append((_oid(data[parts[0][1] : parts[0][2]]), text))
        if not rdn:
            raise _Unreadable()
        rdns.append(tuple(rdn))
    return tuple(rdns)


def _certificate(der: bytes) -> tuple[_Name, _Name, bool, bool]:
    """
    (subject, issuer, has proxyCertInfo, is a CA) of one DER certificate.
    """
    outer = _items(der, 0, len(der))
    if len(outer) != 1 or outer[0][0] != 0x30:
        raise _Unreadable()
    parts = _items(der, outer[0][1], outer[0][2])
    if len(parts) != 3 or parts[0][0] != 0x30:
        raise _Unreadable()
    tbs = _items(der, parts[0][1], parts[0][2])
    if tbs and tbs[0][0] == 0xA0:
        tbs = tbs[1:]
    # serial, signature algorithm, issuer, validity, subject, key, then extras.
    if len(tbs) < 6 or [t[0] for t in tbs[:6]] != [0x02, 0x30, 0x30, 0x30, 0x30, 0x30]:
        raise _Unreadable()
    issuer = _name(der, tbs[2][1], tbs[2][2])
    subject = _name(der, tbs[4][1], tbs[4][2])
    proxy = ca = False
    for tag, s, e in tbs[6:]:
        if tag != 0xA3:
            continue
        [(seq, s, e)] = _items(der, s, e) or [(0, 0, 0)]
        if seq != 0x30:
            raise _Unreadable()
        for etag, x_s, x_e in _items(der, s, e):
            fields = _items(der, x_s, x_e)
            if etag != 0x30 or len(fields) not in (2, 3) or fields[0][0] != 0x06:
                raise _Unreadable()
            oid = _oid(der[fields[0][1] : fields[0][2]])
            if oid in _PROXY_CERT_INFO:
                proxy = True
            elif oid == _BASIC_CONSTRAINTS:
                vtag, v_s, v_e = fields[-1]
                if vtag != 0x04:
                    raise _Unreadable()
                [(btag, b_s, b_e)] = _items(der, v_s, v_e) or [(0, 0, 0)]
                if btag != 0x30:
                    raise _Unreadable()
                inner = _items(der, b_s, b_e)
                ca = bool(inner and inner[0][0] == 0x01 and der[inner[0][1] : inner[0][2]] != b"\0")
    return subject, issuer, proxy, ca


def _slash(name: _Name) -> str:
    return "".join(
        "/" + "+".join(f"{_SHORT_NAMES.get(oid, oid)}={value}" for oid, value in rdn)
        for rdn in name
    )


def _legacy_proxy(subject: _Name, issuer: _Name) -> bool:
    if len(subject) < 2 or [frozenset(r) for r in subject[:-1]] != [frozenset(r) for r in issuer]:
        return False
    last = subject[-1]
    return (
        len(last) == 1 and last[0][0] == _COMMON_NAME and last[0][1] in ("proxy", "limited proxy")
    )


def light_certificate_dn(pem: bytes) -> str | None:
    """
    L{certificate_dn} of C{pem} read without cryptography, or C{None} where
    this reader cannot tell (then ask L{certificate_dn}).
    """
    import binascii

    chain = []
    pos = 0
    try:
        while True:
            begin = pem.find(_PEM_BEGIN, pos)
            if begin < 0:
                break
            end = pem.find(_PEM_END, begin)
            if end < 0:
                return None
            der = binascii.a2b_base64(pem[begin + len(_PEM_BEGIN) : end], strict_mode=False)
            chain.append(_certificate(der))
            pos = end + len(_PEM_END)
    except (_Unreadable, binascii.Error, ValueError):
        return None
    if not chain:
        return None
    for subject, issuer, proxy, ca in chain:
        if not proxy and (ca or not _legacy_proxy(subject, issuer)):
            return _slash(subject)
    parts = _slash(chain[0][0]).split("/")[1:]
    while len(parts) > 1 and parts[-1].startswith("CN=") and _is_proxy_cn(parts[-1][3:]):
        parts.pop()
    return "".join(f"/{part}" for part in parts)


def certificate_dn(pem: bytes) -> str:
    """
    The slash-form DN (C{/C=IT/O=INFN/CN=Name}) of the certificates in C{pem}:
    the first non-proxy certificate's (a proxy file holds the user's certificate
    after the proxy). A file of proxies only gives the leaf's DN with its proxy
    components (C{CN=<digits>}, C{CN=proxy}) dropped.

    @raise ValueError: C{pem} holds no readable certificate.
    """
    from cryptography import x509

    from lbtwist.security.identity import dn_of_chain, slash_dn

    chain = x509.load_pem_x509_certificates(pem)
    try:
        return dn_of_chain(chain, allow_legacy=True)
    except ValueError:
        pass
    parts = slash_dn(chain[0].subject).split("/")[1:]
    while len(parts) > 1 and parts[-1].startswith("CN=") and _is_proxy_cn(parts[-1][3:]):
        parts.pop()
    return "".join(f"/{part}" for part in parts)


def default_user(env: Mapping[str, str], login: Callable[[], str]) -> str:
    """
    The DN of C{$X509_USER_PROXY}, else of C{$X509_USER_CERT}, else
    C{/CN=<login>} for the local user (an unreadable file is skipped).
    """
    for name in ("X509_USER_PROXY", "X509_USER_CERT"):
        path = env.get(name)
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                pem = f.read()
            return light_certificate_dn(pem) or certificate_dn(pem)
        except (OSError, ValueError):
            continue
    return f"/CN={login()}"
