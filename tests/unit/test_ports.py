# -*- test-case-name: tests.unit.test_ports -*-
"""
Tests for the bounded TLS ports of L{lbtwist.security.tls} (L{BoundedTLSFactory}):
handshake and idle timeouts, handshake slots apart from established
connections, per-address caps; the store port's connection log; the option
table entries. Real TLS with client certificates over iosim, a L{Clock}.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.security.identity import Identity
from lbtwist.security.tls import (
    BoundedTLSFactory,
    BoundedTLSProtocol,
    PortLimits,
    quote_for_log,
    tls_server_endpoint,
)
from lbtwist.service.ports import tls_listener
from lbtwist.testing import MemoryStore
from tests.certs import NOW
from tests.logcapture import capture_log
from tests.unit.test_settings import store_port_service_of
from tests.unit.test_tls import USER_DN, Fixture, Recorder

ROOT = Path(__file__).resolve().parents[2]


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


class Port:
    """
    A bounded TLS port on a L{Clock}: bare TCP connections (StringTransport)
    and TLS clients with certificates (iosim) from chosen addresses.
    """

    def __init__(self, case: SynchronousTestCase, **limits: Any) -> None:
        self.fixture = Fixture(Path(case.mktemp()))
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.servers: list[Recorder] = []
        self.established: list[BoundedTLSProtocol] = []

        def app() -> Recorder:
            proto = Recorder()
            self.servers.append(proto)
            return proto

        self.factory = BoundedTLSFactory(
            self.fixture.source(),
            Factory.forProtocol(app),
            limits=PortLimits(**limits),
            clock=self.clock,
            port="store",
            on_established=self.established.append,
        )
        self._serial = 0

    def bare(self, host: str = "10.0.0.1") -> tuple[BoundedTLSProtocol, StringTransport]:
        """
        A TCP connection that never says anything.
        """
        self._serial += 1
        addr = IPv4Address("TCP", host, 40000 + self._serial)
        proto = self.factory.buildProtocol(addr)
        assert isinstance(proto, BoundedTLSProtocol)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def tls(
        self, host: str = "10.0.0.9", *, cert: bool = True
    ) -> tuple[BoundedTLSProtocol, Recorder, iosim.IOPump]:
        """
        A TLS client with the user's certificate (or none), handshake pumped.
        """
        self._serial += 1
        addr = IPv4Address("TCP", host, 40000 + self._serial)
        client = Recorder()
        creator = self.fixture.client(self.fixture.user if cert else None)
        cf = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: client), self.clock)
        server: list[Any] = []

        def build_server() -> Any:
            server.append(self.factory.buildProtocol(addr))
            return server[0]

        _, _, pump = iosim.connectedServerAndClient(
            build_server,
            lambda: cf.buildProtocol(addr),
            serverTransportFactory=lambda p: iosim.FakeTransport(p, True, peerAddress=addr),
            clock=self.clock,
        )
        for _ in range(5):
            pump.flush()
        return server[0], client, pump


def closed(transport: StringTransport) -> bool:
    return bool(transport.disconnecting)


class HandshakeTimeoutTests(SynchronousTestCase):
    def test_bare_connection_closed_after_handshake_timeout(self) -> None:
        """
        A connection that sends nothing is closed (with a log line naming the
        peer and the option) once the handshake timeout is over.
        """
        events = capture_log(self)
        port = Port(self, handshake_timeout=10)
        proto, transport = port.bare("10.0.0.1")
        self.assertEqual(len(port.factory.handshaking), 1)
        port.clock.advance(9.9)
        self.assertFalse(closed(transport))
        port.clock.advance(0.2)
        self.assertTrue(closed(transport))
        self.assertEqual(port.factory.stats.handshake_timeouts, 1)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(port.factory.handshaking, {})
        self.assertEqual(port.factory.connections_from("10.0.0.1"), 0)
        [line] = [t for t in texts(events) if "handshake" in t]
        self.assertIn("10.0.0.1:", line)
        self.assertIn("tls-handshake-timeout", line)

    def test_dribbling_does_not_extend_the_handshake(self) -> None:
        """
        Bytes during the handshake do not restart its timer.
        """
        port = Port(self, handshake_timeout=10)
        proto, transport = port.bare()
        for _ in range(4):
            port.clock.advance(3)
            if not closed(transport):
                proto.dataReceived(b"\x16")
        self.assertTrue(closed(transport))

    def test_verified_connection_not_timed_out(self) -> None:
        port = Port(self, handshake_timeout=10, idle_timeout=300)
        server, client, pump = port.tls()
        self.assertTrue(server.established)
        self.assertTrue(client.handshake)
        port.clock.advance(60)
        pump.flush()
        self.assertFalse(client.lost)
        self.assertEqual(port.established, [server])
        self.assertEqual((len(port.factory.handshaking), len(port.factory.connected)), (0, 1))

    def test_failed_handshake_frees_its_slot(self) -> None:
        port = Port(self, max_handshakes_per_address=1)
        server, client, pump = port.tls(cert=False)
        self.assertTrue(client.lost)
        self.assertFalse(server.established)
        self.assertEqual(port.factory.connections_from("10.0.0.9"), 0)
        self.assertEqual(port.factory.handshaking, {})


class HandshakeSlotTests(SynchronousTestCase):
    def test_per_address_handshakes_close_the_oldest(self) -> None:
        events = capture_log(self)
        port = Port(self, max_handshakes_per_address=3)
        held = [port.bare("10.0.0.1") for _ in range(3)]
        self.assertEqual([closed(t) for _, t in held], [False] * 3)
        _, newest = port.bare("10.0.0.1")
        self.assertEqual([closed(t) for _, t in held], [True, False, False])
        self.assertFalse(closed(newest))
        self.assertEqual(port.factory.connections_from("10.0.0.1"), 3)
        # Another address is not affected.
        _, other = port.bare("10.0.0.2")
        self.assertFalse(closed(other))
        self.assertEqual(port.factory.stats.closed_handshakes, 1)
        [line] = [t for t in texts(events) if "max-handshakes-per-address" in t]
        self.assertIn("10.0.0.1:", line)

    def test_total_handshakes_close_the_oldest(self) -> None:
        port = Port(self, max_handshakes=4, max_handshakes_per_address=4)
        held = [port.bare(f"10.0.1.{n}") for n in range(4)]
        port.bare("10.0.2.1")
        self.assertEqual([closed(t) for _, t in held], [True, False, False, False])
        self.assertEqual(len(port.factory.handshaking), 4)

    def test_bare_connections_do_not_lock_out_a_verified_peer(self) -> None:
        """
        With every handshake slot held by silent connections (from the peer's
        own address too), a verified peer still gets in, and its connection
        then holds no handshake slot.
        """
        port = Port(self, max_handshakes=8, max_handshakes_per_address=4)
        held = [port.bare(f"10.0.3.{n % 3}") for n in range(12)]
        held += [port.bare("10.0.0.9") for _ in range(4)]
        self.assertEqual(len(port.factory.handshaking), 8)
        server, client, pump = port.tls("10.0.0.9")
        self.assertTrue(client.handshake)
        self.assertFalse(client.lost)
        self.assertTrue(server.established)
        self.assertIn(server, port.factory.connected)
        # More silent connections do not touch it.
        for n in range(20):
            port.bare(f"10.0.4.{n}")
        pump.flush()
        self.assertFalse(client.lost)

    def test_established_not_counted_as_handshakes(self) -> None:
        port = Port(self, max_handshakes=1, max_handshakes_per_address=1)
        conns = [port.tls("10.0.0.9") for _ in range(3)]
        self.assertEqual([c.lost for _, c, _ in conns], [False] * 3)
        self.assertEqual(len(port.factory.connected), 3)


class PerAddressTests(SynchronousTestCase):
    def test_all_established_refuses_new(self) -> None:
        """
        An address at its cap with only established connections gets its new
        connection refused before TLS; the application never sees it.
        """
        events = capture_log(self)
        port = Port(self, max_connections_per_address=2)
        conns = [port.tls("10.0.0.9") for _ in range(2)]
        apps = len(port.servers)
        proto, transport = port.bare("10.0.0.9")
        self.assertTrue(closed(transport))
        self.assertFalse(proto.wrappedProtocol.transport)
        self.assertEqual(len(port.servers), apps + 1)  # built, never connected
        self.assertFalse(port.servers[-1].handshake)
        self.assertEqual([c.lost for _, c, _ in conns], [False, False])
        self.assertEqual(port.factory.stats.refused_per_address, 1)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(port.factory.connections_from("10.0.0.9"), 2)
        [line] = [t for t in texts(events) if "max-connections-per-address" in t]
        self.assertIn("refusing", line)
        self.assertIn("10.0.0.9:", line)

    def test_handshake_of_the_address_closed_first(self) -> None:
        port = Port(self, max_connections_per_address=2, max_handshakes_per_address=5)
        port.tls("10.0.0.9")
        _, first = port.bare("10.0.0.9")
        _, second = port.bare("10.0.0.9")
        self.assertTrue(closed(first))
        self.assertFalse(closed(second))
        self.assertEqual(port.factory.connections_from("10.0.0.9"), 2)


class EstablishedTests(SynchronousTestCase):
    def test_least_recently_active_closed(self) -> None:
        events = capture_log(self)
        port = Port(self, max_connections=2)
        first, c1, p1 = port.tls("10.0.0.7")
        port.clock.advance(5)
        second, c2, p2 = port.tls("10.0.0.8")
        port.clock.advance(5)
        c1.transport.write(b"still here")  # type: ignore[union-attr]
        p1.flush()
        third, c3, p3 = port.tls("10.0.0.9")
        for pump in (p1, p2, p3):
            pump.flush()
        self.assertEqual([c1.lost, c2.lost, c3.lost], [False, True, False])
        self.assertEqual(set(port.factory.connected), {first, third})
        self.assertEqual(port.factory.stats.closed_established, 1)
        [line] = [t for t in texts(events) if "store-max-connections" in t]
        self.assertIn("10.0.0.8:", line)


class IdleTimeoutTests(SynchronousTestCase):
    def test_idle_connection_closed(self) -> None:
        events = capture_log(self)
        port = Port(self, idle_timeout=300)
        server, client, pump = port.tls()
        port.clock.advance(200)
        client.transport.write(b"event")  # type: ignore[union-attr]
        pump.flush()
        port.clock.advance(200)
        pump.flush()
        self.assertFalse(client.lost)
        port.clock.advance(101)
        pump.flush()
        self.assertTrue(client.lost)
        self.assertEqual(port.factory.stats.idle_timeouts, 1)
        self.assertEqual(port.factory.connected, {})
        [line] = [t for t in texts(events) if "idle for" in t]
        self.assertIn("store-idle-timeout", line)

    def test_busy_application_not_idle(self) -> None:
        """
        While the application protocol says it is busy (answering a request),
        silence does not close the connection; once it is done, it does.
        """
        port = Port(self, idle_timeout=60)
        server, client, pump = port.tls()
        app = port.servers[-1]
        app.busy = True  # type: ignore[attr-defined]
        port.clock.advance(200)
        pump.flush()
        self.assertFalse(client.lost)
        app.busy = False  # type: ignore[attr-defined]
        port.clock.advance(61)
        pump.flush()
        self.assertTrue(client.lost)

    def test_writes_count_as_activity(self) -> None:
        port = Port(self, idle_timeout=60)
        server, client, pump = port.tls()
        for _ in range(5):
            port.clock.advance(40)
            server.write(b"keepalive")
            pump.flush()
        self.assertFalse(client.lost)


class HelperTests(SynchronousTestCase):
    def test_quote_for_log(self) -> None:
        self.assertEqual(quote_for_log(None), "-")
        self.assertEqual(quote_for_log("/CN=A B"), '"/CN=A B"')
        self.assertEqual(quote_for_log('/CN=a"b\\c'), '"/CN=a\\"b\\\\c"')
        self.assertEqual(quote_for_log("/CN=x\ny\x7f"), '"/CN=x\\x0ay\\x7f"')
        self.assertEqual(quote_for_log("/CN=Jiří\u2028"), '"/CN=Jiří\\u2028"')

    def test_peer_text_and_address(self) -> None:
        """
        IPv6 peers are written in brackets; their whole address is the key.
        """
        port = Port(self)
        addr = IPv6Address("TCP", "2001:db8::7", 4242)
        proto = port.factory.buildProtocol(addr)
        assert isinstance(proto, BoundedTLSProtocol)
        proto.makeConnection(StringTransport(peerAddress=addr))
        self.assertEqual(proto.peer_text, "[2001:db8::7]:4242")
        self.assertEqual(port.factory.connections_from("2001:db8::7"), 1)

    def test_limits_from_options(self) -> None:
        """
        C{tap.port_limits} builds each port's L{PortLimits} from the settings:
        the shared TLS options and the port's own ones, defaults where not given.
        """
        from lbtwist import config, tap
        from tests.unit.test_settings import settings_of

        defaults = settings_of(config.SERVER, {})
        self.assertEqual(
            tap.port_limits(defaults, "store"),
            PortLimits(idle_timeout=300.0, max_connections=256),
        )
        self.assertEqual(tap.port_limits(defaults, "query"), PortLimits())
        self.assertEqual(PortLimits().idle_timeout, 60.0)
        options = {
            "tls-handshake-timeout": 2.5,
            "max-handshakes": 5,
            "max-handshakes-per-address": 2,
            "max-connections-per-address": 3,
            "store-max-connections": 7,
            "store-idle-timeout": 9.0,
            "query-max-connections": 11,
        }
        settings = settings_of(config.SERVER, options)
        self.assertEqual(tap.port_limits(settings, "store"), PortLimits(2.5, 9.0, 7, 5, 2, 3))
        self.assertEqual(tap.port_limits(settings, "query").max_connections, 11)

    def test_endpoint_builds_bounded_factory(self) -> None:
        from tests.unit.test_tls import FakeEndpoint

        fixture = Fixture(Path(self.mktemp()))
        inner = FakeEndpoint()
        limits = PortLimits(max_handshakes=3)
        endpoint = tls_server_endpoint(
            inner, fixture.source(), limits=limits, clock=Clock(), port="query"
        )
        endpoint.listen(Factory.forProtocol(Protocol))
        [factory] = inner.factories
        assert isinstance(factory, BoundedTLSFactory)
        self.assertEqual((factory.limits, factory.name), (limits, "query port"))


class StorePortWiringTests(SynchronousTestCase):
    """
    C{make_store_port_service}: the store port's limits from the options, and
    one log line per verified connection with its DN.
    """

    def setUp(self) -> None:
        self.fixture = Fixture(Path(self.mktemp()))
        self.options: dict[str, Any] = {
            "store": "tcp:9001:interface=127.0.0.1",
            "cert": str(self.fixture.host_cert),
            "key": str(self.fixture.host_cert),
            "ca-dir": str(self.fixture.ca_dir),
            "crl": "if-present",
            "policy": None,
            "super-user": [],
            "voms-dir": None,
            "dev-certs": False,
            "grey-jobs": False,
            "max-event-size": 4096,
            "max-fields": 100,
            "store-max-connections": 3,
            "store-idle-timeout": 30.0,
            "tls-handshake-timeout": 2.0,
        }

    def test_limits_and_connection_log(self) -> None:
        events = capture_log(self)
        reactor = MemoryReactorClock()
        reactor.advance(NOW.timestamp())
        service = store_port_service_of(self.options, MemoryStore(reactor), reactor)
        service.privilegedStartService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, BoundedTLSFactory)
        self.assertEqual(factory.limits.max_connections, 3)
        self.assertEqual(factory.limits.idle_timeout, 30.0)
        self.assertEqual(factory.limits.handshake_timeout, 2.0)
        assert factory.on_established is not None
        for who in (Identity(USER_DN), Identity('/CN=a "quoted"\nname'), None):
            factory.on_established(
                SimpleNamespace(  # type: ignore[arg-type]
                    peer_text="10.1.2.3:5555", wrappedProtocol=SimpleNamespace(identity=who)
                )
            )
        self.assertEqual(
            [t for t in texts(events) if "store port: connection from" in t],
            [
                f'store port: connection from 10.1.2.3:5555, DN "{USER_DN}"',
                'store port: connection from 10.1.2.3:5555, DN "/CN=a \\"quoted\\"\\x0aname"',
                "store port: connection from 10.1.2.3:5555, DN -",
            ],
        )


class OptionTests(SynchronousTestCase):
    NAMES = (
        "tls-handshake-timeout",
        "max-handshakes",
        "max-handshakes-per-address",
        "max-connections-per-address",
        "store-max-connections",
        "store-idle-timeout",
        "query-max-connections",
        "query-idle-timeout",
        "max-request-line",
        "max-header-size",
        "max-headers",
    )

    def parse(self, *args: str) -> tap.Options:
        options = tap.ServerOptions()
        options.parseOptions(["--state-dir", self.mktemp(), *args])
        return options

    def test_defaults(self) -> None:
        o = self.parse()
        self.assertEqual(o["tls-handshake-timeout"], config.DEFAULT_TLS_HANDSHAKE_TIMEOUT)
        self.assertEqual(o["query-idle-timeout"], 60.0)
        self.assertEqual(o["store-idle-timeout"], 300.0)
        self.assertEqual(o["max-request-line"], 16384)
        self.assertEqual(o["max-header-size"], 65536)
        self.assertEqual(o["max-headers"], 100)

    def test_given(self) -> None:
        o = self.parse("--query-idle-timeout", "0.5", "--max-handshakes", "3")
        self.assertEqual((o["query-idle-timeout"], o["max-handshakes"]), (0.5, 3))

    def test_bad_values(self) -> None:
        for args in (
            ["--tls-handshake-timeout", "0"],
            ["--store-idle-timeout", "soon"],
            ["--query-idle-timeout", "nan"],
            ["--max-handshakes", "0"],
            ["--max-header-size", "-1"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_documented_in_sample_configs(self) -> None:
        """
        Every bound is in both sample files (the store port's in lbserver.conf),
        the commented values parse as the defaults, and docs/limits.md names it.
        """
        for name, cls in (("lbproxy.conf", tap.Options), ("lbserver.conf", tap.ServerOptions)):
            text = (ROOT / "etc" / name).read_text()
            wanted = [n for n in self.NAMES if name == "lbserver.conf" or "store" not in n]
            lines = [
                line[2:]
                for line in text.splitlines()
                if any(line.startswith(f"# {n} = ") for n in wanted)
            ]
            self.assertEqual(len(lines), len(wanted), name)
            path = Path(self.mktemp())
            path.write_text(f"[{cls.role}]\n" + "\n".join(lines) + "\n")
            options = cls()
            options.parseOptions(["--config", str(path), "--state-dir", self.mktemp()])
            defaults = cls().role_defaults()
            for key in wanted:
                self.assertEqual(options[key], defaults[key], key)
        limits_doc = (ROOT / "docs" / "limits.md").read_text()
        for key in self.NAMES:
            self.assertIn(f"`--{key}", limits_doc)


class ListenerTests(SynchronousTestCase):
    """
    L{tls_listener}, the listening side of the query and store ports.
    """

    def setUp(self) -> None:
        self.fixture = Fixture(Path(self.mktemp()))
        self.factory = Factory.forProtocol(Protocol)

    def test_bounded_tls_port(self) -> None:
        """
        The application factory is served behind a bounded TLS factory with the
        port's limits and name, on the endpoint description given.
        """
        reactor = MemoryReactorClock()
        limits = PortLimits(max_connections=3)
        service = tls_listener(
            reactor,
            "tcp:9011:interface=127.0.0.1",
            self.fixture.source(),
            self.factory,
            limits=limits,
            port="store",
        )
        service.privilegedStartService()
        [(port, factory, _, interface)] = reactor.tcpServers
        assert isinstance(factory, BoundedTLSFactory)
        self.assertEqual((port, interface), (9011, "127.0.0.1"))
        self.assertIs(factory.wrappedFactory, self.factory)
        self.assertEqual((factory.limits, factory.name), (limits, "store port"))

    def test_port_taken_stops_start_up(self) -> None:
        """
        A port that cannot be bound fails start-up (the store port as the query port).
        """
        from tests.unit.test_web_tls import BusyPortReactor

        service = tls_listener(
            BusyPortReactor(),
            "tcp:9011",
            self.fixture.source(),
            self.factory,
            limits=PortLimits(),
            port="store",
        )
        self.assertRaises(CannotListenError, service.privilegedStartService)
