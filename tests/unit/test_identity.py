# -*- test-case-name: tests.unit.test_identity -*-
"""
Tests for L{lbtwist.security.identity}: DNs of chains, DN comparison, VOMS FQANs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import tap
from lbtwist.security import devcerts, tls
from lbtwist.security.identity import (
    Identity,
    TrustAnchors,
    dn_of_chain,
    identity_of_chain,
    is_proxy,
    normalize_dn,
    printable,
    same_dn,
    signer_problem,
    slash_dn,
    voms_fqans,
)
from lbtwist.testing import MemoryStore
from tests.certs import (
    NOW,
    Credential,
    TestCA,
    make_ac,
    name,
    proxy_of,
    voms_extension,
    write_lsc,
)
from tests.logcapture import capture_log
from tests.unit.test_settings import query_service_of, store_port_service_of

USER_DN = "/DC=org/DC=example/OU=People/CN=Test User"
FQANS = ["/testvo/Role=NULL/Capability=NULL", "/testvo/prod/Role=NULL/Capability=NULL"]


class DNTests(SynchronousTestCase):
    def test_slash_dn(self) -> None:
        self.assertEqual(slash_dn(name(USER_DN)), USER_DN)
        n = name("/C=CZ/O=CESNET/CN=Jan Novak/emailAddress=jan@example.org")
        self.assertEqual(slash_dn(n), "/C=CZ/O=CESNET/CN=Jan Novak/emailAddress=jan@example.org")

    def test_same_dn_table(self) -> None:
        table = [
            ("/C=CZ/CN=A/emailAddress=a@b", "/C=CZ/CN=A/Email=a@b", True),
            ("/C=CZ/CN=A/emailAddress=a@b", "/C=CZ/CN=A/E=a@b", True),
            ("/C=CZ/CN=A/Email=a@b", "/c=cz/cn=a/e=A@B", True),
            (USER_DN, USER_DN.upper(), True),
            (USER_DN, USER_DN + "/CN=proxy", False),
            ("/C=CZ/CN=Eve", "/C=CZ/CN=E=ve", False),
            ("/C=CZ/CN=A", "/C=CZ/CN=B", False),
        ]
        for a, b, same in table:
            self.assertEqual(same_dn(a, b), same, (a, b))
            self.assertEqual(same_dn(b, a), same, (b, a))

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
    def test_normalize_idempotent(self, dn: str) -> None:
        n = normalize_dn(dn)
        self.assertEqual(normalize_dn(n), n)
        self.assertTrue(same_dn(dn, dn.upper()))
        self.assertTrue(same_dn(dn, dn.replace("/emailAddress=", "/E=")))


class ChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA.create()
        self.user = self.ca.user(USER_DN)

    def test_user_chain(self) -> None:
        self.assertEqual(dn_of_chain([self.user.cert, self.ca.cert]), USER_DN)

    def test_proxy_chains(self) -> None:
        p1 = proxy_of(self.user)
        p2 = proxy_of(p1)
        self.assertTrue(is_proxy(p1.cert))
        self.assertFalse(is_proxy(self.user.cert))
        self.assertTrue(slash_dn(p1.cert.subject).startswith(USER_DN + "/CN="))
        self.assertEqual(dn_of_chain(p1.full_chain), USER_DN)
        self.assertEqual(dn_of_chain(p2.full_chain + [self.ca.cert]), USER_DN)

    def test_proxy_cert_info_is_critical_inherit_all(self) -> None:
        p = proxy_of(self.user)
        ext = p.cert.extensions.get_extension_for_oid(devcerts.PROXY_CERT_INFO_OID)
        self.assertTrue(ext.critical)
        value = cast(x509.UnrecognizedExtension, ext.value).value
        self.assertEqual(value, devcerts.proxy_cert_info_der(devcerts.PPL_INHERIT_ALL))
        self.assertIn(bytes.fromhex("2b06010505071501"), value)  # 1.3.6.1.5.5.7.21.1

    def test_legacy_proxies(self) -> None:
        for limited in (False, True):
            legacy = proxy_of(self.user, legacy=True, limited=limited)
            self.assertFalse(is_proxy(legacy.cert))
            self.assertTrue(is_proxy(legacy.cert, allow_legacy=True))
            self.assertEqual(dn_of_chain(legacy.full_chain, allow_legacy=True), USER_DN)
            self.assertEqual(
                dn_of_chain(legacy.full_chain),
                USER_DN + ("/CN=limited proxy" if limited else "/CN=proxy"),
            )

    def test_user_named_proxy_is_not_legacy(self) -> None:
        """
        A CA-issued certificate whose CN is "proxy" is not a proxy.
        """
        cred = self.ca.user("/DC=org/DC=example/CN=proxy")
        self.assertFalse(is_proxy(cred.cert, allow_legacy=True))

    def test_only_proxies(self) -> None:
        p = proxy_of(self.user)
        self.assertRaises(ValueError, dn_of_chain, [p.cert])
        self.assertRaises(ValueError, dn_of_chain, [])

    def test_identity_of_chain(self) -> None:
        p = proxy_of(self.user)
        ident = identity_of_chain(p.full_chain, now=NOW)
        self.assertEqual(ident, Identity(USER_DN, (), (slash_dn(p.cert.subject), USER_DN)))


class VOMSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA.create()
        self.user = self.ca.user(USER_DN)
        self.voms = self.ca.user("/DC=org/DC=example/OU=Services/CN=voms.example.org")
        self.voms_dir = Path(self.mktemp())
        write_lsc(self.voms_dir, self.voms)
        self.logged = capture_log(self)

    def chain(self, **kw: object) -> list[x509.Certificate]:
        ac = make_ac(self.user.cert, self.voms, FQANS, **kw)  # type: ignore[arg-type]
        return proxy_of(self.user, extra_extensions=[voms_extension(ac)]).full_chain

    def fqans(self, chain: list[x509.Certificate], **kw: object) -> tuple[str, ...]:
        return voms_fqans(chain, voms_dir=self.voms_dir, now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]

    def assertRefused(self, chain: list[x509.Certificate], why: str, **kw: object) -> None:
        self.assertEqual(self.fqans(chain, **kw), ())
        messages = [str(e.get("why", "")) for e in self.logged]
        self.assertTrue(any(why in m for m in messages), messages)

    def test_valid(self) -> None:
        chain = self.chain()
        self.assertEqual(self.fqans(chain), tuple(FQANS))
        self.assertEqual(self.fqans(chain, ca_certs=[self.ca.cert]), tuple(FQANS))
        ident = identity_of_chain(chain, now=NOW, voms_dir=self.voms_dir)
        self.assertEqual(ident.fqans, tuple(FQANS))
        self.assertEqual(ident.dn, USER_DN)
        self.assertEqual(self.logged, [])

    def test_ac_in_proxy_of_proxy(self) -> None:
        ac = make_ac(self.user.cert, self.voms, FQANS)
        p1 = proxy_of(self.user, extra_extensions=[voms_extension(ac)])
        p2 = proxy_of(p1)
        self.assertEqual(self.fqans(p2.full_chain), tuple(FQANS))

    def test_no_ac(self) -> None:
        self.assertEqual(self.fqans(proxy_of(self.user).full_chain), ())
        self.assertEqual(self.logged, [])

    def test_expired(self) -> None:
        self.assertRefused(self.chain(), "validity", now=NOW + timedelta(days=1))
        self.assertRefused(self.chain(), "validity", now=NOW - timedelta(days=1))

    def test_no_lsc(self) -> None:
        (self.voms_dir / "testvo" / "voms.example.org.lsc").unlink()
        self.assertRefused(self.chain(), ".lsc")

    def test_lsc_for_other_dn(self) -> None:
        lsc = self.voms_dir / "testvo" / "voms.example.org.lsc"
        lsc.write_text("/DC=org/CN=someone else\n/DC=org/DC=example/CN=Test CA\n")
        self.assertRefused(self.chain(), ".lsc")

    def test_lsc_case_and_other_name(self) -> None:
        """
        .lsc matching is L&B's DN comparison; any .lsc of the VO is tried
        when the host's file is absent.
        """
        old = self.voms_dir / "testvo" / "voms.example.org.lsc"
        text = old.read_text().upper()
        old.unlink()
        (self.voms_dir / "testvo" / "other.lsc").write_text("# comment\n" + text)
        self.assertEqual(self.fqans(self.chain()), tuple(FQANS))

    def test_bad_signature(self) -> None:
        self.assertRefused(self.chain(sign_with=devcerts.new_key()), "signature")

    def test_wrong_holder(self) -> None:
        self.assertRefused(self.chain(holder_serial=12345), "holder")

    def test_old_format_holder(self) -> None:
        """
        Old VOMS ACs (voms-proxy-fake without -newformat) name the user
        certificate's subject as the holder's issuer: accepted too.
        """
        chain = self.chain(holder_issuer=self.user.cert.subject)
        self.assertEqual(self.fqans(chain), tuple(FQANS))
        self.assertEqual(self.logged, [])
        ident = identity_of_chain(chain, now=NOW, voms_dir=self.voms_dir)
        self.assertEqual((ident.dn, ident.fqans), (USER_DN, tuple(FQANS)))

    def test_new_format_holder(self) -> None:
        """
        Standard ACs name the user certificate's issuer.
        """
        self.assertEqual(self.fqans(self.chain(holder_issuer=self.user.cert.issuer)), tuple(FQANS))

    def test_old_format_holder_wrong_serial(self) -> None:
        chain = self.chain(holder_issuer=self.user.cert.subject, holder_serial=12345)
        self.assertRefused(chain, "holder serial")

    def test_holder_issuer_of_neither(self) -> None:
        other = x509.Name.from_rfc4514_string("CN=Someone Else,O=Elsewhere")
        self.assertRefused(self.chain(holder_issuer=other), "holder issuer")

    def test_old_format_ac_for_another_user(self) -> None:
        other = self.ca.user("/DC=org/DC=example/OU=People/CN=Other")
        ac = make_ac(other.cert, self.voms, FQANS, holder_issuer=other.cert.subject)
        chain = proxy_of(self.user, extra_extensions=[voms_extension(ac)]).full_chain
        self.assertRefused(chain, "holder")

    def test_ac_for_another_user(self) -> None:
        other = self.ca.user("/DC=org/DC=example/OU=People/CN=Other")
        ac = make_ac(other.cert, self.voms, FQANS)
        chain = proxy_of(self.user, extra_extensions=[voms_extension(ac)]).full_chain
        self.assertRefused(chain, "holder")

    def test_no_signer_certificate(self) -> None:
        self.assertRefused(self.chain(include_certs=False), "certificate of its issuer")

    def test_untrusted_voms_ca(self) -> None:
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        self.assertRefused(self.chain(), "trusted CA", ca_certs=[other.cert])

    def test_garbage_extension(self) -> None:
        ext = x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5"), b"\x30\x03\x02\x01\x01"
        )
        chain = proxy_of(self.user, extra_extensions=[ext]).full_chain
        self.assertEqual(self.fqans(chain), ())
        self.assertTrue(self.logged)


class PrintableTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        self.assertEqual(printable(USER_DN), USER_DN)

    def test_escapes(self) -> None:
        table = [
            ("/CN=a\x1b[2Jb", "/CN=a\\x1b[2Jb"),
            ("/CN=x\ny", "/CN=x\\x0ay"),
            ("/CN=\u202eevil", "/CN=\\u202eevil"),
            ("/CN=back\\slash", "/CN=back\\\\slash"),
            ('/CN="quoted"', '/CN=\\"quoted\\"'),
            ("/CN=Jiří Novák", "/CN=Jiří Novák"),
        ]
        for raw, shown in table:
            self.assertEqual(printable(raw), shown, raw)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40))
    def test_never_control_characters(self, text: str) -> None:
        shown = printable(text)
        self.assertTrue(shown.isprintable(), shown)


class SignerTrustTests(SynchronousTestCase):
    """
    L{signer_problem}: a certificate met outside a handshake, checked as TLS
    checks a peer.
    """

    def setUp(self) -> None:
        self.ca = TestCA.create()
        self.voms = self.ca.user(VOMS_DN)

    def trust(
        self, *crls: x509.CertificateRevocationList, broken: str | None = None
    ) -> TrustAnchors:
        names = {self.ca.cert.subject: broken} if broken is not None else {}
        return TrustAnchors((self.ca.cert,), tuple(crls), names)

    def test_trusted(self) -> None:
        self.assertIsNone(signer_problem(self.voms.cert, self.trust(self.ca.crl()), now=NOW))

    def test_revoked(self) -> None:
        trust = self.trust(self.ca.crl([self.voms.cert]))
        self.assertEqual(signer_problem(self.voms.cert, trust, now=NOW), "revoked")
        self.assertIsNone(signer_problem(self.voms.cert, trust, now=NOW, crl="off"))

    def test_crl_modes_without_crl(self) -> None:
        self.assertIsNone(signer_problem(self.voms.cert, self.trust(), now=NOW))
        problem = signer_problem(self.voms.cert, self.trust(), now=NOW, crl="require")
        self.assertIn("no CRL", problem or "")

    def test_broken_crl(self) -> None:
        trust = self.trust(broken="/x/abcd1234.r0: not a PEM CRL")
        problem = signer_problem(self.voms.cert, trust, now=NOW) or ""
        self.assertIn("CRL unreadable (/x/abcd1234.r0: not a PEM CRL)", problem)
        self.assertIsNone(signer_problem(self.voms.cert, trust, now=NOW, crl="off"))

    def test_expired_crl(self) -> None:
        old = self.ca.crl(last_update=NOW - timedelta(days=100), days=1)
        problem = signer_problem(self.voms.cert, self.trust(old), now=NOW) or ""
        self.assertIn("CRL expired", problem)

    def test_crl_of_another_key(self) -> None:
        fake = TestCA(self.ca.cert, devcerts.new_key())
        problem = signer_problem(self.voms.cert, self.trust(fake.crl()), now=NOW) or ""
        self.assertIn("bad CRL signature", problem)

    def test_lookalike_ca(self) -> None:
        """
        A CA with the same DN but another key issued the certificate.
        """
        twin = TestCA.create()
        forged = twin.user(VOMS_DN)
        self.assertEqual(
            signer_problem(forged.cert, self.trust(), now=NOW), "not issued by a trusted CA"
        )

    def test_expired_signer(self) -> None:
        self.assertEqual(
            signer_problem(self.voms.cert, self.trust(), now=NOW + timedelta(days=4000)),
            "expired or not yet valid",
        )

    def sub_ca(self) -> TestCA:
        key = devcerts.new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("/DC=org/DC=example/CN=Sub CA"))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca.key, hashes.SHA256())
        )
        return TestCA(cert, key)

    def test_intermediate_ca(self) -> None:
        sub = self.sub_ca()
        voms = sub.user(VOMS_DN)
        trust = TrustAnchors((self.ca.cert, sub.cert), (self.ca.crl([sub.cert]), sub.crl()))
        self.assertEqual(
            signer_problem(voms.cert, trust, now=NOW), "issued under a CA that is revoked"
        )
        trust = TrustAnchors((self.ca.cert, sub.cert), (self.ca.crl(), sub.crl()))
        self.assertIsNone(signer_problem(voms.cert, trust, now=NOW))
        self.assertEqual(
            signer_problem(voms.cert, TrustAnchors((sub.cert,)), now=NOW),
            "not issued by a trusted CA",
        )


VOMS_DN = "/DC=org/DC=example/OU=Services/CN=voms.example.org"


class FakeTransport:
    """
    A transport whose handle is a (never connected) TLS connection.
    """

    def __init__(self) -> None:
        self.handle = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)

    def getHandle(self) -> SSL.Connection:
        return self.handle


@attrs.define
class FakeChannel:
    transport: FakeTransport


@attrs.define
class FakeRequest:
    channel: FakeChannel


class PortIdentityTests(SynchronousTestCase):
    """
    The identity of peers of the store port (C{make_store_port_service}) and
    of the query port (C{make_query_service}): one layer, VOMS servers checked
    against the port's CA directory and CRLs. The verified chain of a
    connection is replaced by the test's (L{tls.verified_chain} patched).
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir(parents=True)
        self.ca = TestCA.create()
        self.ca_dir = self.base / "certificates"
        self.ca.install(self.ca_dir, self.ca.crl())
        self.voms = self.ca.user(VOMS_DN)
        self.voms_dir = self.base / "vomsdir"
        write_lsc(self.voms_dir, self.voms)
        self.user = self.ca.user(USER_DN)
        self.host_pem = self.ca.host("localhost").write(self.base / "host.pem")
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW.timestamp())
        self.chains: dict[SSL.Connection, list[x509.Certificate]] = {}
        self.looked_up: list[SSL.Connection] = []

        def verified_chain(conn: SSL.Connection) -> list[x509.Certificate]:
            self.looked_up.append(conn)
            return self.chains.get(conn, [])

        self.patch(tls, "verified_chain", verified_chain)
        self.logged = capture_log(self)

    def options(self) -> dict[str, Any]:
        return {
            "query": "tcp:9000:interface=127.0.0.1",
            "store": "tcp:9001:interface=127.0.0.1",
            "cert": str(self.host_pem),
            "key": str(self.host_pem),
            "ca-dir": str(self.ca_dir),
            "voms-dir": str(self.voms_dir),
            "crl": "if-present",
            "policy": None,
            "super-user": [],
            "dev-certs": False,
            "state-dir": str(self.base),
            "grey-jobs": False,
            "max-connections": 10,
            "max-event-size": 65536,
            "max-fields": 100,
        }

    def store_port(self) -> tuple[Any, Callable[[FakeTransport], Identity | None]]:
        service = store_port_service_of(self.options(), MemoryStore(Clock()), self.reactor)
        return service.endpoint.context_source, service.factory.identify

    def query_port(self) -> tuple[Any, Callable[[FakeTransport], Identity | None]]:
        service = query_service_of(self.options(), MemoryStore(Clock()), self.reactor)
        identify = service.factory.resource.identify
        return service.endpoint.context_source, lambda t: identify(FakeRequest(FakeChannel(t)))

    def voms_chain(self, signer: Credential) -> list[x509.Certificate]:
        ac = make_ac(self.user.cert, signer, FQANS)
        return [*proxy_of(self.user, extra_extensions=[voms_extension(ac)]).full_chain]

    def connect(self, source: Any, chain: list[x509.Certificate]) -> FakeTransport:
        """
        A new connection (the TLS source re-reads the CA directory).
        """
        source.serverConnectionForTLS(None)
        transport = FakeTransport()
        self.chains[transport.handle] = chain
        return transport

    def both_ports(self) -> list[tuple[str, Any, Callable[[FakeTransport], Identity | None]]]:
        return [("store port", *self.store_port()), ("query port", *self.query_port())]

    def whys(self) -> list[str]:
        return [str(e.get("why", "")) for e in self.logged]

    def test_genuine_voms_server(self) -> None:
        for port, source, identify in self.both_ports():
            who = identify(self.connect(source, self.voms_chain(self.voms)))
            assert who is not None
            self.assertEqual((who.dn, who.fqans), (USER_DN, tuple(FQANS)), port)

    def test_lookalike_voms_signer_gives_no_fqans(self) -> None:
        """
        An AC signed by a certificate with the VOMS server's DN from a CA
        with the trusted CA's DN (and the .lsc's DNs) but another key.
        """
        twin = TestCA.create()
        forger = twin.user(VOMS_DN)
        for port, source, identify in self.both_ports():
            who = identify(self.connect(source, self.voms_chain(forger)))
            assert who is not None
            self.assertEqual((who.dn, who.fqans), (USER_DN, ()), port)
        self.assertTrue(any("not issued by a trusted CA" in w for w in self.whys()))

    def test_revoked_voms_server_gives_no_fqans(self) -> None:
        ports = self.both_ports()
        self.ca.install(self.ca_dir, self.ca.crl([self.voms.cert]))
        bump(self.ca_dir)
        for port, source, identify in ports:
            who = identify(self.connect(source, self.voms_chain(self.voms)))
            assert who is not None
            self.assertEqual(who.fqans, (), port)
        self.assertTrue(any(w.endswith(" revoked") for w in self.whys()), self.whys())

    def test_voms_ca_added_later(self) -> None:
        """
        The CA list for VOMS checks follows the CA directory.
        """
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        voms = other.user(VOMS_DN)
        write_lsc(self.voms_dir, voms)
        for port, source, identify in self.both_ports():
            who = identify(self.connect(source, self.voms_chain(voms)))
            self.assertEqual(who.fqans, (), port)  # type: ignore[union-attr]
        other.install(self.ca_dir, other.crl())
        for port, source, identify in self.both_ports():
            who = identify(self.connect(source, self.voms_chain(voms)))
            self.assertEqual(who.fqans, tuple(FQANS), port)  # type: ignore[union-attr]

    def test_broken_crl_of_voms_ca_gives_no_fqans(self) -> None:
        other = TestCA.create("/DC=org/DC=elsewhere/CN=Other CA")
        voms = other.user(VOMS_DN)
        write_lsc(self.voms_dir, voms)
        other.install(self.ca_dir, other.crl())
        (self.ca_dir / f"{devcerts.subject_hash(other.cert)}.r0").write_text("garbage")
        for port, source, identify in self.both_ports():
            who = identify(self.connect(source, self.voms_chain(voms)))
            self.assertEqual(who.fqans, (), port)  # type: ignore[union-attr]
        self.assertTrue(any("CRL unreadable" in w for w in self.whys()), self.whys())

    def test_once_per_connection_until_trust_changes(self) -> None:
        source, identify = self.store_port()
        transport = self.connect(source, self.voms_chain(self.voms))
        first = identify(transport)
        self.assertIs(identify(transport), first)
        self.assertEqual(len(self.looked_up), 1)
        # A CRL revoking the VOMS server, read for a new connection, applies to
        # identities asked for afterwards on connections already open too.
        self.ca.install(self.ca_dir, self.ca.crl([self.voms.cert]))
        bump(self.ca_dir)
        source.serverConnectionForTLS(None)
        self.assertEqual(identify(transport).fqans, ())  # type: ignore[union-attr]

    def test_refusal_log_limits_are_options(self) -> None:
        """
        C{tls-log-interval} and C{tls-log-burst} reach the ports' refusal logs
        (shared with the VOMS warnings of their identity layer).
        """
        options = self.options()
        options.update({"tls-log-interval": 7, "tls-log-burst": 3})
        store = store_port_service_of(options, MemoryStore(Clock()), self.reactor)
        query = query_service_of(options, MemoryStore(Clock()), self.reactor)
        for service in (store, query):
            refusals = service.endpoint.context_source.refusals
            self.assertEqual((refusals.interval, refusals.burst), (7, 3))
        parsed = tap.ServerOptions()
        parsed.parseOptions(["--tls-log-interval", "7", "--tls-log-burst", "3"])
        self.assertEqual((parsed["tls-log-interval"], parsed["tls-log-burst"]), (7, 3))
        defaults = tap.Options()
        defaults.parseOptions([])
        self.assertEqual(
            (defaults["tls-log-interval"], defaults["tls-log-burst"]),
            (tls.REFUSAL_LOG_INTERVAL, tls.REFUSAL_LOG_BURST),
        )
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--tls-log-burst", "0"])

    def test_not_a_tls_transport(self) -> None:
        _, identify = self.store_port()
        self.assertIsNone(identify(object()))  # type: ignore[arg-type]
        transport = FakeTransport()
        self.assertIsNone(identify(transport))

    def test_voms_warnings_rate_limited(self) -> None:
        twin = TestCA.create()
        forger = twin.user(VOMS_DN)
        source, identify = self.store_port()
        for _ in range(5):
            identify(self.connect(source, self.voms_chain(forger)))
        lines = [e for e in self.logged if "ignoring VOMS" in str(e.get("log_format"))]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["dn"], USER_DN)
        self.reactor.advance(tls.REFUSAL_LOG_INTERVAL)
        identify(self.connect(source, self.voms_chain(forger)))
        lines = [e for e in self.logged if "ignoring VOMS" in str(e.get("log_format"))]
        self.assertEqual([e.get("repeats") for e in lines], [0, 4])


def bump(ca_dir: Path) -> None:
    """
    Make every file of the directory look changed (as fetch-crl's rename does).
    """
    for path in ca_dir.iterdir():
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
