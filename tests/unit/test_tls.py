# -*- test-case-name: tests.unit.test_tls -*-
"""
Tests for L{lbtwist.security.tls}: in-memory TLS handshakes over iosim with
certificates generated in the test.
"""

from __future__ import annotations

import errno
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IHandshakeListener, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbtwist.security import devcerts
from lbtwist.security.identity import dn_of_chain
from lbtwist.security.tls import (
    REFUSAL_LOG_INTERVAL,
    CADirectory,
    ClientConnectionCreator,
    RefusalLog,
    ServerContextSource,
    TLSConfigError,
    TrustUnavailable,
    client_context,
    server_context,
    tls_server_endpoint,
    transport_chain,
)
from tests.certs import NOW, Credential, TestCA, proxy_of
from tests.logcapture import capture_log

USER_DN = "/DC=org/DC=example/OU=People/CN=Test User"


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Records the handshake, the peer chain and the data received.
    """

    def __init__(self) -> None:
        self.handshake = False
        self.chain: list[x509.Certificate] = []
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.handshake = True
        self.chain = transport_chain(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


@attrs.define
class Result:
    server: Recorder
    client: Recorder

    @property
    def accepted(self) -> bool:
        return self.server.handshake and self.server.data == b"hello"


#: The client's address as the server sees it.
PEER = IPv4Address("TCP", "192.0.2.7", 40001)


def connect(server_source: object, client_creator: object, peer: IPv4Address = PEER) -> Result:
    """
    Handshake a client (from C{peer}) and the server in memory; return both ends.
    """
    server = Recorder()
    client = Recorder()
    clock = Clock()
    sf = TLSMemoryBIOFactory(server_source, False, Factory.forProtocol(lambda: server), clock)  # type: ignore[arg-type]
    cf = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(lambda: client), clock)  # type: ignore[arg-type]
    addr = IPv4Address("TCP", "127.0.0.1", 9000)
    _, _, pump = iosim.connectedServerAndClient(
        lambda: sf.buildProtocol(addr),
        lambda: cf.buildProtocol(addr),
        serverTransportFactory=lambda p: iosim.FakeTransport(p, True, addr, peer),
        clock=clock,
    )
    for _ in range(5):
        clock.advance(1)
        pump.flush()
    return Result(server, client)


class Fixture:
    """
    A CA directory with a CRL, a host, a user and a second user.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA.create()
        self.ca_dir = base / "certificates"
        self.ca.install(self.ca_dir, self.ca.crl())
        self.host = self.ca.host("localhost")
        self.host_cert = self.host.write(base / "host.pem")
        self.user = self.ca.user(USER_DN)
        self.user2 = self.ca.user("/DC=org/DC=example/OU=People/CN=Other User")
        self.clock = Clock()
        self.crl_path = self.ca_dir / f"{devcerts.subject_hash(self.ca.cert)}.r0"

    def client12(self, cred: Credential | None) -> ClientConnectionCreator:
        """
        A client speaking TLS 1.2 at most.
        """
        path = cred.write(self.base / "client12.pem") if cred is not None else None
        ctx = client_context(path, None, self.ca_dir, verify_time=NOW, crl="off")
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        return ClientConnectionCreator("localhost", ctx)

    def source(self, **kw: object) -> ServerContextSource:
        kw.setdefault("verify_time", NOW)
        kw.setdefault("clock", self.clock)
        return ServerContextSource(self.host_cert, None, self.ca_dir, **kw)  # type: ignore[arg-type]

    def client(self, cred: Credential | None, name: str = "client.pem") -> ClientConnectionCreator:
        path = cred.write(self.base / name) if cred is not None else None
        return ClientConnectionCreator(
            "localhost", client_context(path, None, self.ca_dir, verify_time=NOW, crl="off")
        )


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.f = Fixture(Path(self.mktemp()))
        self.events = capture_log(self)

    def test_user_certificate_accepted(self) -> None:
        r = connect(self.f.source(), self.f.client(self.f.user))
        self.assertTrue(r.accepted)
        self.assertEqual(r.client.data, b"hello")
        self.assertEqual(dn_of_chain(r.server.chain), USER_DN)
        self.assertEqual(r.server.chain[-1], self.f.ca.cert)

    def test_proxy_accepted_identity_is_user(self) -> None:
        proxy = proxy_of(self.f.user)
        r = connect(self.f.source(), self.f.client(proxy))
        self.assertTrue(r.accepted)
        self.assertEqual(r.server.chain[0], proxy.cert)
        self.assertEqual(dn_of_chain(r.server.chain), USER_DN)

    def test_proxy_of_proxy_accepted(self) -> None:
        proxy = proxy_of(proxy_of(self.f.user))
        r = connect(self.f.source(), self.f.client(proxy))
        self.assertTrue(r.accepted)
        self.assertEqual(len(r.server.chain), 4)
        self.assertEqual(dn_of_chain(r.server.chain), USER_DN)

    def test_proxy_of_revoked_user_refused(self) -> None:
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        r = connect(self.f.source(), self.f.client(proxy_of(self.f.user)))
        self.assertFalse(r.accepted)
        self.assertTrue(r.server.lost)
        # Another user of the same CA still gets in.
        r = connect(self.f.source(), self.f.client(self.f.user2, "u2.pem"))
        self.assertTrue(r.accepted)

    def test_revoked_user_accepted_with_crl_off(self) -> None:
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        r = connect(self.f.source(crl="off"), self.f.client(proxy_of(self.f.user)))
        self.assertTrue(r.accepted)

    def test_expired_proxy_refused(self) -> None:
        proxy = proxy_of(self.f.user, now=NOW - timedelta(days=3650), hours=1)
        r = connect(self.f.source(), self.f.client(proxy))
        self.assertFalse(r.accepted)

    def test_no_client_certificate_refused(self) -> None:
        r = connect(self.f.source(), self.f.client(None))
        self.assertFalse(r.accepted)
        self.assertEqual(r.server.data, b"")
        self.assertTrue(r.server.lost)

    def test_unknown_ca_refused(self) -> None:
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        stranger = other.user(USER_DN)
        r = connect(self.f.source(), self.f.client(proxy_of(stranger)))
        self.assertFalse(r.accepted)

    def test_proxy_signed_by_other_key_refused(self) -> None:
        """
        A proxy claiming the user as issuer but signed by another key.
        """
        fake = devcerts.issue_proxy(self.f.user.cert, devcerts.new_key(), now=NOW)
        cred = Credential(fake[0], fake[1], [self.f.user.cert])
        r = connect(self.f.source(), self.f.client(cred))
        self.assertFalse(r.accepted)

    def test_crl_require_without_crl_refuses(self) -> None:
        (self.f.ca_dir / f"{devcerts.subject_hash(self.f.ca.cert)}.r0").unlink()
        r = connect(self.f.source(crl="require"), self.f.client(self.f.user))
        self.assertFalse(r.accepted)
        self.assertTrue(any(e.get("log_level") == LogLevel.warn for e in self.events))

    def test_crl_if_present_without_crl_accepts(self) -> None:
        (self.f.ca_dir / f"{devcerts.subject_hash(self.f.ca.cert)}.r0").unlink()
        r = connect(self.f.source(), self.f.client(proxy_of(self.f.user)))
        self.assertTrue(r.accepted)

    def test_expired_crl_refuses_and_logs(self) -> None:
        old = self.f.ca.crl(last_update=NOW - timedelta(days=100), days=1)
        self.f.ca.install(self.f.ca_dir, old)
        r = connect(self.f.source(), self.f.client(self.f.user))
        self.assertFalse(r.accepted)
        self.assertTrue(any(e.get("log_level") == LogLevel.critical for e in self.events))

    def test_ca_dir_change_picked_up(self) -> None:
        source = self.f.source()
        client = self.f.client(proxy_of(self.f.user))
        self.assertTrue(connect(source, client).accepted)
        before = source.getContext()
        self.assertIs(source.getContext(), before)
        crl_path = self.f.ca_dir / f"{devcerts.subject_hash(self.f.ca.cert)}.r0"
        # fetch-crl replaces the file; make sure the mtime differs too.
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        st = crl_path.stat()
        os.utime(crl_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        self.assertFalse(connect(source, client).accepted)
        self.assertIsNot(source.getContext(), before)

    def test_new_ca_picked_up(self) -> None:
        source = self.f.source()
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        stranger = other.user(USER_DN)
        self.assertFalse(connect(source, self.f.client(stranger)).accepted)
        other.install(self.f.ca_dir, other.crl())
        self.assertTrue(connect(source, self.f.client(stranger)).accepted)

    def test_legacy_proxy_refused_by_default(self) -> None:
        legacy = proxy_of(self.f.user, legacy=True)
        self.assertFalse(connect(self.f.source(), self.f.client(legacy)).accepted)

    def test_legacy_proxy_accepted_when_allowed(self) -> None:
        legacy = proxy_of(self.f.user, legacy=True)
        r = connect(self.f.source(allow_legacy_proxies=True), self.f.client(legacy))
        self.assertTrue(r.accepted)
        self.assertEqual(dn_of_chain(r.server.chain, allow_legacy=True), USER_DN)

    def test_legacy_allowed_rejects_non_proxy_child(self) -> None:
        """
        With legacy proxies allowed, an end-entity certificate still may
        only issue its own proxies.
        """
        name = x509.Name.from_rfc4514_string("CN=Somebody Else,O=x")
        cert, key = devcerts.issue_cert(name, self.f.user.cert, self.f.user.key, now=NOW)
        cred = Credential(cert, key, [self.f.user.cert])
        r = connect(self.f.source(allow_legacy_proxies=True), self.f.client(cred))
        self.assertFalse(r.accepted)
        self.assertIn(
            "bad proxy chain (a non-CA issuer's child is not its proxy)",
            [e.get("reason") for e in self.events],
        )

    def test_client_checks_server_hostname(self) -> None:
        path = proxy_of(self.f.user).write(self.f.base / "p.pem")
        creator = ClientConnectionCreator(
            "wrong.example.org", client_context(path, None, self.f.ca_dir, verify_time=NOW)
        )
        r = connect(self.f.source(), creator)
        self.assertFalse(r.client.handshake)
        self.assertFalse(r.accepted)


class ContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.f = Fixture(Path(self.mktemp()))

    def test_server_context_settings(self) -> None:
        from OpenSSL import SSL

        ctx = server_context(self.f.host_cert, None, self.f.ca_dir)
        self.assertEqual(ctx.get_verify_mode(), SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)

    def test_bad_crl_mode(self) -> None:
        self.assertRaises(
            TLSConfigError, server_context, self.f.host_cert, None, self.f.ca_dir, crl="maybe"
        )

    def test_missing_cert(self) -> None:
        self.assertRaises(
            TLSConfigError, server_context, self.f.base / "nope.pem", None, self.f.ca_dir
        )

    def test_key_mismatch(self) -> None:
        key_path = self.f.base / "other.key"
        key_path.write_bytes(devcerts.key_pem(devcerts.new_key()))
        cert_path = self.f.base / "c.pem"
        cert_path.write_bytes(devcerts.cert_pem(self.f.host.cert))
        self.assertRaises(TLSConfigError, server_context, cert_path, key_path, self.f.ca_dir)

    def test_ca_directory_changes(self) -> None:
        d = CADirectory(self.f.ca_dir)
        self.assertTrue(d.changed())
        trust = d.load()
        self.assertEqual(trust.certs, (self.f.ca.cert,))
        self.assertEqual(len(trust.crls), 1)
        self.assertTrue(trust.has_crl(self.f.ca.cert.subject))
        self.assertFalse(d.changed())
        (self.f.ca_dir / "README").write_text("ignored")
        # The directory's own mtime changed.
        d.load()
        self.assertFalse(d.changed())
        TestCA.create("/CN=Another").install(self.f.ca_dir)
        self.assertTrue(d.changed())
        self.assertEqual(len(d.load().certs), 2)

    def test_ca_directory_skips_garbage(self) -> None:
        (self.f.ca_dir / "deadbeef.0").write_text("not a certificate")
        trust = CADirectory(self.f.ca_dir).load()
        self.assertEqual(trust.certs, (self.f.ca.cert,))


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    def __init__(self) -> None:
        self.factories: list[object] = []

    def listen(self, factory: object) -> Any:
        self.factories.append(factory)
        return succeed("port")


class EndpointTests(SynchronousTestCase):
    def test_wraps_endpoint(self) -> None:
        base = Path(self.mktemp())
        f = Fixture(base)
        inner = FakeEndpoint()
        source = f.source()
        endpoint = tls_server_endpoint(inner, source)
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        app = Factory.forProtocol(Recorder)
        self.assertEqual(self.successResultOf(endpoint.listen(app)), "port")
        (factory,) = inner.factories
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, app)  # type: ignore[attr-defined]


