# -*- test-case-name: tests.integration.test_store_postgres_parity -*-
"""
The notification, purge and lifecycle test suites of L{tests.unit} again on
L{lbtwist.store.postgres} (the private cluster), and what several front ends on one
database add: a registration made at one front end matched by events stored at
another, dense message sequences whichever front end stored the event, wake-ups
across front ends, a purge at one front end seen by all, and C{lbtwist store copy}
of all of it.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.core.errors import LBError, TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.notif import Conditions, Flags
from lbtwist.core.purge import DAY, PurgeRules
from lbtwist.core.states.status import PURGED
from lbtwist.core.stats import StatsRequest
from lbtwist.core.trace import TraceRequest
from lbtwist.store import pglifecycle, pgnotif, purging
from lbtwist.store.batch import run_now
from lbtwist.store.interface import StoreResult
from lbtwist.store.pgnotif import NotifListener, PgNotifTables, parse_payload, payloads
from lbtwist.store.postgres import MIGRATIONS, PostgresStore, _migrate_lifecycle, connect
from tests import traces
from tests.integration.pgcluster import cluster
from tests.unit import test_notif_store as notif_tests
from tests.unit import test_purge_store as purge_tests
from tests.unit import test_stats_store as stats_tests

NOW = notif_tests.NOW
JOBID = traces.DIRECT_JOBID
_database: list[str] = []


def new_url() -> str:
    """
    A new schema of one database shared by this module's tests (cheaper than a database).
    """
    if not _database:
        _database.append(cluster().new_database())
    return cluster().new_schema(_database[0])


def results(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def items(lines: list[str]) -> list[tuple[str, Any]]:
    return [(line, parse_event(line)) for line in lines]


_SQLITE_ONLY = "SQLite only (file locks, vacuum, sqlite_master)"


class PostgresNotifTests(notif_tests.SQLiteNotifTests):
    """
    The notification store tests (and the restart test) on PostgreSQL.
    """

    def make(self) -> Any:
        self.url = new_url()
        return self._open()

    def _open(self) -> PostgresStore:
        store = PostgresStore(self.url, clock=self.clock, runner=run_now)
        store.start()
        self.addCleanup(lambda: results(store.close()))
        return store

    def reopen(self, store: Any) -> Any:
        results(store.close())
        return self._open()

    def fail_next_write(self) -> None:
        tables = self.store.notifications.tables
        original = PgNotifTables.write_messages

        def failing(rows: Any, bounds: Any) -> None:
            tables.write_messages = lambda *a: original(tables, *a)  # type: ignore[method-assign]
            original(tables, rows, bounds)  # written, then the transaction fails
            raise TryAgain("disk trouble")

        tables.write_messages = failing  # type: ignore[method-assign]

    def test_queries_per_commit_do_not_grow_with_registrations(self) -> None:
        super().test_queries_per_commit_do_not_grow_with_registrations()

    test_queries_per_commit_do_not_grow_with_registrations.skip = (  # type: ignore[attr-defined]
        "counts statements with SQLite's trace callback"
    )


class PostgresPurgeTests(purge_tests.PurgeStoreTests):
    """
    The purge store tests on PostgreSQL.
    """

    def setUp(self) -> None:
        super().setUp()
        self.url = new_url()

    def make(self, **kw: Any) -> Any:
        kw.setdefault("clock", Clock())
        kw.setdefault("runner", run_now)
        store = PostgresStore(self.url, **kw)
        self.stores.append(store)
        store.start()
        return store

    def test_cachedJobForgotten(self) -> None:
        pass

    test_cachedJobForgotten.skip = "the PostgreSQL writer keeps no status between groups"  # type: ignore[attr-defined]

    def test_newStoreIncrementalVacuum(self) -> None:
        pass

    test_newStoreIncrementalVacuum.skip = _SQLITE_ONLY  # type: ignore[attr-defined]

    def test_oldStoreFullVacuum(self) -> None:
        pass

    test_oldStoreFullVacuum.skip = _SQLITE_ONLY  # type: ignore[attr-defined]

    def test_lock(self) -> None:
        pass

    test_lock.skip = _SQLITE_ONLY  # type: ignore[attr-defined]

    def test_lockReleasedOnClose(self) -> None:
        pass

    test_lockReleasedOnClose.skip = _SQLITE_ONLY  # type: ignore[attr-defined]

    def test_migration(self) -> None:
        """
        The purge and lifecycle tables exist; the vacuum step has nothing to do.
        """
        store = self.make()
        names = {
            r[0]
            for r in store.backend.conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        self.assertTrue({"zombies", "jp_pending", "state_entries", "trace_jobs"} <= names)
        self.assertEqual(results(store.vacuum_step()), 0)


class PostgresLifecycleTests(stats_tests.StoreTests):
    """
    The statistics and trace store tests on PostgreSQL.
    """

    def setUp(self) -> None:
        self.url = new_url()
        super().setUp()

    def open(self) -> Any:
        store = PostgresStore(self.url, clock=self.clock, runner=run_now)
        self.addCleanup(store.close)
        store.start()
        return store

    def test_backfill(self) -> None:
        """
        A database migrated before the indexes gets them filled by their migration.
        """
        self.fill()
        conn = self.store.backend.conn
        conn.execute("DROP TABLE state_entries")
        conn.execute("DROP TABLE trace_jobs")
        self.assertIn(_migrate_lifecycle, MIGRATIONS)
        _migrate_lifecycle(conn)
        self.assertEqual(
            self.stats(
                ("state", "Submitted"), ("from", stats_tests.DAY_FROM), ("to", stats_tests.DAY_TO)
            )["count"],
            3,
        )
        self.assertEqual(len(self.trace(("lrms_id", "4711.batch01.example.org"))), 2)


def registration(unique: str = "r1", **kw: Any) -> Any:
    return notif_tests.registration(unique, **kw)


class FrontEndNotifTests(SynchronousTestCase):
    """
    Two front ends (two stores) on one database: notifications are shared.
    """

    def setUp(self) -> None:
        self.url = new_url()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.a = self.front()
        self.b = self.front()

    def front(self) -> PostgresStore:
        store = PostgresStore(self.url, clock=self.clock, runner=run_now)
        store.start()
        self.addCleanup(lambda: results(store.close()))
        return store

    def test_registration_at_a_events_at_b(self) -> None:
        """
        A registration made at A is matched by events stored at B (B's next group
        reads the change); A reads the messages, with the sequence numbers going
        on whichever front end stored each event.
        """
        results(self.a.notifications.create(registration(), NOW))
        self.assertIsNone(self.b.notifications.registration("r1"))
        lines = traces.cream_done_ok()
        for i, line in enumerate(lines):
            store = (self.a, self.b)[i % 2]
            [r] = results(store.store(items([line])))
            self.assertIsInstance(r, StoreResult)
        self.assertIsNotNone(self.b.notifications.registration("r1"))
        self.assertEqual(notif_tests.cream_states(self.a.notifications, "r1"), notif_tests.STATES)
        self.assertEqual(
            [m.seq for m in results(self.b.notifications.messages("r1", 0, 100))],
            list(range(1, 8)),
        )

    def test_drop_at_b_wakes_a(self) -> None:
        """
        A registration dropped at B leaves A's index at A's next sync, and A's
        streams of it are woken (they end: "dropped").
        """
        woken: list[set[str]] = []
        self.a.notifications.add_listener(woken.append)
        results(self.a.notifications.create(registration(), NOW))
        self.b.notif_sync.sync(self.b.backend.conn)
        results(self.b.notifications.drop(["r1"]))
        self.assertIsNotNone(self.a.notifications.registration("r1"))
        self.assertEqual(self.a.notif_sync.sync(self.a.backend.conn), {"r1"})
        self.assertIsNone(self.a.notifications.registration("r1"))
        self.assertEqual(woken, [{"r1"}])
        # Nothing new: nothing read again.
        self.assertEqual(self.a.notif_sync.sync(self.a.backend.conn), set())

    def test_pruned_change_log_reloads(self) -> None:
        """
        A front end further behind than the change rows kept reloads every
        registration.
        """
        self.a = PostgresStore(self.url, clock=self.clock, runner=run_now, notif_changes=1)
        self.a.start()
        self.addCleanup(lambda: results(self.a.close()))
        for name in ("r1", "r2", "r3"):
            results(self.a.notifications.create(registration(name), NOW))
        results(self.a.notifications.sweep(NOW, 10))  # prunes the change log
        rows = self.a.backend.conn.execute("SELECT id FROM notif_changes").fetchall()
        self.assertEqual(len(rows), 1)
        self.b.notif_sync.sync(self.b.backend.conn)
        self.assertEqual(self.b.notif_sync.reloads, 1)
        self.assertEqual(sorted(self.b.notifications.index.by_unique), ["r1", "r2", "r3"])
        self.assertRaises(ValueError, PostgresStore, self.url, clock=self.clock, notif_changes=0)

    def test_concurrent_fronts_dense_sequences(self) -> None:
        """
        Two front ends storing events of different jobs at once, all matched by
        one registration: its messages have one dense run of sequence numbers
        and no group fails (the registration row serializes the queue).
        """
        results(self.a.notifications.create(registration(conditions=Conditions()), NOW))
        self.b.notif_sync.sync(self.b.backend.conn)
        jobs = [traces.cream_done_ok_unpurged(), traces.cream_aborted()]
        start = threading.Barrier(2)
        answers: list[list[Any]] = [[], []]

        def work(i: int) -> None:
            store = (self.a, self.b)[i]
            start.wait()
            for line, ev in items(jobs[i]):
                answers[i].append(store._process([(line, ev, 1)])[0])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got in answers:
            self.assertEqual([a for a in got if isinstance(a, LBError)], [])
        messages = results(self.a.notifications.messages("r1", 0, 1000))
        self.assertEqual([m.seq for m in messages], list(range(1, len(messages) + 1)))
        self.assertGreater(len(messages), 4)
        state = results(self.b.notifications.get("r1"))
        self.assertEqual((state.last_seq, state.queued), (len(messages), len(messages)))

    def test_ack_waits_for_a_trim(self) -> None:
        """
        An acknowledgement at A while a commit at B holds the registration (and
        trims its queue) counts what is left once B committed: the counters stay
        those of the stored messages.
        """
        n = self.a.notifications
        results(n.create(registration(), NOW))
        results(self.a.store(items(traces.cream_done_ok())))
        other = connect(self.url)
        self.addCleanup(other.close)
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM notif_regs WHERE uniq = 'r1' FOR UPDATE")
        # What a trim of B does: the oldest three go, the counters follow.
        (cut,) = other.execute(
            "SELECT SUM(size) FROM notif_messages WHERE reg = 'r1' AND seq <= 3"
        ).fetchone()
        other.execute("DELETE FROM notif_messages WHERE reg = 'r1' AND seq <= 3")
        other.execute(
            "UPDATE notif_regs SET queued = queued - 3, size = size - ?, dropped = dropped + 3",
            (cut,),
        )
        pid = self.a.backend.conn.raw.info.backend_pid
        done = threading.Thread(target=lambda: results(n.ack("r1", 5)))
        done.start()
        for _ in range(1000):
            row = other.raw.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if row and row[0] == "Lock":
                break
            done.join(0.01)
        other.execute("COMMIT")
        done.join()
        state = results(n.get("r1"))
        left = results(n.messages("r1", 0, 100))
        self.assertEqual([m.seq for m in left], [6, 7])
        self.assertEqual(state.queued, len(left))
        self.assertEqual(state.size, sum(len(m.body) for m in left))

    def test_listener_payloads(self) -> None:
        """
        The listener wakes for the messages of other front ends only, and re-reads
        registrations when they changed elsewhere.
        """
        woken: list[set[str]] = []
        changed: list[int] = []
        listener = NotifListener(
            lambda: None,
            "me",
            wake=woken.append,
            changed=lambda: changed.append(1),
            lost=lambda: None,
        )
        [own] = payloads("m", "me", {"r1"})
        [other] = payloads("m", "you", {"r2", "r1"})
        listener.handle(own)
        listener.handle(other)
        listener.handle("something else")
        listener.handle(payloads("r", "you", {"r3"})[0])
        self.assertEqual(woken, [{"r1", "r2"}])
        self.assertEqual(changed, [1])
        many = payloads("m", "you", {f"u{i:04}" for i in range(pgnotif.PAYLOAD_UNIQUES + 1)})
        self.assertEqual(len(many), 2)
        self.assertTrue(all(len(p) < 8000 for p in many))
        self.assertEqual(parse_payload(other), ("m", "you", {"r1", "r2"}))


class FrontEndPurgeTests(SynchronousTestCase):
    """
    A purge at one front end, seen by the other.
    """

    def setUp(self) -> None:
        self.url = new_url()
        self.a = PostgresStore(self.url, clock=Clock(), runner=run_now)
        self.b = PostgresStore(self.url, clock=Clock(), runner=run_now)
        for store in (self.a, self.b):
            store.start()
            self.addCleanup(store.close)

    def test_purge_at_a_zombie_at_b(self) -> None:
        results(self.b.store(items(traces.cream_done_ok())))
        status = results(self.b.status(JOBID))
        now = int(status.lastUpdateTime) + 40 * DAY * 1_000_000
        chunk = results(self.a.purge_chunk(PurgeRules(), now, None, 100))
        self.assertEqual([j.jobid for j in chunk.purged], [JOBID])
        jobid, found = results(self.b.find_status("CREAM812461375"))
        self.assertEqual((jobid, found.state), (JOBID, PURGED))
        [excl] = results(self.b.store(items([purge_tests.regjob(JOBID, excl=True)])))
        self.assertIsInstance(excl, LBError)
        # Traced from the zombie at both.
        [job] = results(self.b.trace(TraceRequest.parse([("jobid", JOBID)]), 10))[0]
        self.assertTrue(job["purged"])

    def test_changed_job_kept(self) -> None:
        """
        A job updated (by another front end) after the chunk read it is not purged.
        """
        results(self.b.store(items(traces.cream_done_ok())))
        conn = self.a.backend.conn
        row = conn.execute("SELECT list_time FROM jobs WHERE jobid = ?", (JOBID,)).fetchone()
        last = purging.parse_iso(row[0])
        conn.execute("BEGIN")
        try:
            kept = pglifecycle.lock_jobs(
                conn,
                [
                    purging.PurgedJob(JOBID, "Cleared", last, None),
                    purging.PurgedJob(JOBID + "x", "Cleared", last, None),
                ],
            )
            self.assertEqual([j.jobid for j in kept], [JOBID])
            stale = pglifecycle.lock_jobs(conn, [purging.PurgedJob(JOBID, "Cleared", 1, None)])
            self.assertEqual(stale, [])
        finally:
            conn.execute("ROLLBACK")

    def test_stats_same_at_both(self) -> None:
        for line in traces.cream_done_ok() + traces.cream_aborted():
            store = self.a if "CREAM812461375" in line else self.b
            results(store.store(items([line])))
        request = StatsRequest.parse(
            [("state", "Submitted"), ("from", stats_tests.DAY_FROM), ("to", stats_tests.DAY_TO)],
            now=0,
            max_buckets=10,
        )
        self.assertEqual(results(self.a.stats(request, 10))["count"], 2)
        self.assertEqual(results(self.b.stats(request, 10)), results(self.a.stats(request, 10)))


class CopyAllTests(SynchronousTestCase):
    def test_copy_notifications_zombies_lifecycle(self) -> None:
        """
        C{lbtwist store copy} moves registrations (with their queued messages and
        read positions), zombies, trace records and the lifecycle tables: the
        PostgreSQL store answers as the SQLite one did, and goes on.
        """
        from lbtwist.store import store_path
        from lbtwist.store.sqlite import SQLiteStore
        from tests.integration.test_cli_store import lbtwist

        state = self.mktemp()
        os.makedirs(state)
        clock = Clock()
        clock.advance(NOW)
        sqlite = SQLiteStore(store_path(state), clock=clock, runner=run_now)
        n = sqlite.notifications
        results(n.create(registration(flags=Flags(state_changes_only=True)), NOW))
        lines = traces.cream_done_ok()
        results(sqlite.store(items(lines[:8])))
        results(n.ack("r1", 2))
        results(sqlite.store(items(traces.cream_aborted())))
        aborted = "https://cream-ce01.example.org:9000/CREAM812461379"
        status = results(sqlite.status(aborted))
        now = int(status.lastUpdateTime) + 8 * DAY * 1_000_000
        [gone] = results(sqlite.purge_chunk(PurgeRules(), now, None, 100)).purged
        self.assertEqual(gone.jobid, aborted)
        request = TraceRequest.parse([("jobid", aborted)])
        before_trace = results(sqlite.trace(request, 10))
        before_msgs = results(n.messages("r1", 0, 100))
        before_state = results(n.get("r1"))
        stats = StatsRequest.parse(
            [("state", "Submitted"), ("from", stats_tests.DAY_FROM), ("to", stats_tests.DAY_TO)],
            now=0,
            max_buckets=10,
        )
        before_stats = results(sqlite.stats(stats, 10))
        results(sqlite.close())

        url = new_url()
        code, out, err = lbtwist("store", "copy", "--from", state, "--to", url)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("zombies=1", out)
        self.assertIn("notif_regs=1 notif_jobs=1", out)
        self.assertIn(f"notif_messages={len(before_msgs)}", out)
        pg = PostgresStore(url, clock=clock, runner=run_now)
        self.addCleanup(lambda: results(pg.close()))
        pn = pg.notifications
        self.assertEqual(results(pn.messages("r1", 0, 100)), before_msgs)
        self.assertEqual(results(pn.get("r1")), before_state)
        self.assertEqual(results(pg.trace(request, 10)), before_trace)
        self.assertEqual(results(pg.stats(stats, 10)), before_stats)
        self.assertEqual(results(pg.zombie(aborted)), results(self.reopened(state).zombie(aborted)))
        # The queue goes on after the copied messages.
        results(pg.store(items(lines[8:])))
        seqs = [m.seq for m in results(pn.messages("r1", 0, 100))]
        self.assertEqual(seqs, list(range(3, 8)))
        body = json.loads(results(pn.messages("r1", 6, 1))[0].body)
        self.assertEqual(body["status"]["cream_state"], "Purged")

    def reopened(self, state: str) -> Any:
        from lbtwist.store import store_path
        from lbtwist.store.sqlite import SQLiteStore

        store = SQLiteStore(store_path(state), clock=Clock(), runner=run_now)
        self.addCleanup(lambda: results(store.close()))
        return store


class ThreadedListenTests(TestCase):
    """
    The real threads: front end A's LISTEN connection hears of B's messages and
    registration changes as they commit.
    """

    @inlineCallbacks
    def test_wake_across_front_ends(self) -> Any:
        url = new_url()
        a = PostgresStore(url, clock=reactor)
        b = PostgresStore(url, clock=reactor)
        a.start()
        b.start()
        self.addCleanup(b.close)
        self.addCleanup(a.close)
        woken: list[set[str]] = []
        a.notifications.add_listener(woken.append)
        # Valid at the real clock's arrival times.
        yield b.notifications.create(registration(until=2**40), NOW)
        # A's index gets the registration from the LISTEN connection, not a group.
        yield self.until(lambda: a.notifications.registration("r1") is not None)
        heard = a._listener.received
        yield self.until(lambda: bool(woken))
        del woken[:]
        yield b.store(items(traces.cream_done_ok()[:3]))
        # A message payload from B, and A's streams of r1 woken by it.
        yield self.until(lambda: a._listener.received > heard and bool(woken))
        self.assertEqual(woken, [{"r1"}])
        messages = yield a.notifications.messages("r1", 0, 10)
        self.assertTrue(messages)
        self.assertEqual(messages, (yield b.notifications.messages("r1", 0, 10)))

    @inlineCallbacks
    def until(self, condition: Any, timeout: float = 10.0) -> Any:
        deadline = reactor.seconds() + timeout
        while not condition():
            self.assertLess(reactor.seconds(), deadline, "not seen in time")
            yield deferLater(reactor, 0.01, lambda: None)
