# -*- test-case-name: tests.test_identity -*-
"""
Tests for L{lbtwist.identity}: DNs of chains, DN comparison, VOMS FQANs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import cast

from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import devcerts
from lbtwist.identity import (
    Identity,
    dn_of_chain,
    identity_of_chain,
    is_proxy,
    normalize_dn,
    same_dn,
    slash_dn,
    voms_fqans,
)
from tests.certs import NOW, TestCA, make_ac, name, proxy_of, voms_extension, write_lsc

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
        self.logged: list[dict[str, object]] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

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
