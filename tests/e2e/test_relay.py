# -*- test-case-name: tests.e2e.test_relay -*-
"""
End-to-end relay tests: a real C{twistd lbproxy} relaying over TLS on loopback
to a real C{twistd lbserver}, both on temporary state directories, sharing one
development PKI (host certificate for localhost and lb.example.org).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from lbtwist.security.devcerts import make_dev_pki
from tests.e2e import harness
from tests.e2e.harness import E2ECase, free_port, wait_for

LB_HOST = "lb.example.org"
OTHER_HOST = "lb2.example.org"
ACTIONS = ("REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_CE_EVENTS", "LOG_GENERAL_EVENTS")


def query(path: str, sql: str) -> list[tuple[object, ...]]:
    """
    Read a service's store while it runs (WAL: readers do not block it).
    """
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


class RoleService(harness.LBService):
    """
    C{twistd -n lbproxy} or C{lbserver}; ready once the intake socket and, for a
    server, the store port accept connections.
    """

    def __init__(
        self,
        base: str,
        role: str,
        args: Sequence[str],
        tcp_port: int | None,
        twistd_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base, args)
        self.role = role
        self.tcp_port = tcp_port
        #: twistd's own options, before the role (the relay benchmark's profiler).
        self.twistd_args = list(twistd_args)

    def start(self) -> None:
        assert self.process is None, "already running"
        self.starts += 1
        cmd = [
            harness.TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.logfile}",
            *self.twistd_args,
            self.role,
            "--state-dir",
            self.state_dir,
            "--events",
            f"unix:{self.socket_path}:mode=660",
            *self.args,
        ]
        with open(os.path.join(self.base, f"twistd.out.{self.starts}"), "wb") as out:
            self.process = subprocess.Popen(
                cmd, cwd=self.base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + harness.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise harness.ServiceFailed(f"{self.role} exited with {code}\n{self.log_text()}")
            if self._accepts() and self._tcp_accepts():
                return
            time.sleep(0.02)
        self.kill()
        raise harness.ServiceFailed(f"{self.role} did not listen\n{self.log_text()}")

    def _tcp_accepts(self) -> bool:
        return self.tcp_port is None or harness.port_accepts(self.tcp_port)


class DevPKICase(E2ECase):
    """
    Services on one development PKI: a host certificate for C{hostnames}, a
    store port chosen, the proxy (L{RoleService}) set by the test as C{self.proxy}.
    """

    hostnames: tuple[str, ...] = ("localhost", LB_HOST)
    proxy: RoleService
    server: RoleService

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.pki = make_dev_pki(
            os.path.join(self.base, "pki"), now=datetime.now(UTC), hostnames=self.hostnames
        )
        self.host_dn, self.creds = harness.host_credentials(self.pki)
        self.store_port = free_port()

    def write_policy(self, actions: Sequence[str]) -> str:
        """
        C{policy.conf} in the test's directory: C{actions} permitted to the host.

        @return: its path.
        """
        return harness.write_policy(os.path.join(self.base, "policy.conf"), self.host_dn, actions)

    def start_pair(
        self, server: Sequence[str], proxy: Sequence[str], proxy_port: int | None = None
    ) -> None:
        """
        Start C{self.server} (an C{lbserver} with options C{server}) and
        C{self.proxy} (an C{lbproxy} with options C{proxy}), both stopped at the end.

        @param proxy_port: a TCP port the proxy is ready once it listens on.
        """
        self.server = RoleService(
            os.path.join(self.base, "server"), "lbserver", server, self.store_port
        )
        self.proxy = RoleService(os.path.join(self.base, "proxy"), "lbproxy", proxy, proxy_port)
        self.addCleanup(self.proxy.cleanup)
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.proxy.start()

    def log(self, lines: Sequence[str]) -> None:
        """
        Log C{lines} to the proxy's intake, each answered OK.
        """
        sock = harness.connect(self.proxy.socket_path)
        try:
            sock.sendall("".join(line + "\n" for line in lines).encode())
            for line in lines:
                answer = harness.read_line(sock)
                self.assertTrue(answer.startswith(b"OK"), (answer, line))
        finally:
            sock.close()

    def jobs(self, first: int, count: int, host: str = LB_HOST) -> list[tuple[str, list[str]]]:
        """
        C{count} WMS jobs from C{first} on C{host}: (job id, its lines) each.
        """
        out = []
        for n in range(first, first + count):
            jobid = f"https://{host}:9000/e2eRelayJob{n:06d}"
            wms, cream = harness.wms_job_trace(
                jobid, harness.cream_jobid(n), harness.T0 + n * 10_000_000
            )
            out.append((jobid, wms + cream))
        return out


class RelayEndToEndTests(DevPKICase):
    def setUp(self) -> None:
        super().setUp()
        self.unused_port = free_port()

    def start_relay_pair(self, actions: Sequence[str] = ACTIONS) -> None:
        """
        A server permitting C{actions} to the host, a proxy relaying to it and
        to C{OTHER_HOST} on a port nobody listens on.
        """
        self.start_pair(
            harness.server_args(self.creds, LB_HOST, self.store_port, self.write_policy(actions)),
            harness.proxy_args(
                self.creds,
                {f"{LB_HOST}:9001": self.store_port, f"{OTHER_HOST}:9001": self.unused_port},
            ),
        )

    def proxy_lines(self) -> list[str]:
        return [str(r[0]) for r in query(self.proxy.db_path, "SELECT line FROM events ORDER BY id")]

    def server_lines(self) -> list[str]:
        return [
            str(r[0]) for r in query(self.server.db_path, "SELECT line FROM events ORDER BY id")
        ]

    def outbox_depth(self) -> int:
        rows = query(self.proxy.db_path, "SELECT COUNT(*) FROM outbox")
        return int(str(rows[0][0])) if rows else -1

    def wait_delivered(self) -> None:
        def done() -> bool:
            return self.outbox_depth() == 0 and len(self.server_lines()) >= len(self.proxy_lines())

        try:
            wait_for("the relay to finish", done)
        except AssertionError:
            raise AssertionError(
                f"outbox {self.outbox_depth()}, proxy {len(self.proxy_lines())},"
                f" server {len(self.server_lines())}\nPROXY LOG\n{self.proxy.log_text()[-6000:]}"
                f"\nSERVER LOG\n{self.server.log_text()[-6000:]}"
            ) from None

    def logs(self) -> str:
        """
        Both services' twistd logs (all runs), for failure messages.
        """
        parts = []
        for name in ("server", "proxy"):
            service = getattr(self, name, None)
            if service is not None:
                parts.append(f"\n===== {name.upper()} LOG =====\n{service.log_text()}")
        return "".join(parts)

    def with_logs(self, body: Callable[[], None]) -> None:
        """
        Run C{body}; a failure carries both twistd logs.
        """
        try:
            body()
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e}{self.logs()}") from e

    def assert_exactly_once_in_order(self) -> None:
        proxy, server = self.proxy_lines(), self.server_lines()
        duplicates = [ln for ln, n in harness.unique_count(server).items() if n > 1]
        self.assertEqual(duplicates, [], "events stored twice at the server")
        if server != proxy:
            first = next(
                (i for i, (a, b) in enumerate(zip(server, proxy, strict=False)) if a != b),
                min(len(server), len(proxy)),
            )
            raise AssertionError(
                f"server has {len(server)} events, proxy {len(proxy)}; first difference at"
                f" {first}:\nserver: {server[first : first + 3]}\nproxy:  {proxy[first : first + 3]}"
            )

    def test_wms_job_reaches_server(self) -> None:
        self.start_relay_pair()
        [(jobid, lines)] = self.jobs(1, 1)
        self.log(lines)
        self.wait_delivered()
        self.assert_exactly_once_in_order()
        generated = [ln for ln in self.server_lines() if "DG.GENERATED_BY" in ln]
        self.assertEqual(len(generated), 4)
        result = harness.run_lbtwist(["status", "--state-dir", self.server.state_dir, jobid])
        self.assertEqual(result.returncode, 0, result.stderr)
        status = harness.parse_status_text(result.stdout)
        self.assertEqual(status.get("state"), "Done")
        self.assertEqual(status.get("cream_state"), "Done-ok")
        self.assertEqual(status.get("done_code"), "OK")

    def test_server_outages_and_proxy_kill(self) -> None:
        self.with_logs(self._outages_and_kills)

    def _outages_and_kills(self) -> None:
        self.start_relay_pair()
        batches = [self.jobs(100 + 20 * i, 20) for i in range(6)]
        self.log([ln for _, lines in batches[0] for ln in lines])
        self.server.stop()
        self.log([ln for _, lines in batches[1] for ln in lines])
        self.server.start()
        self.log([ln for _, lines in batches[2] for ln in lines])
        # kill -9 while relaying.
        self.proxy.kill()
        self.proxy.start()
        self.server.kill()
        self.log([ln for _, lines in batches[3] for ln in lines])
        self.server.start()
        self.log([ln for _, lines in batches[4] for ln in lines])
        self.proxy.kill()
        self.server.stop()
        self.proxy.start()
        self.log([ln for _, lines in batches[5] for ln in lines])
        time.sleep(0.5)
        self.server.start()
        self.wait_delivered()
        self.assert_exactly_once_in_order()
        jobid = batches[5][-1][0]
        result = harness.run_lbtwist(["status", "--state-dir", self.server.state_dir, jobid])
        self.assertEqual(harness.parse_status_text(result.stdout).get("state"), "Done")

    def test_refused_event_rejected_queue_moves(self) -> None:
        self.start_relay_pair(actions=("REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_CE_EVENTS"))
        [(jobid, lines)] = self.jobs(1, 1)
        tag = harness.foreign_tag(jobid)
        self.log(lines[:8] + [tag] + lines[8:])
        wait_for("the relay to drain", lambda: self.outbox_depth() == 0)
        rejected = query(self.proxy.db_path, "SELECT major, reason FROM rejected")
        self.assertEqual(len(rejected), 1, self.proxy.log_text()[-4000:])
        self.assertEqual(rejected[0][0], 600)
        server = self.server_lines()
        self.assertNotIn(tag, server)
        self.assertEqual(server, [ln for ln in self.proxy_lines() if ln != tag])

    def test_unreachable_destination_does_not_hold_others(self) -> None:
        self.start_relay_pair()
        [(stuck_job, stuck)] = self.jobs(1, 1, host=OTHER_HOST)
        [(jobid, lines)] = self.jobs(2, 1)
        self.log(stuck + lines)
        wait_for(
            "the reachable destination",
            lambda: (
                len(query(self.server.db_path, f"SELECT id FROM events WHERE jobid = '{jobid}'"))
                >= len(lines)
            ),
        )
        # Delivered rows leave the outbox shortly after (acknowledgements are grouped).
        wait_for(
            "the delivered rows to leave the outbox",
            lambda: (
                query(self.proxy.db_path, "SELECT DISTINCT destination FROM outbox")
                == [(f"{OTHER_HOST}:9001",)]
            ),
        )
        pending = query(
            self.proxy.db_path, "SELECT destination, COUNT(*) FROM outbox GROUP BY destination"
        )
        self.assertEqual(pending, [(f"{OTHER_HOST}:9001", len(stuck) + 4)])
        self.assertEqual(
            query(self.server.db_path, f"SELECT id FROM events WHERE jobid = '{stuck_job}'"), []
        )
