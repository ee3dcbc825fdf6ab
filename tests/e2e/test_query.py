# -*- test-case-name: tests.e2e.test_query -*-
"""
End-to-end tests of the HTTPS query service with the real grid tools: a CA
kept by C{openssl ca} (with its CRL) in the hashed layout, RFC 3820 proxies
from C{grid-proxy-init}, VOMS and expired proxies from C{voms-proxy-fake},
C{curl} and C{lbtwist status/log/jobs} against C{twistd -n lbproxy}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.e2e import gridtools, harness
from tests.e2e.gridtools import Cert, OpenSSLCA, curl, curl_status
from tests.e2e.harness import E2ECase, LBService, free_port, parse_status_text, run_lbtwist

BASE_DN = "/DC=org/DC=lbtwist-e2e"
CA_DN = f"{BASE_DN}/CN=lbtwist e2e CA"
ALICE = f"{BASE_DN}/OU=People/CN=Alice Owner"
BOB = f"{BASE_DN}/OU=People/CN=Bob Other"
ADMIN = f"{BASE_DN}/OU=People/CN=Ada Admin"
CAROL = f"{BASE_DN}/OU=People/CN=Carol Revoked"
DAVE = f"{BASE_DN}/OU=People/CN=Dave Voms"
HOST = f"{BASE_DN}/OU=Hosts/CN=localhost"
VOMS_HOST = f"{BASE_DN}/OU=Hosts/CN=voms.lbtwist-e2e.org"
VO = "testvo"
FQAN = "/testvo/Role=NULL/Capability=NULL"

#: curl's exit codes for a handshake or a connection the server broke off.
CURL_TLS_REFUSED = (35, 56)


def unique(n: int) -> str:
    return f"e2eQuery{n:014d}"


class GridPKI:
    """
    The grid side of the tests: CA, host, VOMS server, users and proxies.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca_dir = base / "certificates"
        self.voms_dir = base / "vomsdir"
        self.ca = OpenSSLCA(base / "ca", self.ca_dir, CA_DN)
        self.host = self.ca.issue("host", HOST, host=True)
        self.voms_host = self.ca.issue("voms", VOMS_HOST, host=True)
        gridtools.write_lsc(self.voms_dir, VO, "voms.lbtwist-e2e.org", self.voms_host, self.ca)
        self.users: dict[str, Cert] = {}
        for name, dn in (("alice", ALICE), ("bob", BOB), ("admin", ADMIN), ("dave", DAVE)):
            self.users[name] = self.ca.issue(name, dn)

    def proxy(self, name: str) -> Path:
        """
        A fresh RFC 3820 proxy from C{grid-proxy-init}.
        """
        return gridtools.grid_proxy_init(
            self.users[name], self.base / f"{name}.proxy", ca_dir=self.ca_dir
        )

    def voms_proxy(self, name: str) -> Path:
        return gridtools.voms_proxy_fake(
            self.users[name],
            self.base / f"{name}.voms",
            voms_host=self.voms_host,
            ca_dir=self.ca_dir,
            vo=VO,
            fqans=[FQAN],
            uri="voms.lbtwist-e2e.org:15000",
        )

    def expired_proxy(self, name: str) -> Path:
        """
        A proxy valid from 3 hours ago for 1 hour (C{voms-proxy-fake
        -pastproxy}: C{grid-proxy-init} cannot backdate).
        """
        return gridtools.voms_proxy_fake(
            self.users[name],
            self.base / f"{name}.expired",
            voms_host=self.voms_host,
            ca_dir=self.ca_dir,
            vo=VO,
            fqans=[],
            uri="",
            hours=1,
            past="3:00",
        )


def skip_without_tools() -> None:
    """
    @raise SkipTest: a grid tool the tests run is not installed.
    """
    missing = gridtools.missing_tools()
    if missing:
        raise SkipTest(f"grid tools not installed: {', '.join(missing)}")


class GridServiceCase(E2ECase):
    """
    A proxy whose query port serves the host certificate of a grid PKI
    (L{GridPKI}, or C{pki_class}) and trusts its CA and VOMS server.
    """

    pki_class: type[GridPKI] = GridPKI

    def make_grid(self, prefix: str) -> None:
        """
        The PKI in a new temporary directory (C{self.base}, named from
        C{prefix}, removed at the end) and a free query port (C{self.port}).

        @raise SkipTest: the grid tools are not installed.
        """
        skip_without_tools()
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.pki = self.pki_class(self.base)
        self.port = free_port()

    def start_service(self, *extra: str) -> None:
        """
        Start C{self.svc} on the PKI (stopped at the end), with options C{extra} too.
        """
        self.svc = LBService(
            str(self.base / "svc"),
            [
                *("--query", harness.loopback(self.port)),
                *("--cert", str(self.pki.host.cert), "--key", str(self.pki.host.key)),
                *("--ca-dir", str(self.pki.ca_dir), "--voms-dir", str(self.pki.voms_dir)),
                *extra,
            ],
        )
        self.addCleanup(self.svc.cleanup)
        self.svc.start()

    def wait_for_port(self) -> None:
        harness.wait_for_port(self.port, self.svc)

    def lbtwist(self, *args: str, proxy: Path | None = None) -> Any:
        """
        Run C{lbtwist} with C{proxy} (none by default), trusting the PKI's CA,
        no query server from the environment.
        """
        env = {"X509_CERT_DIR": str(self.pki.ca_dir), "GLITE_WMS_QUERY_SERVER": ""}
        env["X509_USER_PROXY"] = str(proxy) if proxy else "/nonexistent/proxy"
        env["EDG_WL_QUERY_SERVER"] = ""
        env["HOME"] = str(self.base)
        return run_lbtwist(args, env=env)


