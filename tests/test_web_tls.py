# -*- test-case-name: tests.test_web_tls -*-
"""
The query site through real TLS with client certificates, in memory (iosim): the
caller's identity is the verified chain of the connection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.tls import ClientConnectionCreator, ServerContextSource, client_context
from lbtwist.web import make_query_service, make_site
from tests import traces
from tests.certs import NOW, Credential, TestCA, proxy_of
from tests.test_web import DIRECT_UNIQUE, STRANGER, store_with


class HTTPClient(Protocol):
    """
    Sends requests on one kept-alive connection and collects the raw answers.
    """

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.received = b""

    def connectionMade(self) -> None:
        for request in self.requests:
            self.transport.write(request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n".encode()


def responses(raw: bytes) -> list[tuple[int, Any]]:
    """
    Split the answers of a kept-alive connection: (status code, JSON body).
    """
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        code = int(lines[0].split()[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length")
        )
        found.append((code, json.loads(rest[:length])))
        raw = rest[length:]
    return found


class QueryOverTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir(parents=True)
        self.base = base
        self.ca = TestCA.create()
        self.ca_dir = base / "certificates"
        self.ca.install(self.ca_dir, self.ca.crl())
        self.host_cert = self.ca.host("localhost").write(base / "host.pem")
        self.owner = self.ca.user(traces.CREAM_USER)
        self.stranger = self.ca.user(STRANGER)
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.store = store_with(traces.cream_done_ok_unpurged())
        self.site = make_site(self.store, clock=self.clock, ca_dir=str(self.ca_dir))

    def exchange(self, cred: Credential, paths: list[str]) -> list[tuple[int, Any]]:
        source = ServerContextSource(self.host_cert, None, self.ca_dir, verify_time=NOW)
        client_pem = cred.write(self.base / "client.pem")
        creator = ClientConnectionCreator(
            "localhost", client_context(client_pem, None, self.ca_dir, verify_time=NOW, crl="off")
        )
        client = HTTPClient([get(p) for p in paths])
        server_factory = TLSMemoryBIOFactory(source, False, self.site, self.clock)
        client_factory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(lambda: client), self.clock
        )
        addr = IPv4Address("TCP", "127.0.0.1", 9000)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(addr),
            lambda: client_factory.buildProtocol(addr),
            clock=self.clock,
        )
        for _ in range(10):
            pump.flush()
        return responses(client.received)

    def test_owner_reads(self) -> None:
        [(code, data)] = self.exchange(self.owner, [f"/{DIRECT_UNIQUE}"])
        self.assertEqual(code, 200)
        self.assertEqual(data["state"], "Done")
        self.assertEqual(data["owner"], traces.CREAM_USER)

    def test_stranger_forbidden(self) -> None:
        [(code, data)] = self.exchange(self.stranger, [f"/{DIRECT_UNIQUE}"])
        self.assertEqual(code, 403)
        self.assertEqual(data["error"], 403)
        self.assertIn(STRANGER, data["message"])

    def test_owner_proxy_kept_alive(self) -> None:
        """
        An RFC 3820 proxy of the owner is the owner; several requests share one
        connection.
        """
        proxy = proxy_of(self.owner)
        answers = self.exchange(
            proxy, [f"/{DIRECT_UNIQUE}", f"/{DIRECT_UNIQUE}/events", "/", "/CREAM1"]
        )
        self.assertEqual([code for code, _ in answers], [200, 200, 200, 404])
        self.assertEqual(answers[0][1]["state"], "Done")
        self.assertEqual(answers[1][1][0]["type"], "RegJob")
        self.assertEqual(
            [j["jobId"] for j in answers[2][1]["jobs"]],
            [f"https://{traces.CE_HOST}:9000/{DIRECT_UNIQUE}"],
        )

    def test_stranger_lists_nothing(self) -> None:
        [(code, data)] = self.exchange(self.stranger, ["/"])
        self.assertEqual((code, data["jobs"]), (200, []))


class BusyPortReactor(MemoryReactorClock):
    """
    A reactor on which every TCP port is taken.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class QueryServiceTests(SynchronousTestCase):
    """
    L{make_query_service}: the TLS listener of the query site.
    """

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir(parents=True)
        ca = TestCA.create()
        ca.install(base / "certificates", ca.crl())
        self.options: dict[str, Any] = {
            "query": "tcp:9000:interface=127.0.0.1",
            "cert": str(ca.host("localhost").write(base / "host.pem")),
            "key": None,
            "ca-dir": str(base / "certificates"),
            "crl": "if-present",
            "policy": None,
            "super-user": [],
            "voms-dir": None,
            "dev-certs": False,
            "state-dir": str(base),
        }
        self.store = store_with(traces.cream_done_ok_unpurged())

    def test_listens(self) -> None:
        reactor = MemoryReactorClock()
        service = make_query_service(self.options, self.store, reactor)
        service.privilegedStartService()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9000, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)

    def test_port_taken_stops_start_up(self) -> None:
        """
        A query port that cannot be bound fails start-up instead of leaving the
        service running without it.
        """
        service = make_query_service(self.options, self.store, BusyPortReactor())
        self.assertRaises(CannotListenError, service.privilegedStartService)
