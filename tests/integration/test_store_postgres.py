# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
The store test suites of L{tests.unit} again on L{lbtwist.store.postgres}, against a
private cluster (L{tests.integration.pgcluster}); and what only several front ends
on one database show: one event sent to two front ends stored once, the events of
one job from two front ends serialized on the job.
"""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.core.errors import LBError
from lbtwist.core.states import compute_status
from lbtwist.core.translate import proxy_policy
from lbtwist.store.batch import run_now
from lbtwist.store.interface import StoreResult
from lbtwist.store.postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    connect,
    is_postgres_url,
    migrate,
    schema_version,
)
from tests import traces
from tests.integration.pgcluster import cluster
from tests.unit.test_store import (
    PROXY,
    StoreRulesMixin,
    comparable,
    direct_lines,
    fail_backend_write,
    items,
    store_options,
    wms_lines,
)
from tests.unit.test_store_fold import FoldRulesMixin
from tests.unit.test_store_range import RangeMixin
from tests.unit.test_store_spool import SpoolOffsetsMixin


class PostgresMixin:
    """
    Stores on a new database of the cluster per test, written synchronously.
    """

    url = ""

    def setUp(self) -> None:
        self.url = cluster().new_database()
        self.stores: list[PostgresStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def make_store(self, path: str | None = None, **kwargs: Any) -> PostgresStore:
        store_options(kwargs)
        # A fresh schema for every store a test makes, unless it reopens one.
        store = PostgresStore(path or cluster().new_schema(self.url), **kwargs)
        store.clock = store._clock  # type: ignore[attr-defined]
        self.stores.append(store)
        return store

    def fail_next_write(self, store: Any, error: Exception) -> None:
        fail_backend_write(store, error)

    def reopen(self, store: PostgresStore, **kwargs: Any) -> PostgresStore:
        self.successResultOf(store.close())  # type: ignore[attr-defined]
        self.stores.remove(store)
        return self.make_store(store.url, **kwargs)


#: Examples of the property tests here: each builds a store (a schema) on the
#: server, so the SQLite runs of the same tests keep the many examples.
EXAMPLES = 8

_SLOW = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
)


class PostgresStoreRulesTests(PostgresMixin, StoreRulesMixin, SynchronousTestCase):
    @_SLOW
    @given(st.permutations(list(range(len(traces.cream_done_ok())))), st.data())
    def test_any_order_same_status(self, order: list[int], data: Any) -> None:
        StoreRulesMixin.test_any_order_same_status.hypothesis.inner_test(  # type: ignore[attr-defined]
            self, order, data
        )

    def test_schema(self) -> None:
        store = self.make_store()
        self.assertEqual(schema_version(store.backend.conn), SCHEMA_VERSION)
        self.assertEqual(store.backend.conn.execute("SHOW synchronous_commit").fetchone()[0], "on")


class PostgresFoldTests(PostgresMixin, FoldRulesMixin, SynchronousTestCase):
    @_SLOW
    @given(
        st.permutations(list(range(40))),
        st.integers(1, 7),
        st.integers(1, 30),
        st.data(),
    )
    def test_any_order_with_checkpoints(
        self, order: list[int], every: int, slice_: int, data: Any
    ) -> None:
        FoldRulesMixin.test_any_order_with_checkpoints.hypothesis.inner_test(  # type: ignore[attr-defined]
            self, order, every, slice_, data
        )


class PostgresRangeTests(PostgresMixin, RangeMixin, SynchronousTestCase):
    def make_store(self) -> PostgresStore:  # type: ignore[override]
        return PostgresMixin.make_store(self)


class PostgresSpoolOffsetsTests(PostgresMixin, SpoolOffsetsMixin, SynchronousTestCase):
    def make_store(self) -> PostgresStore:  # type: ignore[override]
        return PostgresMixin.make_store(self)

    def reopen(self, store: Any) -> Any:  # type: ignore[override]
        self.successResultOf(store.close())
        self.stores.remove(store)
        return PostgresMixin.make_store(self, store.url)


class MigrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.url = cluster().new_database()

    def test_migrate_once(self) -> None:
        """
        A new database is migrated to the current version; again, nothing is done.
        """
        conn = connect(self.url)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), 0)
        self.assertEqual(migrate(conn), 0)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        self.assertEqual(migrate(conn), SCHEMA_VERSION)

    def test_newer_refused(self) -> None:
        conn = connect(self.url)
        self.addCleanup(conn.close)
        migrate(conn)
        conn.execute("UPDATE lbtwist_schema SET version = version + 1")
        self.assertRaises(LBError, migrate, conn)

    def test_url(self) -> None:
        self.assertTrue(is_postgres_url("postgresql://u@h/db"))
        self.assertTrue(is_postgres_url("postgres://u@h/db"))
        self.assertFalse(is_postgres_url("/var/lib/lbtwist"))
        self.assertFalse(is_postgres_url(None))


class FrontEndTests(SynchronousTestCase):
    """
    Two front ends (two stores, each with its writer) on one database, writing
    from two threads at once.
    """

    def setUp(self) -> None:
        self.url = cluster().new_database()
        self.fronts = [self.front() for _ in range(2)]

    def front(self) -> PostgresStore:
        store = PostgresStore(self.url, clock=Clock(), runner=run_now)
        store.start()
        self.addCleanup(store.close)
        return store

    def at_once(self, groups: list[list[tuple[str, Any]]]) -> list[list[Any]]:
        """
        Store group C{i} on front end C{i % 2}, all from their own threads at once.
        """
        results: list[list[Any]] = [[] for _ in groups]
        start = threading.Barrier(len(groups))

        def work(i: int) -> None:
            store = self.fronts[i % 2]
            start.wait()
            for item in groups[i]:
                # Under the job lock no transaction fails (a unique index violated,
                # a deadlock): each answer is the first one.
                results[i].append(store._process([(item[0], item[1], 1)])[0])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(groups))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for answers in results:
            for answer in answers:
                self.assertIsInstance(answer, StoreResult)
        return results

    def test_same_events_two_front_ends(self) -> None:
        """
        The same events sent to both front ends at once are stored once each.
        """
        lines = items(direct_lines())
        results = self.at_once([lines, lines])
        fresh = [not r.duplicate for r in results[0]]
        other = [not r.duplicate for r in results[1]]
        self.assertEqual([a + b for a, b in zip(fresh, other, strict=True)], [1] * len(lines))
        stored = self.successResultOf(self.fronts[1].events(traces.DIRECT_JOBID))
        self.assertEqual(sorted(s.line for s in stored), sorted(line for line, _ in lines))
        self.assertEqual(sorted(s.seqno for s in stored), list(range(1, len(lines) + 1)))

    def test_zombie_seen_by_every_front_end(self) -> None:
        """
        A job purged (a zombie row) has its events refused at any front end.
        """
        from lbtwist.core.errors import AlreadyExists
        from lbtwist.core.jobid import unique_of

        line, ev = items(direct_lines())[0]
        self.fronts[0].backend.conn.execute(
            "INSERT INTO zombies (uniq, jobid, purged_at, trace) VALUES (?, ?, 1, '')",
            (unique_of(ev.jobid), ev.jobid),
        )
        [answer] = self.fronts[1]._process([(line, ev, 1)])
        self.assertIsInstance(answer, AlreadyExists)

    @settings(
        max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.randoms(use_true_random=False))
    def test_status_is_replay(self, random: Any) -> None:
        """
        A job's events split at random between two front ends storing at once:
        the stored status is the replay of its stored events in order.
        """
        url = cluster().new_database()
        fronts = [PostgresStore(url, clock=Clock(), runner=run_now) for _ in range(2)]
        for store in fronts:
            store.start()
        self.fronts = fronts
        try:
            lines = items(wms_lines())
            halves: list[list[tuple[str, Any]]] = [[], []]
            for item in lines:
                halves[random.randrange(2)].append(item)
            self.at_once(halves)
            for store in fronts:
                stored = self.successResultOf(store.events(traces.WMS_JOBID))
                self.assertEqual(len(stored), len(lines))
                replay = compute_status((s.event, s.seqno) for s in stored)
                status = self.successResultOf(store.status(traces.WMS_JOBID))
                self.assertEqual(comparable(status), comparable(replay))
        finally:
            for store in fronts:
                store.close()


class ThreadedStoreTests(TestCase):
    """
    The real writer thread and reader pool, with the real reactor.
    """

    @inlineCallbacks
    def test_threads(self) -> Any:
        url = cluster().new_database()
        store = PostgresStore(url, clock=reactor, policy=proxy_policy((), PROXY), pool_size=3)
        lines = wms_lines()
        ds = [store.store(items([line])) for line in lines]
        results = []
        for d in ds:
            results.extend((yield d))
        self.assertEqual([r.duplicate for r in results], [False] * len(lines))
        self.assertLess(store.commits, len(lines) + 1)
        statuses = yield gatherResults([store.status(traces.WMS_JOBID) for _ in range(6)])
        self.assertEqual({s.state for s in statuses}, {"Done"})
        outbox = yield store.outbox_pending()
        self.assertEqual(len(outbox), len(lines) + 4)
        yield store.outbox_ack([outbox[0].id])
        self.assertEqual(len((yield store.outbox_pending())), len(lines) + 3)
        yield store.close()
        self.assertEqual(store._pools, [])
        self.assertIsNone(store._readers)
