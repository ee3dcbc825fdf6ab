# -*- test-case-name: tests.unit.test_identity -*-
"""
Distinguished names as L&B compares them.

Pure: the one normalization of a slash-form DN that the store (owner
columns, listings), the authorization rules and the peer identities share.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"/(?:emailaddress|email|e)=")


# The few DNs a service sees are normalized once each (bounded: emptied when full,
# so that a peer sending many DNs costs a normalization each, as without it).
_NORMALIZED: dict[str, str] = {}
_NORMALIZED_MAX = 4096


def normalize_dn(dn: str) -> str:
    """
    Normalize a DN for comparison as L&B does: case-insensitive, and
    C{/emailAddress=}, C{/Email=} and C{/E=} are the same attribute.
    """
    normal = _NORMALIZED.get(dn)
    if normal is None:
        normal = _EMAIL.sub("/emailaddress=", dn.strip().lower())
        if len(_NORMALIZED) >= _NORMALIZED_MAX:
            _NORMALIZED.clear()
        _NORMALIZED[dn] = normal
    return normal


def same_dn(a: str, b: str) -> bool:
    """
    @return: whether the two slash-form DNs name the same subject.
    """
    return normalize_dn(a) == normalize_dn(b)
