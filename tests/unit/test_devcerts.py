# -*- test-case-name: tests.unit.test_devcerts -*-
"""
Tests for L{lbtwist.security.devcerts}.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import re
import shutil
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import cms
from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security import devcerts
from lbtwist.security.identity import (
    VOMS_AC_OID,
    VOMS_CERTS_OID,
    VOMS_FQAN_OID,
    dn_of_chain,
    is_proxy,
    slash_dn,
    voms_fqans_why,
)
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


class _ACList(asn1.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _ACFull(asn1.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACList


def _acs(proxy: x509.Certificate) -> list[cms.AttributeCertificateV2]:
    """
    The VOMS ACs of a proxy, read with asn1crypto alone (SEQUENCE OF SEQUENCE OF AC).
    """
    ext = proxy.extensions.get_extension_for_oid(x509.ObjectIdentifier(VOMS_AC_OID))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return [ac for acs in _ACFull.load(ext.value.value) for ac in acs]


_TEMPLATE: list[Path] = []


def dev_pki_copy(directory: str | Path) -> devcerts.DevPKI:
    """
    A development PKI (made at L{NOW}) in C{directory}: a copy of one made once per
    test run (RSA keys take a while).
    """
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="lbtwist-devpki-"))
        atexit.register(shutil.rmtree, template, True)
        devcerts.make_dev_pki(template / "pki", now=NOW)
        _TEMPLATE.append(template / "pki")
    shutil.copytree(_TEMPLATE[0], directory)
    found = devcerts.existing_dev_pki(directory)
    assert found is not None
    return found


class VomsDevTests(SynchronousTestCase):
    """
    The development VOMS server, its vomsdir, and C{lbtwist certs proxy --voms}: proxies
    whose attribute certificates the identity code trusts with the development vomsdir.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.pki = dev_pki_copy(self.dir)
        self.ca = x509.load_pem_x509_certificate(self.pki.ca_cert.read_bytes())

    def proxy(self, *voms: str, hours: float = 12, now: datetime = NOW) -> list[x509.Certificate]:
        out, err = io.StringIO(), io.StringIO()
        status = devcerts.main_certs_proxy(
            self.dir, hours=hours, voms=voms, now=now, out=out, err=err
        )
        self.assertEqual(status, 0, err.getvalue())
        self.output = out.getvalue()
        return x509.load_pem_x509_certificates(self.pki.user_proxy.read_bytes())

    def fqans(self, chain: list[x509.Certificate], now: datetime = NOW) -> tuple[str, ...]:
        fqans, why = voms_fqans_why(chain, voms_dir=self.pki.voms_dir, now=now, ca_certs=[self.ca])
        self.assertIsNone(why)
        return fqans

    def test_voms_server(self) -> None:
        """
        C{make_dev_pki} makes an RSA VOMS server C{voms.<host>} of the development CA and
        the C{.lsc} file of VO C{testvo} that names it and its CA.
        """
        (cert,) = x509.load_pem_x509_certificates(self.pki.voms_cert.read_bytes())
        self.assertEqual(slash_dn(cert.subject), "/DC=org/DC=lbtwist/OU=Hosts/CN=voms.localhost")
        cert.verify_directly_issued_by(self.ca)
        key = serialization.load_pem_private_key(self.pki.voms_key.read_bytes(), None)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.public_key(), cert.public_key())
        self.assertEqual(stat.S_IMODE(self.pki.voms_key.stat().st_mode), 0o600)
        lsc = self.pki.voms_dir / "testvo" / "voms.localhost.lsc"
        self.assertEqual(
            lsc.read_text().splitlines(),
            [slash_dn(cert.subject), "/DC=org/DC=lbtwist/CN=lbtwist development CA"],
        )
        self.assertIn(("VOMS server certificate", self.pki.voms_cert), self.pki.paths())

    def test_voms_proxy_trusted(self) -> None:
        """
        C{--voms testvo:/testvo/Role=admin}: the proxy carries one AC, trusted by the
        identity code with the development vomsdir: the FQAN asked for, then the VO's
        root group, in the full form; the VO, the issuer (the VOMS server, whose
        certificate the AC carries), the holder (the user certificate) and the
        validity (the proxy's) are the VOMS server's.
        """
        later = NOW + timedelta(days=3)
        chain = self.proxy("testvo:/testvo/Role=admin", hours=6, now=later)
        proxy, user = chain
        self.assertEqual(
            self.fqans(chain, later),
            ("/testvo/Role=admin/Capability=NULL", "/testvo/Role=NULL/Capability=NULL"),
        )
        (ac,) = _acs(proxy)
        info = ac["ac_info"]
        (attribute,) = info["attributes"]
        self.assertEqual(attribute["type"].dotted, VOMS_FQAN_OID)
        syntax = cms.IetfAttrSyntax.load(attribute["values"][0].dump())
        self.assertEqual(syntax["policy_authority"].native, ["testvo://voms.localhost:15000"])
        voms = x509.load_pem_x509_certificate(self.pki.voms_cert.read_bytes())
        self.assertEqual(
            info["issuer"].chosen["issuer_name"][0].chosen.native["common_name"],
            "voms.localhost",
        )
        self.assertEqual(info["holder"]["base_certificate_id"]["serial"].native, user.serial_number)
        period = info["att_cert_validity_period"]
        self.assertEqual(period["not_before_time"].native, proxy.not_valid_before_utc)
        self.assertEqual(period["not_after_time"].native, proxy.not_valid_after_utc)
        self.assertEqual(proxy.not_valid_after_utc, later + timedelta(hours=6))
        self.assertEqual(ac["signature_algorithm"]["algorithm"].native, "sha256_rsa")
        voms.public_key().verify(  # type: ignore[call-arg,union-attr]
            ac["signature"].native,
            info.dump(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        ids = [e["extn_id"].dotted for e in info["extensions"]]
        self.assertEqual(ids, [VOMS_CERTS_OID, "2.5.29.56", "2.5.29.35"])
        ext = proxy.extensions.get_extension_for_oid(x509.ObjectIdentifier(VOMS_AC_OID))
        self.assertFalse(ext.critical)
        self.assertIn(
            "VOMS attributes of VO testvo: /testvo/Role=admin/Capability=NULL", self.output
        )
        self.assertIn(f"X509_VOMS_DIR): {self.pki.voms_dir}", self.output)
        self.assertIsInstance(
            serialization.load_pem_private_key(self.pki.user_proxy.read_bytes(), None),
            rsa.RSAPrivateKey,
        )

    def test_forms(self) -> None:
        """
        C{VO} alone is the VO's root group; groups and a role are written in full.
        """
        for text, wanted in [
            ("testvo", ("testvo", "/testvo/Role=NULL/Capability=NULL")),
            ("testvo:/testvo", ("testvo", "/testvo/Role=NULL/Capability=NULL")),
            ("testvo:/testvo/Role=NULL", ("testvo", "/testvo/Role=NULL/Capability=NULL")),
            ("testvo:/testvo/g1", ("testvo", "/testvo/g1/Role=NULL/Capability=NULL")),
            (
                "testvo:/testvo/g1/g-2/Role=pilot",
                ("testvo", "/testvo/g1/g-2/Role=pilot/Capability=NULL"),
            ),
            (
                "vo.example.org:/vo.example.org/Role=lcgadmin",
                ("vo.example.org", "/vo.example.org/Role=lcgadmin/Capability=NULL"),
            ),
            ("testvo:/testvo/Role=r/Capability=c", ("testvo", "/testvo/Role=r/Capability=c")),
        ]:
            self.assertEqual(devcerts.parse_voms_request(text), wanted, text)

    def test_wrong_spellings_refused(self) -> None:
        """
        A malformed C{--voms} value is one usage line (status 2) naming it, and the proxy
        is left as it was.
        """
        before = self.pki.user_proxy.read_bytes()
        for bad in [
            "",
            "testvo:",
            "/testvo",
            "test vo",
            "testvo:testvo/g1",
            "testvo:/othervo/g1",
            "testvo:/TestVO",
            "testvo:/testvo/role=admin",
            "testvo:/testvo/Role=",
            "testvo:/testvo/Role=admin/g1",
            "testvo:/testvo//g1",
            "testvo:/testvo/g1/",
            "testvo:/testvo/Capability=c/Role=r",
        ]:
            err = io.StringIO()
            status = devcerts.main_certs_proxy(
                self.dir, voms=["testvo", bad], now=NOW, out=io.StringIO(), err=err
            )
            self.assertEqual(status, 2, bad)
            self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
            self.assertIn(f"--voms {bad!r}", err.getvalue())
            self.assertRaises(ValueError, devcerts.parse_voms_request, bad)
        self.assertEqual(self.pki.user_proxy.read_bytes(), before)

    def test_several_vos(self) -> None:
        """
        One AC per VO, in order, each VO's FQANs in order without repeats; every VO
        gets its C{.lsc} file.
        """
        chain = self.proxy(
            "testvo:/testvo/g1", "othervo", "testvo:/testvo/Role=admin", "testvo:/testvo/g1"
        )
        self.assertEqual(len(_acs(chain[0])), 2)
        self.assertEqual(
            self.fqans(chain),
            (
                "/testvo/g1/Role=NULL/Capability=NULL",
                "/testvo/Role=admin/Capability=NULL",
                "/testvo/Role=NULL/Capability=NULL",
                "/othervo/Role=NULL/Capability=NULL",
            ),
        )
        self.assertTrue((self.pki.voms_dir / "othervo" / "voms.localhost.lsc").exists())

    def test_untrusted_elsewhere(self) -> None:
        """
        Without the development vomsdir's C{.lsc} file, or with another CA, the
        attributes are not trusted.
        """
        chain = self.proxy("testvo:/testvo/Role=admin")
        (self.pki.voms_dir / "testvo" / "voms.localhost.lsc").unlink()
        fqans, why = voms_fqans_why(chain, voms_dir=self.pki.voms_dir, now=NOW, ca_certs=[self.ca])
        self.assertEqual(fqans, ())
        self.assertIn("no .lsc file of VO 'testvo'", str(why))
        chain = self.proxy("testvo:/testvo/Role=admin")
        other, _ = devcerts.make_ca(now=NOW)
        fqans, why = voms_fqans_why(chain, voms_dir=self.pki.voms_dir, now=NOW, ca_certs=[other])
        self.assertEqual(fqans, ())
        self.assertIsNotNone(why)

    def test_without_voms_plain_proxy(self) -> None:
        proxy, _ = self.proxy()
        self.assertRaises(
            x509.ExtensionNotFound,
            proxy.extensions.get_extension_for_oid,
            x509.ObjectIdentifier(VOMS_AC_OID),
        )
        self.assertNotIn("VOMS", self.output)

    def test_cli(self) -> None:
        from lbtwist.cli.main import run
        from tests.unit.test_client import cli_ctx

        ctx = cli_ctx()
        args = ["certs", "proxy", self.dir, "--voms", "testvo:/testvo/Role=admin", "--voms", "x"]
        self.assertEqual(run(args, ctx), 0, ctx.stderr.getvalue())
        self.assertIn(
            "VOMS attributes of VO x: /x/Role=NULL/Capability=NULL", ctx.stdout.getvalue()
        )
        ctx = cli_ctx()
        self.assertEqual(run(["certs", "proxy", self.dir, "--voms", "testvo:/x"], ctx), 2)
        self.assertEqual(ctx.stderr.getvalue().count("\n"), 1)


class OlderDirectoryTests(SynchronousTestCase):
    """
    A development directory made by an older version (no VOMS server, certificates
    without a subject key identifier) is completed in place, its CA and keys kept.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.pki = dev_pki_copy(self.dir)
        shutil.rmtree(self.dir / "voms")
        shutil.rmtree(self.pki.voms_dir)
        self.ca = self.pki.ca_cert.read_bytes()

    def assertCompleted(self, pki: devcerts.DevPKI | None) -> None:
        assert pki is not None
        self.assertTrue(pki.has_voms_server())
        self.assertTrue((pki.voms_dir / "testvo" / "voms.localhost.lsc").exists())
        self.assertEqual(pki.ca_cert.read_bytes(), self.ca)

    def test_found(self) -> None:
        found = devcerts.existing_dev_pki(self.dir)
        assert found is not None
        self.assertFalse(found.has_voms_server())

    def test_certs_dev(self) -> None:
        out = io.StringIO()
        self.assertEqual(devcerts.main_certs_dev([str(self.dir)], now=NOW, out=out), 0)
        self.assertIn("renewed: VOMS server certificate (new)", out.getvalue())
        self.assertCompleted(devcerts.existing_dev_pki(self.dir))

    def test_certs_proxy_voms(self) -> None:
        out = io.StringIO()
        status = devcerts.main_certs_proxy(
            str(self.dir), voms=["testvo"], now=NOW, out=out, err=io.StringIO()
        )
        self.assertEqual(status, 0)
        self.assertIn("added the development VOMS server", out.getvalue())
        self.assertCompleted(devcerts.existing_dev_pki(self.dir))

    def test_service(self) -> None:
        state = Path(self.mktemp())
        shutil.copytree(self.dir, state / devcerts.DEV_PKI_DIR)
        self.dir = state / devcerts.DEV_PKI_DIR
        clock = Clock()
        clock.advance(NOW.timestamp())
        self.assertCompleted(devcerts.dev_pki(state, clock))

    def test_key_identifiers(self) -> None:
        """
        C{lbtwist certs dev} gives a user certificate without a subject key identifier
        (the VOMS tools refuse it) one, same subject and key, and leaves current ones.
        """
        user = x509.load_pem_x509_certificate(self.pki.user_cert.read_bytes())
        host = self.pki.host_cert.read_bytes()
        ca_key = serialization.load_pem_private_key(self.pki.ca_key.read_bytes(), None)
        builder = (
            x509.CertificateBuilder()
            .subject_name(user.subject)
            .issuer_name(user.issuer)
            .public_key(user.public_key())  # type: ignore[arg-type]
            .serial_number(5)
            .not_valid_before(user.not_valid_before_utc)
            .not_valid_after(user.not_valid_after_utc)
        )
        old = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        self.pki.user_cert.write_bytes(old.public_bytes(serialization.Encoding.PEM))
        out = io.StringIO()
        self.assertEqual(devcerts.main_certs_dev([str(self.dir)], now=NOW, out=out), 0)
        self.assertIn("renewed: user certificate", out.getvalue())
        new = x509.load_pem_x509_certificate(self.pki.user_cert.read_bytes())
        self.assertEqual((new.subject, new.public_key()), (user.subject, user.public_key()))
        ski = new.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(new.public_key()))  # type: ignore[arg-type]
        self.assertEqual(self.pki.host_cert.read_bytes(), host)
        proxy, user_again = x509.load_pem_x509_certificates(self.pki.user_proxy.read_bytes())
        self.assertEqual(user_again, new)
