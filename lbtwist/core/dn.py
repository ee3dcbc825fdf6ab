# -*- test-case-name: tests.unit.test_identity -*-
"""
Distinguished names as L&B compares them.

Pure: the one normalization of a slash-form DN that the store (owner
columns, listings), the authorization rules and the peer identities share.
"""

from __future__ import annotations

import re

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
