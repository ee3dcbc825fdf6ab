# -*- test-case-name: tests.e2e.test_limits -*-
"""
End-to-end tests of the bounded TLS ports: real C{twistd lbserver} and
C{lbproxy} processes, real sockets on loopback, the development PKI.

- 300 bare TCP connections held on the server's store port do not stop a
  relay from delivering.
- Slowloris connections (a few bytes of a TLS record, then silence) on the
  query port of a service limited to 256 descriptors do not stop a real
  C{lbtwist status}; the access log names the caller's DN.
- A 20 KB header gets 431 and a close.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security.devcerts import USER_NAME
from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.harness import E2ECase, free_port, wait_for
from tests.e2e.test_relay import ACTIONS, LB_HOST, DevPKICase, query

#: Bare connections held on a port.
FLOOD = 300
#: Seconds the relay gets to deliver past the flood.
DELIVERY_TIMEOUT = 30.0
#: Descriptors of the service under the slowloris test.
FD_LIMIT = 256
#: Bytes of a TLS handshake record header: what a slowloris client sends, then waits.
TLS_RECORD_START = b"\x16\x03\x01\x02\x00"


def hold_connections(
    case: SynchronousTestCase, port: int, count: int, data: bytes = b""
) -> list[socket.socket]:
    """
    Open C{count} TCP connections to C{port}, send C{data} on each, keep them
    open until the test ends.
    """
    held: list[socket.socket] = []

    def close_all() -> None:
        for s in held:
            s.close()

    case.addCleanup(close_all)
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue  # closed by the server at once: that is its right
        held.append(s)
        if data:
            try:
                s.sendall(data)
            except OSError:
                pass
    return held


class StorePortFloodTests(DevPKICase):
    def setUp(self) -> None:
        super().setUp()
        self.start_pair(
            harness.server_args(self.creds, LB_HOST, self.store_port, self.write_policy(ACTIONS)),
            harness.proxy_args(self.creds, {f"{LB_HOST}:9001": self.store_port}),
        )

    def lines(self, db: str) -> list[str]:
        return [str(r[0]) for r in query(db, "SELECT line FROM events ORDER BY id")]

    def test_bare_connections_do_not_lock_out_the_relay(self) -> None:
        hold_connections(self, self.store_port, FLOOD)
        lines = []
        for n in range(5):
            jobid = f"https://{LB_HOST}:9000/e2eLimitsJob{n:06d}"
            wms, cream = harness.wms_job_trace(
                jobid, harness.cream_jobid(n), harness.T0 + n * 10_000_000
            )
            lines += wms + cream
        self.log(lines)
        # A second flood while the relay's connection is up does not cut it.
        hold_connections(self, self.store_port, FLOOD)

        def delivered() -> bool:
            proxy = self.lines(self.proxy.db_path)
            return len(proxy) >= len(lines) and self.lines(self.server.db_path) == proxy

        try:
            wait_for("the relay to deliver", delivered, timeout=DELIVERY_TIMEOUT)
        except AssertionError:
            raise AssertionError(
                f"server has {len(self.lines(self.server.db_path))} of"
                f" {len(self.lines(self.proxy.db_path))} events\n"
                f"SERVER LOG\n{self.server.log_text()[-4000:]}"
            ) from None
        log = self.server.log_text()
        self.assertIn("store port: connection from 127.0.0.1:", log)
        self.assertIn(f'DN "{self.host_dn}"', log)
        self.assertIn("(max-handshakes-per-address)", log)


class QueryPortTests(E2ECase):
    """
    A proxy on the development PKI, its query port on a free loopback port,
    run with at most L{FD_LIMIT} descriptors.
    """

    def setUp(self) -> None:
        self.port = free_port()
        self.svc = harness.LBService(
            os.path.abspath(self.mktemp()), ["--query", f"tcp:{self.port}:interface=127.0.0.1"]
        )
        self.addCleanup(self.svc.cleanup)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The child inherits the limit; this process gets its own back at once.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, soft), hard))
        try:
            self.svc.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        harness.wait_for_port(self.port, self.svc)
        devcerts = Path(self.svc.state_dir) / "devcerts"
        self.proxy_file = devcerts / "user" / "x509up"
        self.ca_dir = devcerts / "certificates"
        self.env = {
            "X509_USER_PROXY": str(self.proxy_file),
            "X509_CERT_DIR": str(self.ca_dir),
            "GLITE_WMS_QUERY_SERVER": "",
            "EDG_WL_QUERY_SERVER": "",
        }

    def test_slowloris_does_not_stop_status(self) -> None:
        owner = slash_dn(USER_NAME)
        jobid = f"https://localhost:{self.port}/e2eLimits00000001"
        reg = harness.run_lbtwist(
            ["job-reg", "-X", self.svc.socket_path, "-j", jobid, "-U", owner], env=self.env
        )
        self.assertEqual(reg.returncode, 0, reg.stderr)
        hold_connections(self, self.port, FLOOD + 50, TLS_RECORD_START)
        result = harness.run_lbtwist(["status", jobid], env=self.env, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr + self.svc.log_text()[-3000:])
        self.assertEqual(harness.parse_status_text(result.stdout)["owner"], owner)
        self.assertIn("closing the oldest connection in the TLS handshake", self.svc.log_text())
        access = Path(self.svc.state_dir) / "query-access.log"

        def logged() -> bool:
            return access.exists() and f'"{owner}"' in access.read_text()

        wait_for("the access log line with the DN", logged, timeout=10)

    def test_big_header_gets_431_and_close(self) -> None:
        ctx = ssl.create_default_context(capath=str(self.ca_dir))
        ctx.load_cert_chain(str(self.proxy_file))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"x" * 20_000 + b"\r\n\r\n"
            )
            answer = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not chunk:
                    break
                answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:200])
        self.assertIn(b'"error": 431', answer)
