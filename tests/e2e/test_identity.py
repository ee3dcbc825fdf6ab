# -*- test-case-name: tests.e2e.test_identity -*-
"""
End-to-end tests of the peer-identity layer with the real grid tools: a CA
kept by C{openssl ca}, a look-alike CA (same DN, other key, not trusted),
VOMS proxies from C{voms-proxy-fake} signed by the genuine VOMS server or by
a look-alike one, against C{twistd lbproxy} (query port, C{curl}) and
C{twistd lbserver} (store port, IL framing over TLS from Python's C{ssl}).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

from tests.e2e import gridtools, harness
from tests.e2e.gridtools import Cert, OpenSSLCA, curl, curl_status
from tests.e2e.harness import E2ECase, free_port, run_lbtwist, wait_for
from tests.e2e.test_query import (
    ALICE,
    CA_DN,
    CURL_TLS_REFUSED,
    DAVE,
    FQAN,
    VO,
    VOMS_HOST,
    GridPKI,
    GridServiceCase,
    skip_without_tools,
)
from tests.e2e.test_relay import RoleService

MALLORY = "/DC=org/DC=lbtwist-e2e/OU=People/CN=Mallory Forger"
VOMS_URI = "voms.lbtwist-e2e.org:15000"


class LookalikePKI(GridPKI):
    """
    The grid PKI of the query tests, plus a look-alike CA (same DN as the
    trusted CA, its own key, published in a directory nobody trusts) with a
    look-alike VOMS server certificate (same DN as the genuine one).
    """

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.twin = OpenSSLCA(base / "twin", base / "untrusted-certificates", CA_DN)
        self.forged_voms = self.twin.issue("forgedvoms", VOMS_HOST, host=True)
        self.users["mallory"] = self.ca.issue("mallory", MALLORY)

    def signed_proxy(self, name: str, voms_host: Cert, tag: str) -> Path:
        """
        A VOMS proxy of user C{name} whose AC C{voms_host} signed.
        """
        return gridtools.voms_proxy_fake(
            self.users[name],
            self.base / f"{name}.{tag}.voms",
            voms_host=voms_host,
            ca_dir=self.ca_dir,
            vo=VO,
            fqans=[FQAN],
            uri=VOMS_URI,
        )

    def forged_proxy(self, name: str) -> Path:
        return self.signed_proxy(name, self.forged_voms, "forged")

    def genuine_proxy(self, name: str) -> Path:
        return self.signed_proxy(name, self.voms_host, "genuine")


class QueryPortIdentityTests(GridServiceCase):
    """
    The query port of C{lbproxy}: FQANs only from VOMS servers the CA
    directory trusts, CRLs of the directory applied, broken CRLs fail closed.
    """

    pki_class = LookalikePKI

    def setUp(self) -> None:
        self.make_grid("lbtwist-id-")
        self.start_service()
        self.wait_for_port()

    def lbtwist_ok(self, *args: str) -> None:
        env = {"X509_CERT_DIR": str(self.pki.ca_dir), "HOME": str(self.base)}
        result = run_lbtwist(args, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)

    def fqan_readable_job(self) -> str:
        """
        A job of Alice's whose ACL lets holders of L{FQAN} read it.
        """
        jobid = f"https://localhost:{self.port}/e2eIdentity00000001"
        sock = ["-S", self.svc.socket_path, "-j", jobid, "-U", ALICE]
        self.lbtwist_ok("job-reg", "-X", *sock[1:])
        self.lbtwist_ok(
            "logevent", *sock, "-s", "UserInterface", "-e", "ChangeACL",
            f"--user_id={FQAN}", "--user_id_type=FQAN", "--permission=READ",
            "--permission_type=ALLOW", "--operation=ADD",
        )  # fmt: skip
        return jobid

    def curl(self, jobid: str, proxy: Path) -> tuple[int, str]:
        return curl_status(curl(jobid, proxy=proxy, ca_dir=self.pki.ca_dir))

    def test_lookalike_and_revoked_voms_server(self) -> None:
        """
        A VOMS proxy signed by the look-alike VOMS server gets no FQANs (403);
        one signed by the genuine server reads (200) until the CRL revokes
        the server's certificate.
        """
        job = self.fqan_readable_job()
        genuine = self.pki.genuine_proxy("dave")
        forged = self.pki.forged_proxy("mallory")
        code, body = self.curl(job, genuine)
        self.assertEqual(code, 200, body + self.svc.log_text()[-3000:])
        self.assertEqual(self.curl(job, forged)[0], 403)
        self.assertIn("not issued by a trusted CA", self.svc.log_text())
        self.assertIn(f"ignoring VOMS attributes of {MALLORY}", self.svc.log_text())
        self.pki.ca.revoke(self.pki.voms_host)
        self.assertEqual(self.curl(job, genuine)[0], 403)
        self.assertIn(f"ignoring VOMS attributes of {DAVE}", self.svc.log_text())
        self.assertIn("revoked", self.svc.log_text())

    def test_corrupt_crl_refuses_until_fixed(self) -> None:
        """
        A corrupt CRL file of the CA: its users' handshakes fail (a critical
        line names the file) until fetch-crl writes a good one again.
        """
        job = f"https://localhost:{self.port}/e2eIdentity00000002"
        proxy = self.pki.proxy("alice")
        self.assertEqual(self.curl(job, proxy)[0], 404)
        crl = self.pki.ca_dir / f"{self.pki.ca.hash}.r0"
        tmp = self.pki.ca_dir / ".broken.tmp"
        tmp.write_text("-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
        os.replace(tmp, crl)
        result = curl(job, proxy=proxy, ca_dir=self.pki.ca_dir)
        self.assertIn(result.returncode, CURL_TLS_REFUSED, result.stdout + result.stderr)
        log = self.svc.log_text()
        self.assertIn(f"CRL {crl}", log)
        self.assertIn("CRL unreadable", log)
        self.assertIn("refusing TLS client 127.0.0.1:", log)
        self.pki.ca.publish_crl()
        self.assertEqual(self.curl(job, proxy)[0], 404)

    def test_handshake_without_certificate_logged(self) -> None:
        result = curl(f"https://localhost:{self.port}/x", proxy=None, ca_dir=self.pki.ca_dir)
        self.assertIn(result.returncode, CURL_TLS_REFUSED, result.stderr)
        wait_for(
            "the refusal line",
            lambda: ": no client certificate" in self.svc.log_text(),
            10,
        )
        lines = [
            line for line in self.svc.log_text().splitlines() if "no client certificate" in line
        ]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("refusing TLS client 127.0.0.1:", lines[0])


class StorePortIdentityTests(E2ECase):
    """
    The store port of C{lbserver} with a policy granting REGISTER_JOBS by
    FQAN: a look-alike VOMS signer registers nothing in anyone's name.
    """

    def setUp(self) -> None:
        skip_without_tools()
        self.base = Path(tempfile.mkdtemp(prefix="lbtwist-ids-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.pki = LookalikePKI(self.base)
        policy = self.base / "policy.conf"
        policy.write_text(
            'resource "LB" {\n'
            f'  action "REGISTER_JOBS" {{ rule permit {{ fqan = "{FQAN}" }} }}\n'
            "}\n"
        )
        self.store_port = free_port()
        self.server = RoleService(
            str(self.base / "server"),
            "lbserver",
            [
                "--cert", str(self.pki.host.cert),
                "--key", str(self.pki.host.key),
                "--ca-dir", str(self.pki.ca_dir),
                "--voms-dir", str(self.pki.voms_dir),
                "--hostname", "localhost",
                "--store", f"tcp:{self.store_port}:interface=127.0.0.1",
                "--query", f"tcp:{free_port()}:interface=127.0.0.1",
                "--policy", str(policy),
            ],
            self.store_port,
        )  # fmt: skip
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def register(self, proxy: Path, n: int) -> tuple[int, str]:
        """
        Send a RegJob of a job owned by Alice over TLS with C{proxy}.

        @return: the IL reply's code and text.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(capath=str(self.pki.ca_dir))
        ctx.load_cert_chain(str(proxy))
        raw = socket.create_connection(("127.0.0.1", self.store_port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            line = harness.ulm_line(
                "RegJob",
                jobid=f"https://localhost:9000/e2eIdentityReg{n:06d}",
                date=harness.T0 + n,
                source="NetworkServer",
                seqcode=harness.glite_seqcode(NS=1),
                user=ALICE,
                host="wms.example.org",
                jobtype="SIMPLE",
                ns="https://wms.example.org:7443/glite_wms_wmproxy_server",
            )
            sock.sendall(harness.il_frame(line))
            reply = harness.il_read_reply(sock)  # type: ignore[arg-type]
        assert reply is not None
        return reply.major, reply.text

    def test_lookalike_voms_signer_registers_nothing(self) -> None:
        code, text = self.register(self.pki.forged_proxy("mallory"), 1)
        self.assertNotEqual(code, 0, text)
        log = self.server.log_text()
        self.assertIn(f"ignoring VOMS attributes of {MALLORY}", log)
        self.assertIn("not issued by a trusted CA", log)
        # The genuine VOMS server's FQAN is what the policy trusts.
        code, text = self.register(self.pki.genuine_proxy("dave"), 2)
        self.assertEqual(code, 0, text + self.server.log_text()[-3000:])
