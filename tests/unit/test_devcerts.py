# -*- test-case-name: tests.unit.test_devcerts -*-
"""
Tests for L{lbtwist.security.devcerts}.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security import devcerts
from lbtwist.security.identity import dn_of_chain, is_proxy, slash_dn
from lbtwist.security.tls import ClientConnectionCreator, ServerContextSource, client_context
from tests.certs import NOW
from tests.unit.test_tls import connect


class _AttrValue(asn1.Sequence):
    _fields = [("type", asn1.ObjectIdentifier), ("value", asn1.UTF8String)]


class _RDN(asn1.SetOf):
    _child_spec = _AttrValue


def openssl_name_hash(name: x509.Name) -> str:
    """
    OpenSSL's X509_NAME_hash for plain ASCII names, computed independently:
    SHA-1 of the canonical encoding (each RDN as a SET of UTF8String values,
    lower-cased, no outer SEQUENCE), first 4 bytes little-endian.
    """
    canon = b"".join(
        _RDN(
            [
                {"type": a.oid.dotted_string, "value": " ".join(str(a.value).lower().split())}
                for a in rdn
            ]
        ).dump()
        for rdn in name.rdns
    )
    return f"{int.from_bytes(hashlib.sha1(canon).digest()[:4], 'little'):08x}"


class DevPKITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.pki = devcerts.make_dev_pki(self.dir, now=NOW, hostnames=("localhost", "lb.test"))

    def load(self, path: Path) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(path.read_bytes())

    def test_layout(self) -> None:
        self.assertTrue(self.pki.exists())
        ca = self.load(self.pki.ca_cert)[0]
        h = openssl_name_hash(ca.subject)
        self.assertEqual(devcerts.subject_hash(ca), h)
        self.assertEqual(self.pki.ca_cert, self.pki.ca_dir / f"{h}.0")
        self.assertEqual(self.pki.crl, self.pki.ca_dir / f"{h}.r0")
        crl = x509.load_pem_x509_crl(self.pki.crl.read_bytes())
        self.assertTrue(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]
        self.assertEqual(crl.issuer, ca.subject)
        next_update = crl.next_update_utc
        assert next_update is not None
        self.assertGreater(next_update, NOW)

    def test_subject_hash_other_names(self) -> None:
        for dn in ("/CN=A  b", "/C=CZ/O=CESNET/CN=CESNET CA 3"):
            from tests.certs import name

            cert, _ = devcerts.make_ca(name(dn), now=NOW)
            self.assertEqual(devcerts.subject_hash(cert), openssl_name_hash(cert.subject))

    def test_key_modes(self) -> None:
        for path in (self.pki.host_key, self.pki.user_key, self.pki.user_proxy, self.pki.ca_key):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)
        self.assertEqual(stat.S_IMODE(self.pki.host_cert.stat().st_mode), 0o644)

    def test_host_certificate(self) -> None:
        (host,) = self.load(self.pki.host_cert)
        san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost", "lb.test"])
        self.assertEqual(
            host.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value, "localhost"
        )
        key = serialization.load_pem_private_key(self.pki.host_key.read_bytes(), None)
        self.assertEqual(key.public_key(), host.public_key())

    def test_users(self) -> None:
        (user,) = self.load(self.pki.user_cert)
        self.assertEqual(
            slash_dn(user.subject), "/DC=org/DC=lbtwist/OU=Development/CN=lbtwist dev user"
        )
        (user2,) = self.load(self.pki.user2_cert)
        self.assertNotEqual(user2.subject, user.subject)

    def test_proxy_file(self) -> None:
        data = self.pki.user_proxy.read_bytes()
        blocks = re.findall(rb"-----BEGIN ([A-Z ]+)-----", data)
        self.assertEqual(blocks, [b"CERTIFICATE", b"PRIVATE KEY", b"CERTIFICATE"])
        proxy, user = self.load(self.pki.user_proxy)
        self.assertEqual(user, self.load(self.pki.user_cert)[0])
        self.assertTrue(is_proxy(proxy))
        ext = proxy.extensions.get_extension_for_oid(devcerts.PROXY_CERT_INFO_OID)
        self.assertTrue(ext.critical)
        self.assertEqual(proxy.issuer, user.subject)
        cn = proxy.subject.rdns[-1]
        self.assertEqual(list(cn)[0].value, str(proxy.serial_number))
        self.assertEqual(proxy.not_valid_after_utc, NOW + timedelta(hours=12))
        proxy.verify_directly_issued_by(user)
        key = serialization.load_pem_private_key(data, None)
        self.assertEqual(key.public_key(), proxy.public_key())
        self.assertEqual(dn_of_chain([proxy, user]), slash_dn(user.subject))

    def test_handshake_with_dev_pki(self) -> None:
        """
        The dev files work together: the proxy gets in as the dev user.
        """
        source = ServerContextSource(
            self.pki.host_cert, self.pki.host_key, self.pki.ca_dir, verify_time=NOW
        )
        creator = ClientConnectionCreator(
            "localhost", client_context(self.pki.user_proxy, None, self.pki.ca_dir, verify_time=NOW)
        )
        r = connect(source, creator)
        self.assertTrue(r.accepted)
        self.assertEqual(
            dn_of_chain(r.server.chain), "/DC=org/DC=lbtwist/OU=Development/CN=lbtwist dev user"
        )

    def test_rerun_replaces(self) -> None:
        before = self.pki.ca_cert.read_bytes()
        again = devcerts.make_dev_pki(self.dir, now=NOW)
        self.assertEqual(again.directory, self.dir)
        self.assertTrue(again.exists())
        self.assertNotEqual(again.ca_cert.read_bytes(), before)


class ServiceDevPKITests(SynchronousTestCase):
    """
    L{devcerts.dev_pki}: the development PKI of a service without host
    credentials, made once under the state directory, its user proxy renewed.
    """

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())

    def proxy_expiry(self, pki: devcerts.DevPKI) -> datetime:
        return x509.load_pem_x509_certificate(pki.user_proxy.read_bytes()).not_valid_after_utc

    def test_made_then_reused(self) -> None:
        pki = devcerts.dev_pki(self.state, self.clock)
        self.assertEqual(pki.directory, self.state / devcerts.DEV_PKI_DIR)
        ca = pki.ca_cert.read_bytes()
        again = devcerts.dev_pki(self.state, self.clock)
        self.assertEqual((again, again.ca_cert.read_bytes()), (pki, ca))

    def test_valid_proxy_kept(self) -> None:
        pki = devcerts.dev_pki(self.state, self.clock)
        proxy = pki.user_proxy.read_bytes()
        self.clock.advance(timedelta(hours=10).total_seconds())
        devcerts.dev_pki(self.state, self.clock)
        self.assertEqual(pki.user_proxy.read_bytes(), proxy)

    def test_expiring_proxy_renewed(self) -> None:
        """
        A user proxy that expires within the hour is replaced by one valid for
        12 hours from now, issued by the same user; the CA stays.
        """
        pki = devcerts.dev_pki(self.state, self.clock)
        ca = pki.ca_cert.read_bytes()
        self.clock.advance(timedelta(hours=11, minutes=30).total_seconds())
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        devcerts.dev_pki(self.state, self.clock)
        self.assertEqual(self.proxy_expiry(pki), (now + timedelta(hours=12)).replace(microsecond=0))
        chain = x509.load_pem_x509_certificates(pki.user_proxy.read_bytes())
        self.assertTrue(is_proxy(chain[0]))
        self.assertEqual(chain[1], x509.load_pem_x509_certificate(pki.user_cert.read_bytes()))
        self.assertEqual(stat.S_IMODE(pki.user_proxy.stat().st_mode), 0o600)
        self.assertEqual(pki.ca_cert.read_bytes(), ca)

    def test_unreadable_proxy_renewed(self) -> None:
        pki = devcerts.dev_pki(self.state, self.clock)
        pki.user_proxy.write_bytes(b"not a certificate")
        devcerts.dev_pki(self.state, self.clock)
        self.assertTrue(is_proxy(x509.load_pem_x509_certificate(pki.user_proxy.read_bytes())))


class MainTests(SynchronousTestCase):
    def test_main(self) -> None:
        out = io.StringIO()
        d = self.mktemp()
        self.assertEqual(devcerts.main_certs_dev([d], now=NOW, out=out), 0)
        text = out.getvalue()
        self.assertIn("user proxy: ", text)
        self.assertIn("x509up", text)
        self.assertIn("CA directory (X509_CERT_DIR): ", text)
        self.assertTrue(devcerts.make_dev_pki(d, now=NOW).exists())

    def test_usage(self) -> None:
        for argv in ([], ["a", "b"], ["--help"]):
            err = io.StringIO()
            self.assertEqual(devcerts.main_certs_dev(argv, now=NOW, err=err), 2)
            self.assertIn("usage: lbtwist certs dev DIR", err.getvalue())

    def test_unwritable(self) -> None:
        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        err = io.StringIO()
        self.assertEqual(devcerts.main_certs_dev([str(blocker)], now=NOW, err=err), 1)
        self.assertIn("lbtwist certs dev: ", err.getvalue())
        self.assertEqual(err.getvalue().count("\n"), 1)


class RenewTests(SynchronousTestCase):
    """
    RSA keys; C{lbtwist certs dev} on an existing directory renews the CRL and the
    proxy and keeps the rest; C{lbtwist certs proxy} renews the proxy.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.pki = devcerts.make_dev_pki(self.dir, now=NOW)

    def test_keys_are_rsa(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        for path in (self.pki.user_key, self.pki.host_key, self.pki.ca_key, self.pki.user2_key):
            key = serialization.load_pem_private_key(path.read_bytes(), None)
            self.assertIsInstance(key, rsa.RSAPrivateKey)

    def test_certs_dev_again_renews_crl_and_proxy(self) -> None:
        later = NOW + timedelta(days=40)
        user_cert = self.pki.user_cert.read_bytes()
        out = io.StringIO()
        self.assertEqual(devcerts.main_certs_dev([self.dir], now=later, out=out), 0)
        self.assertIn("renewed", out.getvalue())
        self.assertEqual(self.pki.user_cert.read_bytes(), user_cert)
        crl = x509.load_pem_x509_crl(self.pki.crl.read_bytes())
        assert crl.next_update_utc is not None
        self.assertGreater(crl.next_update_utc, later)
        proxy = x509.load_pem_x509_certificate(self.pki.user_proxy.read_bytes())
        self.assertGreater(proxy.not_valid_after_utc, later)

    def test_certs_proxy_hours(self) -> None:
        later = NOW + timedelta(days=2)
        out, err = io.StringIO(), io.StringIO()
        status = devcerts.main_certs_proxy(self.dir, hours=48, now=later, out=out, err=err)
        self.assertEqual(status, 0, err.getvalue())
        proxy = x509.load_pem_x509_certificate(self.pki.user_proxy.read_bytes())
        self.assertEqual(proxy.not_valid_after_utc, later + timedelta(hours=48))

    def test_certs_proxy_without_pki(self) -> None:
        err = io.StringIO()
        self.assertEqual(devcerts.main_certs_proxy(self.mktemp(), err=err), 1)
        self.assertIn("lbtwist certs dev", err.getvalue())
        self.assertEqual(devcerts.main_certs_proxy(self.dir, hours=0, err=err), 2)

    def test_cli(self) -> None:
        from lbtwist.cli.main import run
        from tests.unit.test_client import cli_ctx

        ctx = cli_ctx()
        self.assertEqual(run(["certs", "proxy", self.dir, "--hours", "2"], ctx), 0)
        self.assertIn("valid 2 h", ctx.stdout.getvalue())
