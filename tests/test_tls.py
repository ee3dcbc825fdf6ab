# -*- test-case-name: tests.test_tls -*-
"""
Tests for L{lbtwist.tls}: in-memory TLS handshakes over iosim with
certificates generated in the test.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import attrs
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IHandshakeListener, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbtwist import devcerts
from lbtwist.identity import dn_of_chain
from lbtwist.tls import (
    CADirectory,
    ClientConnectionCreator,
    ServerContextSource,
    TLSConfigError,
    client_context,
    server_context,
    tls_server_endpoint,
    transport_chain,
)
from tests.certs import NOW, Credential, TestCA, proxy_of

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


def connect(server_source: object, client_creator: object) -> Result:
    """
    Handshake a client and the server in memory; return both ends.
    """
    server = Recorder()
    client = Recorder()
    clock = Clock()
    sf = TLSMemoryBIOFactory(server_source, False, Factory.forProtocol(lambda: server), clock)  # type: ignore[arg-type]
    cf = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(lambda: client), clock)  # type: ignore[arg-type]
    addr = IPv4Address("TCP", "127.0.0.1", 9000)
    _, _, pump = iosim.connectedServerAndClient(
        lambda: sf.buildProtocol(addr), lambda: cf.buildProtocol(addr), clock=clock
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

    def source(self, **kw: object) -> ServerContextSource:
        kw.setdefault("verify_time", NOW)
        return ServerContextSource(self.host_cert, None, self.ca_dir, **kw)  # type: ignore[arg-type]

    def client(self, cred: Credential | None, name: str = "client.pem") -> ClientConnectionCreator:
        path = cred.write(self.base / name) if cred is not None else None
        return ClientConnectionCreator(
            "localhost", client_context(path, None, self.ca_dir, verify_time=NOW, crl="off")
        )


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.f = Fixture(Path(self.mktemp()))
        self.events: list[dict[str, object]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

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
