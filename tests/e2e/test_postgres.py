# -*- test-case-name: tests.e2e.test_postgres -*-
"""
Two real C{twistd lbserver} front ends on one PostgreSQL database (a private
cluster, L{tests.integration.pgcluster}), a real C{twistd lbproxy} relaying to both
(two destinations, one per front end), and a C{kill -9} of one front end while
events flow: every event stored once, the jobs' states those of the proxy.

And the relay's side: two C{twistd lbproxy} front ends on one database, fed events
both, relaying to a third C{twistd lbserver} (SQLite), the lease holder killed
with C{kill -9} mid-stream: every event arrives once, in per-job order.

C{LBTWIST_PG_KILL_LOOPS} (default 1) repeats each C{kill -9} test that many times
(C{LBTWIST_PG_KILL_LOOPS=10 trial tests.e2e.test_postgres}).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from twisted.logger import Logger

from tests.e2e import harness
from tests.e2e.harness import free_port, wait_for
from tests.e2e.test_relay import ACTIONS, LB_HOST, OTHER_HOST, DevPKICase, RoleService, query
from tests.integration.pgcluster import cluster

log = Logger()


def kill_loops() -> int:
    """
    How many times each C{kill -9} test runs (C{LBTWIST_PG_KILL_LOOPS}, 1).
    """
    return max(int(os.environ.get("LBTWIST_PG_KILL_LOOPS", "1")), 1)


class PostgresCase(DevPKICase):
    """
    A development PKI for every service, the database read directly.
    """

    url = ""
    # One host certificate for both front ends' names.
    hostnames = ("localhost", LB_HOST, OTHER_HOST)

    def pg(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()


class TwoFrontEndTests(PostgresCase):
    def front_end(self, name: str, host: str, port: int) -> RoleService:
        service = RoleService(
            os.path.join(self.base, name),
            "lbserver",
            harness.server_args(
                self.creds, host, port, self.write_policy(ACTIONS), "--store-url", self.url
            ),
            port,
        )
        self.addCleanup(service.cleanup)
        return service

    def test_two_front_ends_kill_one(self) -> None:
        for loop in range(kill_loops()):
            self._two_front_ends_kill_one(f"{loop}")

    def _two_front_ends_kill_one(self, loop: str) -> None:
        self.url = cluster().new_database()
        self.store_port = free_port()
        other_port = free_port()
        first = self.front_end(f"fe1-{loop}", LB_HOST, self.store_port)
        second = self.front_end(f"fe2-{loop}", OTHER_HOST, other_port)
        first.start()
        second.start()
        self.proxy = RoleService(
            os.path.join(self.base, f"proxy-{loop}"),
            "lbproxy",
            harness.proxy_args(
                self.creds, {f"{LB_HOST}:9001": self.store_port, f"{OTHER_HOST}:9001": other_port}
            ),
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
        for service in (self.proxy, first, second):
            service.cleanup()

    def stored_at(self, host: str) -> int:
        try:
            rows = self.pg(f"SELECT COUNT(*) FROM events WHERE jobid LIKE 'https://{host}:%'")
        except psycopg.Error:
            return 0
        return int(rows[0][0])


#: The relayed destination of the relay tests (the third server's store port).
DESTINATION = f"{LB_HOST}:9001"

#: The relay lease of the proxies, seconds: a takeover within 4 s.
LEASE = 3


class RelayFrontEndTests(PostgresCase):
    """
    Two C{twistd lbproxy} front ends on one database relaying to one server.
    """

    def proxy_front_end(self, name: str, server_port: int) -> RoleService:
        service = RoleService(
            os.path.join(self.base, name),
            "lbproxy",
            harness.proxy_args(
                self.creds,
                {DESTINATION: server_port},
                *("--metrics", "none", "--store-url", self.url, "--relay-lease", str(LEASE)),
            ),
            None,
        )
        self.addCleanup(service.cleanup)
        return service

    def server(self, name: str, port: int) -> RoleService:
        service = RoleService(
            os.path.join(self.base, name),
            "lbserver",
            harness.server_args(
                self.creds, LB_HOST, port, self.write_policy(ACTIONS), "--metrics", "none"
            ),
            port,
        )
        self.addCleanup(service.cleanup)
        return service

    def test_lease_holder_killed(self) -> None:
        for loop in range(kill_loops()):
            self._lease_holder_killed(f"{loop}")

    def _lease_holder_killed(self, loop: str) -> None:
        self.url = cluster().new_database()
        port = free_port()
        server = self.server(f"server-{loop}", port)
        server.start()
        fronts = [self.proxy_front_end(f"proxy{i}-{loop}", port) for i in (1, 2)]
        for front in fronts:
            front.start()
        alive = list(fronts)
        batches = [self.jobs(1000 + 10 * i, 10) for i in range(8)]
        failures: list[BaseException] = []

        def feed() -> None:
            try:
                for i, batch in enumerate(batches):
                    lines = [ln for _, job in batch for ln in job]
                    # Both front ends, in turn; a batch the killed one did not
                    # answer goes to the other (what it stored is answered as
                    # duplicates there).
                    while not send(alive[i % len(alive)], lines):
                        time.sleep(0.05)
            except BaseException as e:  # reported by the test
                failures.append(e)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            wait_for(
                "a first event at the server, more waiting",
                lambda: bool(server_lines(server)) and self.waiting() > 0,
            )
            holder, name = self.holder_of(fronts)
            holder.kill()
            killed = time.monotonic()
            alive.remove(holder)
            # Before the lease expires: the rows left that the server has already
            # are the resends its duplicate rule absorbs.
            time.sleep(0.5)
            at_server = set(server_lines(server))
            waiting = [
                str(r[0])
                for r in self.pg(
                    "SELECT e.line FROM outbox o JOIN events e ON e.id = o.event_id"
                    f" WHERE o.destination = '{DESTINATION}'"
                )
            ]
            resends = sum(1 for line in waiting if line in at_server)
            wait_for("the takeover", lambda: self.lease_holder() not in (None, name))
            takeover = time.monotonic() - killed
        finally:
            feeder.join()
        self.assertEqual(failures, [])
        wait_for("the relay to finish", lambda: self.waiting() == 0)
        relayed = self.pg(
            "SELECT jobid, line FROM events WHERE jobid LIKE 'https://lb.example.org:9000/%'"
            " ORDER BY id"
        )
        wait_for(
            "the server to store everything", lambda: len(server_lines(server)) >= len(relayed)
        )
        stored = query(server.db_path, "SELECT jobid, line FROM events ORDER BY id")
        lines = [str(line) for _, line in stored]
        self.assertEqual(len(lines), len(set(lines)), "events stored twice")
        self.assertEqual(sorted(lines), sorted(str(line) for _, line in relayed))
        self.assertEqual(per_job(stored), per_job(relayed))
        # Every job complete at the server (its events and the gLite ones the
        # front ends generated).
        states = [str(r[0]) for r in query(server.db_path, "SELECT state FROM jobs")]
        self.assertEqual(states, ["Done"] * len(batches) * 10)
        survivor = alive[0]
        self.assertIn("now sends " + DESTINATION, survivor.log_text())
        # What the duplicate rule absorbed (reported; 0 when the kill fell
        # between an acknowledgement and the next window).
        log.info(
            "kill -9 of the lease holder: {waiting} rows waiting, {resends} of them already"
            " at the server (resent, answered as duplicates); taken over in {takeover:.1f} s",
            waiting=len(waiting),
            resends=resends,
            takeover=takeover,
        )
        # At most 4/3 of the lease after the last renewal, on time; a loaded
        # machine's timers may be late by a few seconds.
        self.assertLess(takeover, LEASE * 4 / 3 + 5)
        for service in (*fronts, server):
            service.cleanup()

    def lease_holder(self) -> str | None:
        rows = self.pg(f"SELECT holder FROM relay_leases WHERE destination = '{DESTINATION}'")
        return str(rows[0][0]) if rows else None

    def waiting(self) -> int:
        return int(self.pg("SELECT COUNT(*) FROM outbox")[0][0])

    def holder_of(self, fronts: list[RoleService]) -> tuple[RoleService, str]:
        """
        The front end holding the destination's lease (its pid is in its name),
        and that name.
        """
        wait_for("a lease holder", lambda: self.lease_holder() is not None)
        name = self.lease_holder()
        assert name is not None
        pid = int(name.split(":")[1])
        [front] = [f for f in fronts if f.process is not None and f.process.pid == pid]
        return front, name


def send(front: RoleService, lines: list[str]) -> bool:
    """
    Log C{lines} over C{front}'s socket; whether every one was answered OK.
    """
    try:
        sock = harness.connect(front.socket_path)
    except OSError:
        return False
    try:
        sock.sendall("".join(line + "\n" for line in lines).encode())
        for _ in lines:
            if not harness.read_line(sock).startswith(b"OK"):
                return False
    except OSError:
        return False
    finally:
        sock.close()
    return True


def server_lines(server: RoleService) -> list[str]:
    return [str(r[0]) for r in query(server.db_path, "SELECT line FROM events ORDER BY id")]


def per_job(rows: list[tuple[Any, ...]]) -> dict[str, list[str]]:
    """
    Each job's lines in the order of C{rows}.
    """
    jobs: dict[str, list[str]] = {}
    for jobid, line in rows:
        jobs.setdefault(str(jobid), []).append(str(line))
    return jobs
