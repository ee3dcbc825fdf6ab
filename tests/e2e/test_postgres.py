# -*- test-case-name: tests.e2e.test_postgres -*-
"""
Two real C{twistd lbserver} front ends on one PostgreSQL database (a private
cluster, L{tests.integration.pgcluster}), a real C{twistd lbproxy} relaying to both
(two destinations, one per front end), and a C{kill -9} of one front end while
events flow: every event stored once, the jobs' states those of the proxy.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security.devcerts import make_dev_pki
from lbtwist.security.identity import slash_dn
from tests.e2e import test_relay
from tests.e2e.test_relay import LB_HOST, OTHER_HOST, RoleService, free_port, query, wait_for
from tests.integration.pgcluster import cluster


class TwoFrontEndTests(SynchronousTestCase):
    jobs = test_relay.RelayEndToEndTests.jobs
    log = test_relay.RelayEndToEndTests.log
    write_policy = test_relay.RelayEndToEndTests.write_policy

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        # One host certificate for both front ends' names.
        self.pki = make_dev_pki(
            os.path.join(self.base, "pki"),
            now=datetime.now(UTC),
            hostnames=("localhost", LB_HOST, OTHER_HOST),
        )
        cert = x509.load_pem_x509_certificate(self.pki.host_cert.read_bytes())
        self.host_dn = slash_dn(cert.subject)
        self.store_port = free_port()
        self.creds = [
            "--cert",
            str(self.pki.host_cert),
            "--key",
            str(self.pki.host_key),
            "--ca-dir",
            str(self.pki.ca_dir),
        ]

    def pg(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def front_end(self, name: str, host: str, port: int) -> RoleService:
        service = RoleService(
            os.path.join(self.base, name),
            "lbserver",
            [
                *self.creds,
                "--hostname",
                host,
                "--store",
                f"tcp:{port}:interface=127.0.0.1",
                "--query",
                f"tcp:{free_port()}:interface=127.0.0.1",
                "--policy",
                self.write_policy(
                    ("REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_CE_EVENTS", "LOG_GENERAL_EVENTS")
                ),
                "--store-url",
                self.url,
            ],
            port,
        )
        self.addCleanup(service.cleanup)
        return service

    def test_two_front_ends_kill_one(self) -> None:
        self.url = cluster().new_database()
        other_port = free_port()
        first = self.front_end("fe1", LB_HOST, self.store_port)
        second = self.front_end("fe2", OTHER_HOST, other_port)
        first.start()
        second.start()
        self.proxy = RoleService(
            os.path.join(self.base, "proxy"),
            "lbproxy",
            [
                *self.creds,
                "--hostname",
                "localhost",
                "--query",
                f"tcp:{free_port()}:interface=127.0.0.1",
                "--relay-map",
                f"{LB_HOST}:9001=tcp:host=127.0.0.1:port={self.store_port}",
                "--relay-map",
                f"{OTHER_HOST}:9001=tcp:host=127.0.0.1:port={other_port}",
            ],
            None,
        )
        self.addCleanup(self.proxy.cleanup)
        self.proxy.start()
        batches = [self.jobs(10 * i, 10, host) for i in range(4) for host in (LB_HOST, OTHER_HOST)]
        logger = threading.Thread(
            target=lambda: [self.log([ln for _, lines in b for ln in lines]) for b in batches]
        )
        logger.start()
        # kill -9 of the second front end while the proxy relays to both.
        wait_for("a first event at the second front end", lambda: self.stored_at(OTHER_HOST) > 0)
        second.kill()
        logger.join()
        time.sleep(0.5)
        second.start()
        proxy_events = {
            str(r[0])
            for r in query(self.proxy.db_path, "SELECT line FROM events")
            if "e2eRelayJob" in str(r[0]) and ":9000/e2eRelayJob" in str(r[0])
        }

        def delivered() -> bool:
            depth = query(self.proxy.db_path, "SELECT COUNT(*) FROM outbox")
            return bool(depth) and depth[0][0] == 0

        wait_for("the relay to both front ends", delivered)
        lines = [str(r[0]) for r in self.pg("SELECT line FROM events")]
        self.assertEqual(len(lines), len(set(lines)), "events stored twice")
        relayed = [
            str(r[0])
            for r in query(
                self.proxy.db_path,
                "SELECT e.line FROM events e WHERE e.jobid LIKE 'https://lb%.example.org:9000/%'",
            )
        ]
        self.assertEqual(sorted(lines), sorted(relayed))
        self.assertTrue(proxy_events)
        # Every gLite job's state at the database is the proxy's.
        states = dict(self.pg("SELECT jobid, state FROM jobs"))
        expected = {
            str(j): str(s)
            for j, s in query(
                self.proxy.db_path,
                "SELECT jobid, state FROM jobs WHERE jobid LIKE 'https://lb%.example.org:9000/%'",
            )
        }
        self.assertEqual(states, expected)
        self.assertEqual(len(states), 80)
        self.assertEqual(set(states.values()), {"Done"})

    def stored_at(self, host: str) -> int:
        try:
            rows = self.pg(f"SELECT COUNT(*) FROM events WHERE jobid LIKE 'https://{host}:%'")
        except psycopg.Error:
            return 0
        return int(rows[0][0])
