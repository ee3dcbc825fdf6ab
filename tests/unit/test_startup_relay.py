# -*- test-case-name: tests.unit.test_startup_relay -*-
"""
The relay's TLS endpoint: a connection counts once its handshake is done, so that a
destination refusing the handshake is retried with growing delays; the reason is logged
once per change and the endpoint's repr names the destination.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.service.relay import HandshakeEndpoint
from tests.logcapture import capture_log


class FakeTLSEndpoint:
    """
    Connects at once (TCP up); the test then completes or fails the handshake.
    """

    def __init__(self) -> None:
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        return succeed(proto)


class Recorder(Protocol):
    made = 0

    def connectionMade(self) -> None:
        Recorder.made += 1


def handshake_failure() -> Failure:
    return Failure(ConnectionError("certificate verify failed"))


class HandshakeEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture_log(self)
        self.inner = FakeTLSEndpoint()
        self.endpoint = HandshakeEndpoint(self.inner, "lb.example.org:9001")  # type: ignore[arg-type]
        Recorder.made = 0

    def warnings(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.warn and "cannot connect" in e["log_format"]
        ]

    def test_repr_names_destination(self) -> None:
        self.assertEqual(repr(self.endpoint), "<relay to lb.example.org:9001>")

    def test_connected_after_handshake_only(self) -> None:
        d = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.assertNoResult(d)
        self.assertEqual(Recorder.made, 0)
        self.inner.protocols[0].handshakeCompleted()
        self.assertIsInstance(self.successResultOf(d), Recorder)
        self.assertEqual(Recorder.made, 1)

    def test_failed_handshake_fails_the_attempt_logged_once(self) -> None:
        for _ in range(3):
            d = self.endpoint.connect(Factory.forProtocol(Recorder))
            self.inner.protocols[-1].connectionLost(handshake_failure())
            self.failureResultOf(d, ConnectionError)
        self.assertEqual(Recorder.made, 0)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("lb.example.org:9001", self.warnings()[0]["destination"])

    def test_client_service_backs_off(self) -> None:
        """
        Under C{ClientService}, each refused handshake makes the next delay longer.
        """
        clock = Clock()
        service = ClientService(
            self.endpoint,
            Factory.forProtocol(Recorder),
            retryPolicy=backoffPolicy(
                initialDelay=1.0, maxDelay=300.0, factor=2.0, jitter=lambda: 0
            ),
            clock=clock,
        )
        service.startService()
        self.addCleanup(service.stopService)
        delays = []
        for _ in range(5):
            self.inner.protocols[-1].connectionLost(handshake_failure())
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [2.0, 4.0, 8.0, 16.0, 32.0])
