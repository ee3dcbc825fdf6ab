# -*- test-case-name: tests.e2e.test_store_authz -*-
"""
End-to-end tests of who may write what: a real C{twistd lbserver} store port
over TLS on loopback, two users with certificates of one C{openssl ca} (read
back over HTTPS with C{curl}), and C{lbtwist job-reg -E} against a real
C{twistd lbproxy}.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from lbtwist.core import ilproto
from tests.e2e import gridtools, harness
from tests.e2e.gridtools import OpenSSLCA
from tests.e2e.harness import E2ECase, free_port
from tests.e2e.test_relay import RoleService

BASE_DN = "/DC=org/DC=lbtwist-e2e"
CA_DN = f"{BASE_DN}/CN=lbtwist e2e CA"
ALICE = f"{BASE_DN}/OU=People/CN=Alice Owner"
BOB = f"{BASE_DN}/OU=People/CN=Bob Attacker"
HOST = f"{BASE_DN}/OU=Hosts/CN=localhost"

#: Seconds to wait for one reply of the store port.
REPLY_TIMEOUT = 30.0


def seqcode(ui: int) -> str:
    return harness.glite_seqcode(UI=ui, NS=1)


def event(kind: str, jobid: str, user: str, n: int, **fields: str) -> str:
    return harness.ulm_line(
        kind,
        jobid=jobid,
        date=harness.T0 + n * 1_000_000,
        source="UserInterface",
        seqcode=seqcode(n + 1),
        user=user,
        host="ui.lbtwist-e2e.org",
        **fields,
    )


def regjob(jobid: str, user: str, n: int) -> str:
    return event(
        "RegJob", jobid, user, n, ns="https://wms.lbtwist-e2e.org:7443/wmproxy", jobtype="SIMPLE"
    )


class StorePortAuthorizationTests(E2ECase):
    """
    User A registers a job at the store port; user B, another certificate of
    the same CA, tries to take it over: every attempt is answered 600 (PERM)
    and A still owns and reads the job.
    """

    def setUp(self) -> None:
        missing = [tool for tool in ("openssl", "curl") if shutil.which(tool) is None]
        if missing:
            raise SkipTest(f"not installed: {', '.join(missing)}")
        self.base = Path(tempfile.mkdtemp(prefix="lbtwist-authz-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.ca_dir = self.base / "certificates"
        ca = OpenSSLCA(self.base / "ca", self.ca_dir, CA_DN)
        host = ca.issue("host", HOST, host=True)
        # Each user's certificate and key in one file, as a proxy file is.
        self.credentials: dict[str, Path] = {}
        for name, dn in (("alice", ALICE), ("bob", BOB)):
            cert = ca.issue(name, dn)
            path = self.base / f"{name}.pem"
            path.write_bytes(cert.cert.read_bytes() + cert.key.read_bytes())
            path.chmod(0o600)
            self.credentials[name] = path
        self.store_port, self.query_port = free_port(), free_port()
        # No policy file: closed, only owners and super users may log.
        self.server = RoleService(
            str(self.base / "server"),
            "lbserver",
            [
                "--cert", str(host.cert), "--key", str(host.key), "--ca-dir", str(self.ca_dir),
                "--hostname", "localhost",
                "--store", f"tcp:{self.store_port}:interface=127.0.0.1",
                "--query", f"tcp:{self.query_port}:interface=127.0.0.1",
            ],
            self.store_port,
        )  # fmt: skip
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.jobid = f"https://localhost:{self.query_port}/e2eAuthzJob000000000001"

    def connect(self, name: str) -> ssl.SSLSocket:
        """
        A TLS connection to the store port with the user's certificate.
        """
        context = ssl.create_default_context(capath=str(self.ca_dir))
        pem = str(self.credentials[name])
        context.load_cert_chain(pem, pem)
        raw = socket.create_connection(("127.0.0.1", self.store_port), timeout=REPLY_TIMEOUT)
        sock = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def send(self, sock: ssl.SSLSocket, line: str) -> ilproto.ILReply:
        sock.sendall(harness.il_frame(line))
        reply = harness.il_read_reply(sock)
        assert reply is not None, "the store port closed the connection"
        return reply

    def status(self, name: str) -> tuple[int, str]:
        url = f"https://localhost:{self.query_port}/{self.jobid.rsplit('/', 1)[1]}"
        result = gridtools.curl(url, proxy=self.credentials[name], ca_dir=self.ca_dir)
        return gridtools.curl_status(result)

    def test_other_user_cannot_take_a_job_over(self) -> None:
        alice = self.connect("alice")
        reply = self.send(alice, regjob(self.jobid, ALICE, 0))
        self.assertEqual((reply.major, reply.minor), (0, 0), reply.text)

        bob = self.connect("bob")
        attacks = {
            "Abort": event("Abort", self.jobid, BOB, 1, reason="taken over"),
            "ChangeACL": event(
                "ChangeACL", self.jobid, BOB, 2,
                user_id=BOB, user_id_type="DN", permission="READ",
                permission_type="ALLOW", operation="ADD",
            ),
            "TakePayloadOwnership": event("TakePayloadOwnership", self.jobid, BOB, 3),
            "RegJob": regjob(self.jobid, BOB, 4),
            "RegJob as A": regjob(self.jobid, ALICE, 5),
        }  # fmt: skip
        for name, line in attacks.items():
            reply = self.send(bob, line)
            self.assertEqual(reply.major, ilproto.LB_PERM, (name, reply))
            self.assertIn(BOB, reply.text, name)

        code, body = self.status("alice")
        self.assertEqual(code, 200, body)
        status: dict[str, Any] = json.loads(body)
        self.assertEqual(status["owner"], ALICE)
        self.assertNotEqual(status["state"], "Aborted")
        self.assertEqual(self.status("bob")[0], 403)
        # A still logs on the job.
        reply = self.send(alice, event("UserTag", self.jobid, ALICE, 6, name="ok", value="1"))
        self.assertEqual(reply.major, 0, reply.text)
        log = self.server.log_text()
        self.assertIn("only job owners and super users", log)
        self.assertIn("only the job's owner may change its ACL", log)


class ExclusiveRegistrationTests(E2ECase):
    """
    C{lbtwist job-reg -E} through a proxy's intake socket: a new job registers,
    an existing one fails with a clear message and a non-zero exit.
    """

    def setUp(self) -> None:
        self.proxy = harness.LBService(self.mktemp())
        self.addCleanup(self.proxy.cleanup)
        self.proxy.start()

    def job_reg(self, *args: str) -> Any:
        return harness.run_lbtwist(["job-reg", "-X", self.proxy.socket_path, *args])

    def test_exclusive_registration_of_an_existing_job(self) -> None:
        jobid = "https://lb.example.org:9000/e2eExclusiveJob0000001"
        first = self.job_reg("-E", "-j", jobid, "-U", ALICE)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn(jobid, first.stdout)
        again = self.job_reg("-E", "-j", jobid, "-U", ALICE)
        self.assertNotEqual(again.returncode, 0, again.stdout)
        self.assertEqual(again.stdout, "")
        self.assertIn(f"ERR 17 job {jobid} is already registered", again.stderr)
        # Without -E the owner's registration again is accepted; another owner's is not.
        self.assertEqual(self.job_reg("-j", jobid, "-U", ALICE).returncode, 0)
        other = self.job_reg("-j", jobid, "-U", BOB)
        self.assertNotEqual(other.returncode, 0)
        self.assertIn("registered to another owner", other.stderr)