class QueryServiceTests(GridServiceCase):
    """
    Who may read what, over curl and C{lbtwist}, with grid-tool credentials.
    """

    def setUp(self) -> None:
        self.make_grid("lbtwist-q-")
        self.start_service("--super-user", ADMIN)
        self.wait_for_port()

    def jobid(self, n: int) -> str:
        return f"https://localhost:{self.port}/{unique(n)}"

    def register(self, jobid: str, owner: str, *extra: str) -> None:
        result = self.lbtwist(
            "job-reg", "-X", self.svc.socket_path, "-j", jobid, "-U", owner, *extra
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def log(self, jobid: str, user: str, event: str, *fields: str) -> None:
        result = self.lbtwist(
            "logevent", "-S", self.svc.socket_path, "-j", jobid, "-U", user, "-s",
            "UserInterface", "-e", event, *fields,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)

    def curl(self, jobid: str, proxy: Path | None) -> tuple[int, str]:
        result = curl(f"https://localhost:{self.port}/{jobid.rsplit('/', 1)[1]}", proxy=proxy,
                      ca_dir=self.pki.ca_dir)  # fmt: skip
        return curl_status(result)

    def assert_one_line_error(self, result: Any, command: str, text: str) -> None:
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertTrue(result.stderr.startswith(f"lbtwist {command}: "), result.stderr)
        self.assertIn(text, result.stderr)

    def test_owner_other_super_user_and_acl(self) -> None:
        """
        The owner reads (200), another user gets 403, the super user reads
        everything, and a ChangeACL granting READ to the other user's DN lets
        them in; C{lbtwist status/log/jobs} agree with curl.
        """
        job_a, job_b = self.jobid(1), self.jobid(2)
        self.register(job_a, ALICE)
        self.register(job_b, BOB)
        alice, bob, admin = (self.pki.proxy(n) for n in ("alice", "bob", "admin"))

        code, body = self.curl(job_a, alice)
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["owner"], ALICE)
        self.assertEqual(self.curl(job_a, bob)[0], 403)
        self.assertEqual(self.curl(job_b, bob)[0], 200)
        self.assertEqual((self.curl(job_a, admin)[0], self.curl(job_b, admin)[0]), (200, 200))

        result = self.lbtwist("status", job_a, proxy=alice)
        self.assertEqual(result.returncode, 0, result.stderr)
        fields = parse_status_text(result.stdout)
        self.assertEqual((fields["state"], fields["owner"]), ("Submitted", ALICE))
        result = self.lbtwist("status", "--json", job_b, proxy=admin)
        self.assertEqual(json.loads(result.stdout)["owner"], BOB)

        result = self.lbtwist("status", job_a, proxy=bob)
        self.assert_one_line_error(result, "status", f"403 not allowed to read job {job_a}")
        missing = self.jobid(3)
        result = self.lbtwist("status", missing, proxy=alice)
        self.assert_one_line_error(result, "status", f"404 no such job {missing}")

        self.log(
            job_a, ALICE, "ChangeACL", f"--user_id={BOB}", "--user_id_type=DN",
            "--permission=READ", "--permission_type=ALLOW", "--operation=ADD",
        )  # fmt: skip
        self.assertEqual(self.curl(job_a, bob)[0], 200)
        result = self.lbtwist("status", job_a, proxy=bob)
        self.assertEqual(result.returncode, 0, result.stderr)

        result = self.lbtwist("log", job_a, proxy=alice)
        self.assertEqual(result.returncode, 0, result.stderr)
        # As glite-lb-job_log: a blank line after each event.
        lines = [line for line in result.stdout.splitlines() if line]
        self.assertEqual(lines[-1], "Found 2 events")
        self.assertIn('DG.EVNT="RegJob"', lines[0])
        self.assertIn('DG.EVNT="ChangeACL"', lines[1])

        result = self.lbtwist("jobs", "--endpoint", f"localhost:{self.port}", proxy=alice)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(job_a, result.stdout)
        self.assertNotIn(job_b, result.stdout)

    def test_cream_id_on_shifted_port(self) -> None:
        """
        A CREAM id on CREAM's port resolves to the proxy's port (+557).
        """
        cream_port = self.port - 557
        if cream_port <= 0:
            raise SkipTest("query port too low for the shift")
        cream_id = f"https://localhost:{cream_port}/CREAM{self.port:09d}"
        self.register(cream_id, ALICE, "-c")
        result = self.lbtwist("status", cream_id, proxy=self.pki.proxy("alice"))
        self.assertEqual(result.returncode, 0, result.stderr + self.svc.log_text()[-3000:])
        self.assertEqual(parse_status_text(result.stdout)["state"], "Submitted")

    def test_no_certificate_and_expired_proxy(self) -> None:
        """
        Without a certificate, or with an expired proxy, the TLS handshake is
        refused; C{lbtwist} says the proxy expired.
        """
        job = self.jobid(4)
        self.register(job, ALICE)
        result = curl(self.jobid(4), proxy=None, ca_dir=self.pki.ca_dir)
        self.assertIn(result.returncode, CURL_TLS_REFUSED, result.stderr)
        expired = self.pki.expired_proxy("alice")
        result = curl(job, proxy=expired, ca_dir=self.pki.ca_dir)
        self.assertIn(result.returncode, CURL_TLS_REFUSED, result.stderr)
        result = self.lbtwist("status", job, proxy=expired)
        self.assert_one_line_error(
            result, "status", f"your proxy certificate has expired ({expired})"
        )
        result = self.lbtwist("status", job)
        self.assert_one_line_error(result, "status", "cannot read certificate /nonexistent/proxy")

    def test_revoked_user(self) -> None:
        """
        Once the CRL in the CA directory revokes a user, their proxy is
        refused at TLS (the service re-reads the directory).
        """
        job = self.jobid(5)
        self.register(job, CAROL)
        carol = self.pki.ca.issue("carol", CAROL)
        self.pki.users["carol"] = carol
        proxy = self.pki.proxy("carol")
        self.assertEqual(self.curl(job, proxy)[0], 200)
        self.pki.ca.revoke(carol)
        result = curl(job, proxy=proxy, ca_dir=self.pki.ca_dir)
        self.assertIn(result.returncode, CURL_TLS_REFUSED, result.stdout + result.stderr)
        result = self.lbtwist("status", job, proxy=proxy)
        self.assert_one_line_error(result, "status", "refused our certificate")
        self.assertIn("revoked", result.stderr)
        # Others are unaffected.
        self.assertEqual(self.curl(job, self.pki.proxy("admin"))[0], 200)

    def test_fqan_acl(self) -> None:
        """
        A ChangeACL entry for an FQAN lets a VOMS proxy (voms-proxy-fake)
        holding it read; the same user without the AC gets 403.
        """
        job = self.jobid(6)
        self.register(job, ALICE)
        self.log(
            job, ALICE, "ChangeACL", f"--user_id={FQAN}", "--user_id_type=FQAN",
            "--permission=READ", "--permission_type=ALLOW", "--operation=ADD",
        )  # fmt: skip
        voms = self.pki.voms_proxy("dave")
        plain = self.pki.proxy("dave")
        code, body = self.curl(job, voms)
        self.assertEqual(code, 200, body + self.svc.log_text()[-3000:])
        self.assertEqual(self.curl(job, plain)[0], 403)
        result = self.lbtwist("status", job, proxy=voms)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(parse_status_text(result.stdout)["owner"], ALICE)


