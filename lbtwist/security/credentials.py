# -*- test-case-name: tests.unit.test_settings -*-
"""
The host credentials of a service, resolved once at start-up and handed to every TLS port
and to the relay.
"""

from __future__ import annotations

import attrs

from lbtwist.security.devcerts import DevPKI


@attrs.frozen
class HostCredentials:
    """
    What the service presents and trusts over TLS.

    @ivar cert: the host certificate (PEM; the key may be in the same file).
    @ivar key: the host key (PEM), or L{None} when C{cert} holds it.
    @ivar ca_dir: trust anchors and CRLs in the hashed layout.
    @ivar dev_pki: the development PKI the three come from, or L{None} when they are
        configured (or the grid defaults).
    """

    cert: str
    key: str | None
    ca_dir: str
    dev_pki: DevPKI | None = None


__all__ = ["HostCredentials"]
