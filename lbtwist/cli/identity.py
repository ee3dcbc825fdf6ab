# -*- test-case-name: tests.test_cli -*-
"""
The DN the client tools log events as, when C{-U} does not give one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: Proxy certificate name components (RFC 3820 numbers, legacy Globus names).
_PROXY_CN = re.compile(r"^(?:[0-9]+|proxy|limited proxy)$")

_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "1.2.840.113549.1.9.1": "emailAddress",
}


def certificate_dn(pem: bytes) -> str:
    """
    The slash-form DN (C{/C=IT/O=INFN/CN=Name}) of the first certificate in
    C{pem}, with proxy components (C{CN=<digits>}, C{CN=proxy}) dropped so
    that a proxy gives its owner's DN.

    @raise ValueError: C{pem} holds no readable certificate.
    """
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    parts: list[tuple[str, str]] = []
    for rdn in cert.subject.rdns:
        for attr in rdn:
            name = _SHORT_NAMES.get(attr.oid.dotted_string, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.decode()
            parts.append((name, value))
    while len(parts) > 1 and parts[-1][0] == "CN" and _PROXY_CN.match(parts[-1][1]):
        parts.pop()
    return "".join(f"/{name}={value}" for name, value in parts)


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
                return certificate_dn(f.read())
        except (OSError, ValueError):
            continue
    return f"/CN={login()}"