class DevCertificateTests(E2ECase):
    """
    C{twistd -n lbproxy} without certificate options makes a development PKI
    under its state directory; its user proxy works with C{lbtwist status}.
    """

    def test_dev_pki_status(self) -> None:
        from lbtwist.security.devcerts import USER_NAME
        from lbtwist.security.identity import slash_dn

        base = Path(tempfile.mkdtemp(prefix="lbtwist-dev-"))
        self.addCleanup(shutil.rmtree, base, True)
        port = free_port()
        svc = LBService(str(base / "svc"), ["--query", f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(svc.cleanup)
        svc.start()
        harness.wait_for_port(port, svc)
        devcerts = Path(svc.state_dir) / "devcerts"
        env = {
            "X509_USER_PROXY": str(devcerts / "user" / "x509up"),
            "X509_CERT_DIR": str(devcerts / "certificates"),
            "GLITE_WMS_QUERY_SERVER": "",
            "EDG_WL_QUERY_SERVER": "",
        }
        jobid = f"https://localhost:{port}/{unique(7)}"
        owner = slash_dn(USER_NAME)
        reg = run_lbtwist(["job-reg", "-X", svc.socket_path, "-j", jobid, "-U", owner], env=env)
        self.assertEqual(reg.returncode, 0, reg.stderr)
        result = run_lbtwist(["status", jobid], env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(parse_status_text(result.stdout)["owner"], owner)
        other = f"https://localhost:{port}/{unique(8)}"
        result = run_lbtwist(["status", other], env=env)
        self.assertEqual(result.stderr, f"lbtwist status: 404 no such job {other}\n")
