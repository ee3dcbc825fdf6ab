# -*- test-case-name: tests.integration.test_relay_lease -*-
"""
The relay leases of the PostgreSQL store (L{lbtwist.store.pglease}): two store
objects on one database are two front ends of a proxy, on one L{Clock} (the
front ends' clocks agree); their writers run synchronously.
"""

from __future__ import annotations

import io
import json
import threading
import time

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.core.events import parse_event
from lbtwist.core.translate import proxy_policy
from lbtwist.store import pglease
from lbtwist.store.batch import run_now
from lbtwist.store.interface import OutboxEntry
from lbtwist.store.postgres import PostgresStore
from tests.integration.pgcluster import cluster
from tests.unit.test_relay import DEST1, JOB_A, JOB_B, T0, Harness, wms_lines

#: The lease of the tests, seconds (rounds every second).
LEASE = 3.0


class TwoFrontEnds(SynchronousTestCase):
    def setUp(self) -> None:
        self.url = cluster().new_database()
        self.clock = Clock()
        self.clock.advance(T0)
        self.fe1 = self.front_end("fe1")
        self.fe2 = self.front_end("fe2")

    def front_end(self, holder: str) -> PostgresStore:
        store = PostgresStore(
            self.url,
            clock=self.clock,
            runner=run_now,
            policy=proxy_policy((), "ce.example.org"),
            relay_lease=LEASE,
            holder=holder,
        )
        store.start()
        self.addCleanup(store.close)
        return store

    def store_lines(self, store: PostgresStore, lines: list[str]) -> None:
        self.successResultOf(store.store([(line, parse_event(line)) for line in lines]))

    def rows(self, store: PostgresStore, after: int = 0) -> list[OutboxEntry]:
        return self.successResultOf(store.outbox_after(DEST1, after, 1000))

    def pending(self) -> list[OutboxEntry]:
        return self.successResultOf(self.fe1.outbox_pending(DEST1))

    def holder(self) -> str | None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT holder FROM relay_leases WHERE destination = %s", (DEST1,)
            ).fetchone()
        return None if row is None else str(row[0])

    def die(self, store: PostgresStore) -> None:
        """
        C{kill -9}: no more rounds (nor anything else) from C{store}.
        """
        assert store.leases is not None
        store.leases.stop()


