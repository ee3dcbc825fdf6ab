# -*- test-case-name: tests.unit.test_ports -*-
"""
The listening side shared by the TLS ports of the service layer (the query
port, the store port).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory

from lbtwist.security.tls import BoundedTLSProtocol, PortLimits, tls_server_endpoint


def tls_listener(
    reactor: Any,
    endpoint: str,
    context_source: IOpenSSLServerConnectionCreator,
    factory: IProtocolFactory,
    *,
    limits: PortLimits,
    port: str,
    on_established: Callable[[BoundedTLSProtocol], object] | None = None,
) -> StreamServerEndpointService:
    """
    The service of a TLS port: C{factory} behind
    L{lbtwist.security.tls.tls_server_endpoint} (bounded by C{limits}, C{port}
    naming it in log lines) on the C{endpoint} description. A port that cannot
    be bound stops start-up: a service silently running without its port is
    worse than one that fails.

    @param reactor: listens (C{serverFromString}) and keeps time.
    """
    from twisted.internet.endpoints import serverFromString

    tls_endpoint = tls_server_endpoint(
        serverFromString(reactor, endpoint),
        context_source,
        limits=limits,
        clock=reactor,
        port=port,
        on_established=on_established,
    )
    service = StreamServerEndpointService(tls_endpoint, factory)
    service._raiseSynchronously = True
    return service


__all__ = ["tls_listener"]