def emfile(*args: object, **kw: object) -> Any:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class BrokenCRLTests(SynchronousTestCase):
    """
    A CRL file that cannot be read or parsed fails closed; running out of
    descriptors never gives a context without CRLs.
    """

    def setUp(self) -> None:
        self.f = Fixture(Path(self.mktemp()))
        self.events = capture_log(self)

    def critical(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.critical]

    def test_corrupt_crl_refuses_until_fixed(self) -> None:
        source = self.f.source()
        client = self.f.client(proxy_of(self.f.user))
        self.assertTrue(connect(source, client).accepted)
        self.f.crl_path.write_text("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
        self.assertFalse(connect(source, client).accepted)
        self.assertFalse(connect(source, client).accepted)
        lines = self.critical()
        self.assertTrue(any(str(self.f.crl_path) in line for line in lines), lines)
        refusals = [line for line in lines if line.startswith("refusing TLS client")]
        # Rate-limited: the second refusal of the same peer is not logged again.
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("CRL unreadable", refusals[0])
        self.assertIn("192.0.2.7:40001", refusals[0])
        # fetch-crl puts a good CRL back: picked up by the next connection.
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl())
        self.assertTrue(connect(source, client).accepted)

    def test_dangling_crl_link_refuses(self) -> None:
        self.f.crl_path.unlink()
        self.f.crl_path.symlink_to(self.f.base / "missing.crl")
        self.assertFalse(connect(self.f.source(), self.f.client(self.f.user)).accepted)
        self.assertTrue(any("missing" in line or "r0" in line for line in self.critical()))

    def test_crl_that_is_a_directory_refuses(self) -> None:
        self.f.crl_path.unlink()
        self.f.crl_path.mkdir()
        self.assertFalse(connect(self.f.source(), self.f.client(self.f.user)).accepted)

    def test_require_refuses_with_readable_reason(self) -> None:
        self.f.crl_path.write_text("garbage")
        source = self.f.source(crl="require")
        self.assertFalse(connect(source, self.f.client(self.f.user)).accepted)
        self.assertTrue(any("CRL unreadable" in line for line in self.critical()))

    def test_broken_crl_ignored_with_crl_off(self) -> None:
        self.f.crl_path.write_text("garbage")
        self.assertTrue(connect(self.f.source(crl="off"), self.f.client(self.f.user)).accepted)

    def test_broken_crl_of_another_ca(self) -> None:
        """
        Only chains of the CA whose CRL is broken are refused.
        """
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        other.install(self.f.ca_dir, other.crl())
        (self.f.ca_dir / f"{devcerts.subject_hash(other.cert)}.r0").write_text("garbage")
        source = self.f.source()
        self.assertTrue(connect(source, self.f.client(self.f.user)).accepted)
        self.assertFalse(connect(source, self.f.client(other.user(USER_DN), "o.pem")).accepted)

    def test_descriptors_exhausted_reading_crl_keeps_previous_context(self) -> None:
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        source = self.f.source()
        revoked = self.f.client(proxy_of(self.f.user))
        self.assertFalse(connect(source, revoked).accepted)
        before = source.getContext()
        # The directory changes while no descriptor can be opened for its CRL.
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        os.utime(self.f.crl_path, ns=(0, os.stat(self.f.crl_path).st_mtime_ns + 10**9))
        real = Path.read_bytes

        def read_bytes(path: Path) -> bytes:
            if path.name.endswith(".r0"):
                emfile()
            return real(path)

        self.patch(Path, "read_bytes", read_bytes)
        self.assertFalse(connect(source, revoked).accepted)
        self.assertIs(source.getContext(), before)
        errors = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]
        self.assertTrue(any("keeping the previous one" in line for line in errors), errors)
        # Descriptors are back: the next connection reloads.
        self.patch(Path, "read_bytes", real)
        self.assertFalse(connect(source, revoked).accepted)
        self.assertIsNot(source.getContext(), before)
        self.assertTrue(connect(source, self.f.client(self.f.user2, "u2.pem")).accepted)

    def test_descriptors_exhausted_listing_keeps_previous_context(self) -> None:
        source = self.f.source()
        before = source.getContext()
        client = self.f.client(self.f.user)
        TestCA.create("/CN=Another").install(self.f.ca_dir)
        self.patch(os, "listdir", emfile)
        self.assertTrue(connect(source, client).accepted)
        self.assertIs(source.getContext(), before)

    def test_descriptors_exhausted_at_start(self) -> None:
        self.patch(os, "listdir", emfile)
        self.assertRaises(TrustUnavailable, self.f.source)


