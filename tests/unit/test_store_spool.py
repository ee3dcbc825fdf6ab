# -*- test-case-name: tests.unit.test_store_spool -*-
"""
Spool file offsets in the store: written in the same transaction as the events
read with them, never without them, forgotten on request; schema v6.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import LBError, TryAgain
from lbtwist.core.translate import proxy_policy
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore, connect, migrate, schema_version
from lbtwist.testing import MemoryStore
from tests.unit.test_store import PROXY, direct_lines, fail_backend_write, items


class SpoolOffsetsMixin:
    def make_store(self) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        raise NotImplementedError

    def fail_next_write(self, store: Any, error: LBError) -> None:
        fail_backend_write(store, error)

    def test_offsets_with_events(self) -> None:
        """
        Offsets given with events are committed with them, in one transaction.
        """
        t: Any = self
        store = self.make_store()
        before = store.backend.transactions
        results = t.successResultOf(store.store(items(direct_lines()[:2]), {"/s/f.1": (5, 300)}))
        t.assertEqual(len(results), 2)
        t.assertEqual(store.backend.transactions, before + 1)
        t.assertEqual(t.successResultOf(store.spool_offsets()), {"/s/f.1": (5, 300)})
        store = self.reopen(store)
        t.assertEqual(t.successResultOf(store.spool_offsets()), {"/s/f.1": (5, 300)})

    def test_offsets_alone_and_forgotten(self) -> None:
        """
        Offsets with no events (lines that were no events, duplicates) still get
        committed; L{None} forgets a file.
        """
        t: Any = self
        store = self.make_store()
        t.assertEqual(t.successResultOf(store.store([], {"/s/a": (1, 10), "/s/b": (2, 20)})), [])
        t.successResultOf(store.store([], {"/s/a": None, "/s/b": (2, 40)}))
        t.assertEqual(t.successResultOf(store.spool_offsets()), {"/s/b": (2, 40)})

    def test_failed_commit_writes_no_offsets(self) -> None:
        """
        A failed transaction writes neither the events nor the offsets.
        """
        t: Any = self
        store = self.make_store()
        t.successResultOf(store.store([], {"/s/a": (1, 10)}))
        self.fail_next_write(store, TryAgain("disk"))
        results = t.successResultOf(store.store(items(direct_lines()[:1]), {"/s/a": (1, 99)}))
        t.assertIsInstance(results[0], TryAgain)
        t.assertEqual(t.successResultOf(store.spool_offsets()), {"/s/a": (1, 10)})

    def test_offsets_share_the_group(self) -> None:
        """
        Calls queued while a commit runs share the next one, offsets merged (the
        later call's offset of a file wins).
        """
        t: Any = self
        store = self.make_store()
        release: list[Any] = []
        original = store._commit._runner

        def held(work: Any) -> Any:
            from twisted.internet.defer import Deferred

            d: Deferred[Any] = Deferred()
            release.append((work, d))
            return d

        store._commit._runner = held
        first = store.store(items(direct_lines()[:1]), {"/s/a": (1, 10)})
        second = store.store([], {"/s/a": (1, 20)})
        third = store.store(items(direct_lines()[1:2]), {"/s/a": (1, 30), "/s/b": (2, 5)})
        store._commit._runner = original
        work, d = release.pop()
        d.callback(work())
        while release:
            work, d = release.pop()
            d.callback(work())
        t.assertEqual(len(t.successResultOf(first)), 1)
        t.assertEqual(t.successResultOf(second), [])
        t.assertEqual(len(t.successResultOf(third)), 1)
        t.assertEqual(t.successResultOf(store.spool_offsets()), {"/s/a": (1, 30), "/s/b": (2, 5)})


class MemorySpoolOffsetsTests(SpoolOffsetsMixin, SynchronousTestCase):
    def make_store(self) -> Any:
        self.store = MemoryStore(Clock(), proxy_host=PROXY)
        return self.store

    def reopen(self, store: Any) -> Any:
        # The memory store keeps its backend: a "reopen" is the same store.
        return store


class SQLiteSpoolOffsetsTests(SpoolOffsetsMixin, SynchronousTestCase):
    def make_store(self, path: str | None = None) -> Any:
        if path is None:
            base = self.mktemp()
            os.makedirs(base)
            path = os.path.join(base, "store.sqlite")
        store = SQLiteStore(path, clock=Clock(), runner=run_now, policy=proxy_policy((), PROXY))
        self.addCleanup(store.close)
        return store

    def reopen(self, store: Any) -> Any:
        self.successResultOf(store.close())
        return self.make_store(store.path)

    def test_migration_v6(self) -> None:
        """
        A v5 database gets the (empty) offsets table; its events are kept.
        """
        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "store.sqlite")
        conn = connect(path)
        migrate(conn, 5)
        conn.execute("INSERT INTO jobs (jobid, status, nevents) VALUES ('j', '{}', 0)")
        conn.close()
        conn = connect(path)
        # Up to v6 only: later migrations are not this test's.
        self.assertEqual(migrate(conn, 6), 5)
        self.assertEqual(schema_version(conn), 6)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM spool_offsets").fetchone()[0], 0)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0], 1)
        conn.close()