class LeaseTests(TwoFrontEnds):
    def test_only_the_holder_reads_rows(self) -> None:
        """
        The first front end to ask takes the lease and gets the rows; the other
        gets none, however many rows it stored itself.
        """
        self.store_lines(self.fe1, wms_lines(JOB_A))
        self.store_lines(self.fe2, wms_lines(JOB_B))
        rows = self.rows(self.fe1)
        self.assertEqual(len(rows), len(self.pending()))
        self.assertEqual([r.id for r in rows], sorted(r.id for r in rows))
        self.assertEqual(self.rows(self.fe2), [])
        self.clock.advance(LEASE)
        self.assertEqual(self.rows(self.fe2), [])
        self.assertEqual(self.holder(), "fe1")
        self.assertTrue(self.fe1.leases and self.fe1.leases.holds(DEST1))
        self.assertFalse(self.fe2.leases and self.fe2.leases.holds(DEST1))

    def test_round_takes_lease_of_waiting_rows(self) -> None:
        """
        A round takes the free lease of a destination with waiting rows and
        wakes it; later rounds wake it again (rows other front ends commit).
        """
        woken: list[set[str]] = []
        self.fe2.add_commit_listener(woken.append)
        self.store_lines(self.fe1, wms_lines(JOB_A)[:2])
        self.die(self.fe1)
        self.clock.advance(LEASE / 3)
        self.assertEqual(self.holder(), "fe2")
        self.assertIn({DEST1}, woken)
        n = len(woken)
        self.clock.advance(LEASE / 3)
        self.assertEqual(woken[n:], [{DEST1}])

    def test_takeover_after_the_lease(self) -> None:
        """
        A holder that stops renewing loses the lease once it expired; another
        front end takes it within 4/3 of the lease and reads from the first row
        not acknowledged, in order.
        """
        self.store_lines(self.fe1, wms_lines(JOB_A))
        first = self.rows(self.fe1)
        self.successResultOf(self.fe1.outbox_ack([r.id for r in first[:3]]))
        self.die(self.fe1)
        died = self.clock.seconds()
        taken_at = None
        while self.clock.seconds() - died < 2 * LEASE:
            self.clock.advance(0.25)
            if self.fe2.leases and self.fe2.leases.holds(DEST1):
                taken_at = self.clock.seconds()
                break
        assert taken_at is not None, "no takeover"
        self.assertGreater(taken_at - died, LEASE * 2 / 3)
        self.assertLessEqual(taken_at - died, LEASE * 4 / 3)
        self.assertEqual(self.holder(), "fe2")
        rows = self.rows(self.fe2)
        self.assertEqual([r.id for r in rows], [r.id for r in first[3:]])

    def test_stale_ack_refused(self) -> None:
        """
        An acknowledgement from a front end whose lease was taken deletes nothing:
        the rows stay for the new holder (sent again: duplicates upstream).
        """
        self.store_lines(self.fe1, wms_lines(JOB_A))
        first = self.rows(self.fe1)
        self.die(self.fe1)
        self.clock.advance(LEASE * 4 / 3 + 0.1)
        self.assertEqual(self.holder(), "fe2")
        self.successResultOf(self.fe1.outbox_ack([r.id for r in first[:5]]))
        self.assertEqual(self.fe1.backend.refused_acks, 5)
        self.assertEqual(len(self.pending()), len(first))
        rows = self.rows(self.fe2)
        self.assertEqual([r.id for r in rows], [r.id for r in first])
        self.successResultOf(self.fe2.outbox_ack([r.id for r in rows[:5]]))
        self.assertEqual(self.fe2.backend.refused_acks, 0)
        self.assertEqual(len(self.pending()), len(first) - 5)
        # Rejections too.
        self.successResultOf(self.fe1.reject(rows[5], 600, 0, "stale"))
        self.assertEqual(len(self.pending()), len(first) - 5)
        self.assertEqual(self.successResultOf(self.fe1.rejected()), [])

    def test_hung_renewal_gives_the_lease_up(self) -> None:
        """
        A holder whose renewals hang (the database is unreachable) stops sending
        a third of the lease before its lease expires, and tells the relay.
        """
        lost: list[set[str]] = []
        self.fe1.add_lease_listener(lost.append)
        self.store_lines(self.fe1, wms_lines(JOB_A))
        self.assertTrue(self.rows(self.fe1))
        leases = self.fe1.leases
        assert leases is not None
        leases._run = lambda work: Deferred()  # type: ignore[method-assign]
        renewed = self.clock.seconds()
        while not lost:
            self.clock.advance(0.25)
        self.assertEqual(lost, [{DEST1}])
        self.assertLessEqual(self.clock.seconds() - renewed, LEASE * 2 / 3 + 0.25)
        self.assertEqual(self.rows(self.fe1), [])

    def test_clean_stop_releases(self) -> None:
        """
        A front end that stops gives its leases up: another takes them at its
        next round, not after the lease.
        """
        self.store_lines(self.fe1, wms_lines(JOB_A))
        self.assertTrue(self.rows(self.fe1))
        self.successResultOf(self.fe1.close())
        self.clock.advance(LEASE / 3)
        self.assertEqual(self.holder(), "fe2")

    def test_outbox_rows_visible_in_id_order(self) -> None:
        """
        A commit adding rows for a destination waits for another one adding rows
        for it (a destination lock): a reader past an id never misses a row
        committed later with a smaller id.
        """
        other = psycopg.connect(self.url, autocommit=True)
        self.addCleanup(other.close)
        other.execute("BEGIN")
        pglease.lock_destinations(other, [DEST1])
        done = threading.Event()

        def write() -> None:
            self.fe2._process([(line, parse_event(line), 1) for line in wms_lines(JOB_B)])
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                waiting = other.execute(
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.02)
            self.assertFalse(done.is_set(), "the commit did not wait for the destination")
        finally:
            other.execute("COMMIT")
            thread.join()
        self.assertTrue(done.is_set())


