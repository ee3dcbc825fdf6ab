# -*- test-case-name: tests.e2e.test_postgres_notify -*-
"""
Notifications and purge across two real C{twistd lbserver} front ends on one
PostgreSQL database (the private cluster): C{lbtwist notify new} at front end A,
events logged to front end B, C{lbtwist notify receive} from A sees them as they
are stored and resumes from its place at B; C{lbtwist purge -m} at A, and the job
answers 410 at B.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from twisted.trial.unittest import SkipTest

from lbtwist.security.devcerts import make_dev_pki
from tests.e2e import gridtools, harness
from tests.e2e.harness import E2ECase, free_port
from tests.e2e.test_notify import DEV_DN, Receiver, changes, trace_pairs
from tests.e2e.test_relay import RoleService
from tests.integration.pgcluster import cluster

#: Every state's grace zero: whatever is stored is due at once.
ALL_DUE = ["-a", "0", "-n", "0", "-c", "0", "-e", "0", "-o", "0"]


class TwoFrontEndNotifyTests(E2ECase):
    def setUp(self) -> None:
        if "curl" in gridtools.missing_tools() or not _has("curl"):
            raise SkipTest("curl is not installed")
        self.url = cluster().new_database()
        self.base = Path(os.path.abspath(self.mktemp()))
        self.base.mkdir(parents=True)
        self.pki = make_dev_pki(self.base / "pki", now=datetime.now(UTC), hostnames=("localhost",))
        self.home = self.base / "home"
        self.home.mkdir()
        self.fronts = [self.front_end(name) for name in ("a", "b")]
        self.receivers: list[Receiver] = []
        self.addCleanup(lambda: [r.cleanup() for r in self.receivers])

    def front_end(self, name: str) -> tuple[RoleService, int]:
        query = free_port()
        store = free_port()
        service = RoleService(
            str(self.base / name),
            "lbserver",
            [
                "--hostname", "localhost",
                "--cert", str(self.pki.host_cert),
                "--key", str(self.pki.host_key),
                "--ca-dir", str(self.pki.ca_dir),
                "--store", f"tcp:{store}:interface=127.0.0.1",
                "--query", f"tcp:{query}:interface=127.0.0.1",
                "--super-user", DEV_DN,
                "--store-url", self.url,
            ],
            store,
        )  # fmt: skip
        self.addCleanup(service.cleanup)
        service.start()
        harness.wait_for_port(query, service, 30)
        return service, query

    def env(self, port: int) -> dict[str, str]:
        return {
            "X509_USER_PROXY": str(self.pki.user_proxy),
            "X509_CERT_DIR": str(self.pki.ca_dir),
            "GLITE_WMS_NOTIF_SERVER": f"localhost:{port}",
            "GLITE_WMS_QUERY_SERVER": "",
            "EDG_WL_QUERY_SERVER": "",
            "HOME": str(self.home),
        }

    def log(self, service: RoleService, lines: list[str]) -> None:
        sock = harness.connect(service.socket_path)
        try:
            for line in lines:
                sock.sendall(line.encode() + b"\n")
                answer = harness.read_line(sock)
                self.assertTrue(answer.startswith(b"OK"), (answer, line))
        finally:
            sock.close()

    def test_register_at_a_log_at_b_purge_at_a(self) -> None:
        (a, port_a), (b, port_b) = self.fronts
        jobid, lines, pairs = trace_pairs(1, harness.T0)
        expected = [(jobid, s) for s in changes(pairs)]
        made = harness.run_lbtwist(["notify", "new", "-j", jobid, "-c"], env=self.env(port_a))
        self.assertEqual(made.returncode, 0, made.stderr + a.log_text()[-3000:])
        nid = made.stdout.splitlines()[0].split(": ", 1)[1]
        self.assertIn(f"localhost:{port_a}/", nid)
        place = str(self.base / "place.seq")
        first = Receiver(self.base, self.env(port_a), ["-i", "60", "--seq-file", place, nid])
        self.receivers.append(first)
        cut = 7  # Submitted, Waiting, Scheduled
        self.log(b, lines[:cut])
        got = first.wait_for(3)
        self.assertEqual(got, expected[:3], first.errors() + a.log_text()[-3000:])
        self.assertEqual(first.interrupt(), 130)
        # The rest, read from B where A's receiver left off.
        self.log(b, lines[cut:])
        at_b = nid.replace(f"localhost:{port_a}/", f"localhost:{port_b}/")
        second = Receiver(self.base, self.env(port_b), ["-i", "60", "--seq-file", place, at_b])
        self.receivers.append(second)
        got = second.wait_for(len(expected) - 3)
        self.assertEqual(got, expected[3:], second.errors() + b.log_text()[-3000:])
        self.assertEqual(second.interrupt(), 130)

        # The statistics and the trace answer the same at both.
        answers = []
        for port in (port_a, port_b):
            for path in ("stats?state=Submitted&from=0&to=4102444800", f"trace?jobid={jobid}"):
                code, body = gridtools.curl_status(
                    gridtools.curl(
                        f"https://localhost:{port}/{path}",
                        proxy=self.pki.user_proxy,
                        ca_dir=self.pki.ca_dir,
                    )
                )
                self.assertEqual(code, 200, body)
                answers.append(json.loads(body))
        self.assertEqual(answers[:2], answers[2:])
        self.assertEqual(answers[0]["count"], 1)
        self.assertEqual([j["jobid"] for j in answers[1]["jobs"]], [jobid])

        # Purge at A: the job is gone at B (410), its registration refused.
        done = harness.run_lbtwist(
            ["purge", "-m", f"localhost:{port_a}", "--json", *ALL_DUE], env=self.env(port_a)
        )
        self.assertEqual(done.returncode, 0, done.stderr + a.log_text()[-3000:])
        self.assertEqual(json.loads(done.stdout)["jobs"], [jobid])
        url = f"https://localhost:{port_b}/{jobid.rsplit('/', 1)[1]}"
        code, body = gridtools.curl_status(
            gridtools.curl(url, proxy=self.pki.user_proxy, ca_dir=self.pki.ca_dir)
        )
        self.assertEqual(code, 410, body)
        sock = harness.connect(b.socket_path)
        try:
            sock.sendall(lines[0].encode() + b"\n")
            answer = harness.read_line(sock)
        finally:
            sock.close()
        self.assertFalse(answer.startswith(b"OK"), answer)


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None
