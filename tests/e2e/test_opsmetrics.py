# -*- test-case-name: tests.e2e.test_opsmetrics -*-
"""
End-to-end operations tests: a real C{twistd lbproxy} relaying to a real
C{twistd lbserver}; C{/metrics} scraped after logging, C{lbtwist probe} OK then
WARNING once the backlog to a closed port ages, a rejected event re-queued with
C{lbtwist relay retry} and delivered once the server's policy allows it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request
from collections.abc import Sequence

from cryptography import x509

from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.harness import free_port, wait_for
from tests.e2e.test_relay import ACTIONS, LB_HOST, OTHER_HOST, DevPKICase, query


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """
    The value of one sample of a Prometheus text exposition, L{None} if absent.
    """
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, rest = key.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got == want:
            return float(value)
    return None


class OperationsEndToEndTests(DevPKICase):
    def setUp(self) -> None:
        super().setUp()
        self.metrics_port = free_port()

    def start_ops_pair(
        self, actions: Sequence[str] = ACTIONS, proxy_args: Sequence[str] = ()
    ) -> None:
        """
        A server permitting C{actions}, a proxy with C{/metrics} relaying to it
        and to C{OTHER_HOST} on a port nobody listens on; the proxy is ready
        once its metrics port listens.
        """
        policy = self.write_policy(actions)
        server = harness.server_args(
            self.creds, LB_HOST, self.store_port, policy, "--metrics", "none"
        )
        self.query_port = free_port()
        relays = {f"{LB_HOST}:9001": self.store_port, f"{OTHER_HOST}:9001": free_port()}
        proxy = harness.proxy_args(
            self.creds,
            relays,
            *("--metrics", harness.loopback(self.metrics_port)),
            *("--metrics-refresh-interval", "0.2", "--relay-sweep-interval", "0.5"),
            *proxy_args,
            query_port=self.query_port,
        )
        self.start_pair(server, proxy, proxy_port=self.metrics_port)

    def job(self, n: int, host: str = LB_HOST) -> tuple[str, list[str]]:
        jobid = f"https://{host}:9000/e2eOpsJob{n:06d}"
        wms, cream = harness.wms_job_trace(
            jobid, harness.cream_jobid(n), harness.T0 + n * 10_000_000
        )
        return jobid, wms + cream

    def scrape(self, path: str = "/metrics") -> str:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return str(answer.read().decode())

    def outbox_depth(self) -> int:
        rows = query(self.proxy.db_path, "SELECT COUNT(*) FROM outbox")
        return int(str(rows[0][0])) if rows else -1

    def probe(self, *args: str) -> tuple[int, str]:
        result = harness.run_lbtwist(["probe", "-p", str(self.metrics_port), *args])
        return result.returncode, result.stdout.strip()

    def test_metrics_and_probe(self) -> None:
        self.start_ops_pair()
        _, lines = self.job(1)
        self.log(lines)
        wait_for("the relay to drain", lambda: self.outbox_depth() == 0)
        dest = f"{LB_HOST}:9001"

        server = query(self.server.db_path, "SELECT COUNT(*) FROM events")[0][0]
        scraped: list[str] = []

        def delivered() -> bool:
            scraped.append(self.scrape())
            value = metric_value(scraped[-1], "lbtwist_relay_delivered_total", destination=dest)
            return value == server

        try:
            wait_for("the delivered counter", delivered, timeout=20)
        except AssertionError:
            raise AssertionError(f"server has {server} events\n{scraped[-1]}") from None
        text = self.scrape()
        self.assertEqual(
            metric_value(text, "lbtwist_intake_events_total", port="events", result="accepted"),
            len(lines),
        )
        self.assertEqual(
            metric_value(text, "lbtwist_intake_events_total", port="events", result="error"), 0
        )
        self.assertEqual(metric_value(text, "lbtwist_relay_connected", destination=dest), 1)
        self.assertGreater(metric_value(text, "lbtwist_store_size_bytes") or 0, 0)
        # Every logged event went through a commit group, observed once per group.
        self.assertEqual(metric_value(text, "lbtwist_commit_group_events_sum"), len(lines))
        self.assertGreater(metric_value(text, "lbtwist_commit_group_seconds_count") or 0, 0)

        # /health on the metrics listener and, for a client certificate, on the query port.
        # The outbox figures are read every --metrics-refresh-interval.
        wait_for("an empty backlog", lambda: json.loads(self.scrape("/health"))["backlog"] == 0)
        plain = json.loads(self.scrape("/health"))
        self.assertEqual((plain["ok"], plain["backlog"], plain["ca"]["cas"]), (True, 0, 1))
        self.assertEqual([d["destination"] for d in plain["relay"]], [dest])
        context = ssl.create_default_context(capath=str(self.pki.ca_dir))
        context.load_cert_chain(str(self.pki.user_proxy))
        url = f"https://localhost:{self.query_port}/health"
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            self.assertEqual(answer.status, 200)
            self.assertEqual(json.loads(answer.read())["store"]["writable"], True)

        # A client without a certificate: refused, counted by reason.
        bare = ssl.create_default_context(capath=str(self.pki.ca_dir))
        try:
            with socket.create_connection(("127.0.0.1", self.query_port), timeout=10) as raw:
                with bare.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    tls.recv(100)
        except OSError:
            pass
        refusal = (
            "lbtwist_tls_refusals_total",
            {"port": "query", "reason": "no client certificate"},
        )
        wait_for(
            "the refusal counted",
            lambda: metric_value(self.scrape(), refusal[0], **refusal[1]) == 1,
            timeout=20,
        )

        # Nothing waits: OK.
        code, line = self.probe("-w", "2", "-c", "3600")
        self.assertEqual((code, line[:11]), (0, "LBTWIST OK "), line)
        self.assertIn("|backlog_age=0s;2;3600", line)

        # A destination on a closed port: its backlog ages past 2 s, WARNING.
        _, stuck = self.job(2, host=OTHER_HOST)
        self.log(stuck)
        results: list[tuple[int, str]] = []

        def warned() -> bool:
            results.append(self.probe("-w", "2", "-c", "3600"))
            return results[-1][0] == 1

        wait_for("the probe to warn", warned, timeout=60)
        code, line = results[-1]
        self.assertTrue(line.startswith("LBTWIST WARNING - relay backlog of"), line)
        self.assertIn("backlog_age=", line)
        text = self.scrape()
        other = f"{OTHER_HOST}:9001"
        self.assertGreater(
            metric_value(text, "lbtwist_relay_queue_depth", destination=other) or 0, 0
        )
        self.assertGreater(
            metric_value(text, "lbtwist_relay_oldest_pending_seconds", destination=other) or 0, 2
        )
        self.assertEqual(metric_value(text, "lbtwist_relay_connected", destination=other), 0)
        self.assertIn('lbtwist_relay_last_error_info{destination="lb2.example.org:9001"', text)

    def test_rejected_event_retried_after_fix(self) -> None:
        user = x509.load_pem_x509_certificate(self.pki.user_cert.read_bytes())
        self.start_ops_pair(
            actions=("REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_CE_EVENTS"),
            proxy_args=["--super-user", slash_dn(user.subject)],
        )
        jobid, lines = self.job(3)
        tag = harness.foreign_tag(jobid)
        self.log(lines[:8] + [tag] + lines[8:])
        wait_for("the relay to drain", lambda: self.outbox_depth() == 0)
        state = self.proxy.state_dir
        result = harness.run_lbtwist(["relay", "rejected", "--state-dir", state])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"of {jobid} to {LB_HOST}:9001: 600/", result.stdout)
        self.assertIn("1 rejected event\n", result.stdout)
        status = harness.run_lbtwist(["relay", "status", "--state-dir", state])
        self.assertIn(f"{LB_HOST}:9001: 0 waiting, oldest -, 1 rejected", status.stdout)

        # Over HTTPS: the super user sees the same; another DN is refused.
        remote = ["-m", f"localhost:{self.query_port}", "--capath", str(self.pki.ca_dir)]
        user = ["--cert", str(self.pki.user_proxy)]
        result = harness.run_lbtwist(["relay", "rejected", *remote, *user])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"of {jobid} to {LB_HOST}:9001: 600/", result.stdout)
        result = harness.run_lbtwist(["relay", "status", *remote, *user])
        self.assertIn(f"{LB_HOST}:9001: 0 waiting, oldest -, 1 rejected", result.stdout)
        host = ["--cert", str(self.pki.host_cert), "--key", str(self.pki.host_key)]
        result = harness.run_lbtwist(["relay", "retry", "--all", *remote, *host])
        self.assertEqual(result.returncode, 1)
        self.assertIn("403 relay administration needs ADMIN_ACCESS", result.stderr)

        # The cause fixed (the server now lets the host log general events): re-queued.
        self.write_policy(ACTIONS)
        self.server.restart()
        result = harness.run_lbtwist(["relay", "retry", "--state-dir", state, "--all"])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("re-queued 1 rejected event", result.stdout)

        def arrived() -> bool:
            rows = query(self.server.db_path, "SELECT line FROM events")
            return any(str(r[0]) == tag for r in rows)

        wait_for("the re-queued event at the server", arrived)
        self.assertEqual(query(self.proxy.db_path, "SELECT COUNT(*) FROM rejected"), [(0,)])
        with open(os.path.join(state, "relay-admin.log")) as f:
            self.assertIn("re-queued 1 rejected event: all", f.read())
