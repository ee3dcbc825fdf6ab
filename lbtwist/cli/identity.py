# -*- test-case-name: tests.unit.test_cli -*-
"""
The DN the client tools log events as, when C{-U} does not give one.
"""

from __future__ import annotations

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
                return certificate_dn(f.read())
        except (OSError, ValueError):
            continue
    return f"/CN={login()}"