class RefusalLogLineTests(SynchronousTestCase):
    """
    Refused handshakes: one readable line with the peer address and reason;
    the subject only escaped and labelled unverified.
    """

    def setUp(self) -> None:
        self.f = Fixture(Path(self.mktemp()))
        self.events = capture_log(self)

    def refusals(self) -> list[str]:
        lines = [formatEvent(e) for e in self.events]
        return [line for line in lines if line.startswith("refusing TLS client")]

    def refused(self, cred: Credential | None, **kw: object) -> str:
        """
        @return: the one refusal line of a handshake of C{cred}.
        """
        del self.events[:]
        creator = self.f.client(cred) if kw.pop("tls13", True) else self.f.client12(cred)
        r = connect(self.f.source(**kw), creator)
        self.assertFalse(r.accepted)
        [line] = self.refusals()
        self.assertIn("192.0.2.7:40001", line)
        self.assertNotIn("X509 error", line)
        return line

    def test_reasons(self) -> None:
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        forged = devcerts.issue_proxy(self.f.user.cert, devcerts.new_key(), now=NOW)
        table: list[tuple[Credential, str]] = [
            (proxy_of(self.f.user, now=NOW - timedelta(days=3650), hours=1), "certificate expired"),
            (proxy_of(self.f.user, now=NOW + timedelta(days=2)), "certificate not yet valid"),
            (proxy_of(other.user(USER_DN)), "unknown CA"),
            (Credential(forged[0], forged[1], [self.f.user.cert]), "bad proxy chain"),
            (proxy_of(self.f.user, legacy=True), "bad proxy chain"),
        ]
        for cred, reason in table:
            line = self.refused(cred)
            self.assertIn(f": {reason}", line)

    def test_revoked(self) -> None:
        self.f.ca.install(self.f.ca_dir, self.f.ca.crl([self.f.user.cert]))
        line = self.refused(proxy_of(self.f.user))
        self.assertIn(": certificate revoked", line)
        self.assertIn("/CN=Test User", line)

    def test_crl_expired(self) -> None:
        old = self.f.ca.crl(last_update=NOW - timedelta(days=100), days=1)
        self.f.ca.install(self.f.ca_dir, old)
        self.assertIn(": CRL expired", self.refused(self.f.user))

    def test_no_crl_under_require(self) -> None:
        self.f.crl_path.unlink()
        self.assertIn(": no CRL of its CA", self.refused(self.f.user, crl="require"))

    def test_no_client_certificate(self) -> None:
        for tls13 in (True, False):
            line = self.refused(None, tls13=tls13)
            self.assertTrue(line.endswith(": no client certificate"), line)

    def test_no_client_certificate_one_line_per_peer(self) -> None:
        source = self.f.source()
        for host in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
            connect(source, self.f.client(None), IPv4Address("TCP", host, 5000))
        lines = self.refusals()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("192.0.2.1:5000", lines[0])
        self.assertIn("192.0.2.2:5000", lines[1])

    def test_unverified_subject_escaped(self) -> None:
        evil = TestCA.create("/DC=org/CN=\x1b[2J\x1b]0;owned\x07/CN=Test User\u202e")
        line = self.refused(evil.user("/DC=org/CN=x\x1b[31mred\nfake line"))
        self.assertTrue(line.isprintable(), line)
        self.assertIn('unverified subject "/DC=org/CN=x\\x1b[31mred\\x0afake line"', line)
        self.assertIn("\\x1b[2J", line)
        self.assertIn("\\u202e", line)

    def test_repeats_counted(self) -> None:
        source = self.f.source()
        expired = self.f.client(proxy_of(self.f.user, now=NOW - timedelta(days=3650), hours=1))
        for _ in range(3):
            self.assertFalse(connect(source, expired).accepted)
        self.assertEqual(len(self.refusals()), 1)
        self.f.clock.advance(REFUSAL_LOG_INTERVAL)
        connect(source, expired)
        lines = self.refusals()
        self.assertEqual(len(lines), 2)
        self.assertIn("(2 more like it since the last such line)", lines[1])


class RefusalLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events = capture_log(self)

    def test_interval_per_key(self) -> None:
        limiter = RefusalLog(self.clock, interval=10)
        self.assertTrue(limiter.emit("a", LogLevel.info, "line {n}", n=1))
        self.assertFalse(limiter.emit("a", LogLevel.info, "line {n}", n=2))
        self.assertTrue(limiter.emit("b", LogLevel.info, "line {n}", n=3))
        self.clock.advance(9.9)
        self.assertFalse(limiter.emit("a", LogLevel.info, "line {n}", n=4))
        self.clock.advance(0.1)
        self.assertTrue(limiter.emit("a", LogLevel.info, "line {n}", n=5))
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            ["line 1", "line 3", "line 5 (2 more like it since the last such line)"],
        )

    def test_burst_over_all_keys(self) -> None:
        limiter = RefusalLog(self.clock, interval=10, burst=3)
        logged = [limiter.emit(k, LogLevel.info, "line {k}", k=k) for k in range(5)]
        self.assertEqual(logged, [True, True, True, False, False])
        self.clock.advance(10)
        self.assertTrue(limiter.emit(99, LogLevel.info, "line {k}", k=99))
        self.assertIn("2 more TLS refusal lines not logged in 10 s", formatEvent(self.events[-2]))

    def test_keys_bounded(self) -> None:
        limiter = RefusalLog(self.clock, interval=10, burst=1000, max_keys=4)
        for k in range(100):
            limiter.emit(k, LogLevel.info, "x")
        self.assertEqual(limiter.tracked(), 4)