class RelayTakeoverTests(TwoFrontEnds):
    """
    The relays of both front ends (L{lbtwist.service.relay}, fake connections),
    the first one killed mid-stream.
    """

    def test_order_kept_across_takeover(self) -> None:
        """
        Both front ends store events of one destination; the holder is killed
        with rows delivered but not acknowledged: the other sends every row, in
        the outbox's order, those rows again (counted: the destination's
        duplicate rule absorbs them) and nothing else twice.
        """
        h1 = Harness(store=self.fe1, clock=self.clock, window=4)
        h2 = Harness(store=self.fe2, clock=self.clock, window=4)
        for h in (h1, h2):
            h.service.startService()
            self.addCleanup(h.service.stopService)
        h1.store_lines(wms_lines(JOB_A))
        h2.store_lines(wms_lines(JOB_B))
        order = [r.line for r in self.pending()]
        c1 = h1.endpoints[DEST1].current
        c2 = h2.endpoints[DEST1].current
        received = c1.take_lines()
        self.assertEqual(received, order[:4])
        c1.answer(n=2)
        received += c1.take_lines()
        self.assertEqual(received, order[:6])
        self.assertEqual(c2.take_lines(), [])
        # kill -9 of the holder: 4 rows delivered, their acknowledgement lost.
        self.die(self.fe1)
        self.assertEqual(len(self.pending()), len(order) - 2)
        for _ in range(int(LEASE * 4 / 3 / 0.25) + 1):
            self.clock.advance(0.25)
        self.assertEqual(self.holder(), "fe2")
        while got := c2.take_lines():
            received += got
            c2.answer(n=len(got))
        self.assertEqual(self.pending(), [])
        self.assertEqual(list(dict.fromkeys(received)), order)
        resent = len(received) - len(order)
        self.assertEqual(resent, 4)
        self.assertEqual(received[6:10], order[2:6])


class RelayStatusTests(TwoFrontEnds):
    """
    C{lbtwist relay status --store-url URL}: the queues and their lease holders.
    """

    def status(self, *args: str, later: float = 0.0) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        now = int((self.clock.seconds() + later) * 1_000_000)
        code = run(
            ["relay", "status", "--store-url", self.url, *args],
            CLIContext(env={}, stdout=out, stderr=err, now=lambda: now),
        )
        return code, out.getvalue(), err.getvalue()

    def test_holder_shown(self) -> None:
        self.assertEqual(self.status(), (0, "relay: nothing waiting, nothing rejected\n", ""))
        lines = wms_lines(JOB_A)
        self.store_lines(self.fe1, lines)
        self.assertTrue(self.rows(self.fe1))
        code, out, _ = self.status()
        self.assertEqual(
            out,
            f"{DEST1}: {len(lines)} waiting, oldest 0 s, 0 rejected,"
            " sent by fe1 (lease 1, 3 s left)\n",
        )
        self.die(self.fe1)
        self.assertIn("lease of fe1 expired 2 s ago", self.status(later=LEASE + 2)[1])
        self.clock.advance(LEASE + 0.1)
        code, out, _ = self.status("--json")
        row = json.loads(out)
        self.assertEqual((row["holder"], row["lease_token"], row["depth"]), ("fe2", 2, len(lines)))
        self.assertGreater(row["lease_expires_in"], 0)

    def test_writes_refused(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = run(
            ["relay", "retry", "--all", "--store-url", self.url],
            CLIContext(env={}, stdout=out, stderr=err),
        )
        self.assertNotEqual(code, 0)
        self.assertIn("--state-dir or -m", err.getvalue())
