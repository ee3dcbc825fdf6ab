# -*- test-case-name: tests.unit.test_web_tls -*-
"""
The query site through real TLS with client certificates, in memory (iosim): the
caller's identity is the verified chain of the connection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security.identity import Identity
from lbtwist.security.tls import (
    BoundedTLSFactory,
    ClientConnectionCreator,
    PortLimits,
    ServerContextSource,
    client_context,
)
from lbtwist.service.web import QueryChannel, make_site
from tests import traces
from tests.certs import NOW, Credential, TestCA, proxy_of
from tests.logcapture import capture_log
from tests.unit.test_settings import query_service_of
from tests.unit.test_web import DIRECT_UNIQUE, STRANGER, store_with


class HTTPClient(Protocol):
    """
    Sends requests on one kept-alive connection and collects the raw answers.
    """

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.received = b""
        self.lost = False

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

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
        return responses(self.connect(cred, [get(p) for p in paths]).received)

    def connect(self, cred: Credential, requests: list[bytes]) -> HTTPClient:
        source = ServerContextSource(self.host_cert, None, self.ca_dir, verify_time=NOW)
        client_pem = cred.write(self.base / "client.pem")
        creator = ClientConnectionCreator(
            "localhost", client_context(client_pem, None, self.ca_dir, verify_time=NOW, crl="off")
        )
        client = HTTPClient(requests)
        server_factory = BoundedTLSFactory(
            source, self.site, limits=PortLimits(), clock=self.clock, port="query"
        )
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
        return client

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

    def test_big_header_gets_431_and_close(self) -> None:
        """
        A 20 KB header line gets 431 and the connection is closed; the
        requests before it on the connection are answered.
        """
        big = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"x" * 20_000 + b"\r\n\r\n"
        client = self.connect(self.owner, [get(f"/{DIRECT_UNIQUE}"), big])
        [(ok, _), (code, data)] = responses(client.received)
        self.assertEqual((ok, code), (200, 431))
        self.assertEqual(data["error"], 431)
        self.assertIn(b"Connection: close", client.received)
        self.assertTrue(client.lost)

    def test_access_log_has_the_verified_dn(self) -> None:
        """
        Each access log line ends with the DN of the client's verified chain
        (the user's, for a proxy), quoted.
        """
        path = self.base / "query-access.log"
        self.site = make_site(
            self.store, clock=self.clock, ca_dir=str(self.ca_dir), access_log=path
        )
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        self.exchange(proxy_of(self.owner), [f"/{DIRECT_UNIQUE}"])
        self.exchange(self.stranger, [f"/{DIRECT_UNIQUE}"])
        self.site.doStop()
        lines = path.read_text().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn(f'"GET /{DIRECT_UNIQUE} HTTP/1.1" 200', lines[0])
        self.assertTrue(lines[0].endswith(f' "{traces.CREAM_USER}"'), lines[0])
        self.assertIn(" 403 ", lines[1])
        self.assertTrue(lines[1].endswith(f' "{STRANGER}"'), lines[1])


def head_with(*headers: bytes, path: bytes = b"/") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n" + b"".join(headers) + b"\r\n"


class RequestHeadLimitTests(SynchronousTestCase):
    """
    The query channel's bounds on request heads: 414 / 431 and a close.
    """

    def serve(self, data: bytes, **limits: int) -> StringTransport:
        site = make_site(
            store_with(traces.cream_done_ok_unpurged()),
            clock=Clock(),
            identify=lambda r: Identity(traces.CREAM_USER),
            **limits,
        )
        channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.5", 4242))
        assert channel is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 4242))
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        return transport

    def assertRefused(self, transport: StringTransport, code: int) -> dict[str, Any]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n")[0].split(b" ")[1], str(code).encode())
        self.assertIn(b"Connection: close", head)
        self.assertTrue(transport.disconnecting)
        data: dict[str, Any] = json.loads(body)
        self.assertEqual(data["error"], code)
        return data

    def test_header_line_over_16k_gets_431(self) -> None:
        events = capture_log(self)
        transport = self.serve(head_with(b"X-Big: " + b"x" * 20_000 + b"\r\n"))
        data = self.assertRefused(transport, 431)
        self.assertIn("16384", data["message"])
        [line] = [formatEvent(e) for e in events if "431" in formatEvent(e)]
        self.assertIn("10.0.0.5:4242", line)
        self.assertIn("max-request-line", line)

    def test_header_line_without_end_answered_at_once(self) -> None:
        """
        The answer does not wait for the end of the line.
        """
        transport = self.serve(b"GET / HTTP/1.1\r\nX-Big: " + b"x" * 17_000)
        self.assertRefused(transport, 431)

    def test_request_line_over_16k_gets_414(self) -> None:
        transport = self.serve(head_with(path=b"/" + b"a" * 20_000))
        self.assertRefused(transport, 414)

    def test_too_many_headers_get_431(self) -> None:
        headers = [b"X-H%d: v\r\n" % n for n in range(10)]
        transport = self.serve(head_with(*headers), max_headers=5)
        self.assertIn("5 header fields", self.assertRefused(transport, 431)["message"])

    def test_head_over_total_gets_431(self) -> None:
        headers = [b"X-H%d: %s\r\n" % (n, b"v" * 200) for n in range(10)]
        transport = self.serve(head_with(*headers), max_header_size=1000)
        self.assertIn("1000 bytes", self.assertRefused(transport, 431)["message"])

    def test_channel_busy_while_answering(self) -> None:
        """
        The channel is busy from a request's end of head until its answer is
        done (the TLS port's idle timeout waits meanwhile).
        """
        store = store_with(traces.cream_done_ok_unpurged())
        lookup: Deferred[Any] = Deferred()
        store.find_status = lambda unique: lookup  # type: ignore[method-assign]
        site = make_site(store, clock=Clock(), identify=lambda r: Identity(traces.CREAM_USER))
        channel = site.buildProtocol(None)
        assert isinstance(channel, QueryChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        self.assertFalse(channel.busy)
        channel.dataReceived(get(f"/{DIRECT_UNIQUE}"))
        self.assertEqual((channel.busy, transport.value()), (True, b""))
        lookup.callback(None)
        self.assertIn(b" 404 ", transport.value().split(b"\r\n")[0])
        self.assertFalse(channel.busy)

    def test_line_limit_configurable(self) -> None:
        transport = self.serve(head_with(b"X-A: " + b"v" * 150 + b"\r\n"), max_request_line=100)
        self.assertRefused(transport, 431)

    def test_within_limits_answered(self) -> None:
        """
        15 KB headers, 50 of them, pipelined twice: both answered, kept open.
        """
        headers = [b"X-H%d: %s\r\n" % (n, b"v" * 300) for n in range(49)]
        headers.append(b"X-Big: " + b"x" * 15_000 + b"\r\n")
        request = head_with(*headers, path=f"/{DIRECT_UNIQUE}".encode())
        transport = self.serve(request + request)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)


class BusyPortReactor(MemoryReactorClock):
    """
    A reactor on which every TCP port is taken.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class QueryServiceTests(SynchronousTestCase):
    """
    L{make_query_service}: the TLS listener of the query site (built as
    C{makeService} builds it).
    """

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir(parents=True)
        ca = TestCA.create()
        ca.install(base / "certificates", ca.crl())
        host_pem = str(ca.host("localhost").write(base / "host.pem"))
        self.options: dict[str, Any] = {
            "query": "tcp:9000:interface=127.0.0.1",
            "cert": host_pem,
            "key": host_pem,
            "ca-dir": str(base / "certificates"),
            "crl": "if-present",
            "policy": None,
            "super-user": [],
            "voms-dir": None,
            "dev-certs": False,
            "state-dir": str(base),
        }
        self.store = store_with(traces.cream_done_ok_unpurged())

    def test_limits_from_options(self) -> None:
        """
        The query port is bounded by its options (and the shared TLS ones).
        """
        reactor = MemoryReactorClock()
        self.options.update(
            {"query-max-connections": 9, "query-idle-timeout": 7.0, "max-handshakes": 4}
        )
        self.options.update({"max-header-size": 3000, "max-headers": 12})
        service = query_service_of(self.options, self.store, reactor)
        service.privilegedStartService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, BoundedTLSFactory)
        self.assertEqual((factory.limits.max_connections, factory.limits.idle_timeout), (9, 7.0))
        self.assertEqual(factory.limits.max_handshakes, 4)
        site = factory.wrappedFactory
        self.assertEqual((site.timeOut, site.max_header_size, site.max_headers), (7.0, 3000, 12))

    def test_listens(self) -> None:
        reactor = MemoryReactorClock()
        service = query_service_of(self.options, self.store, reactor)
        service.privilegedStartService()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9000, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)

    def test_port_taken_stops_start_up(self) -> None:
        """
        A query port that cannot be bound fails start-up instead of leaving the
        service running without it.
        """
        service = query_service_of(self.options, self.store, BusyPortReactor())
        self.assertRaises(CannotListenError, service.privilegedStartService)
