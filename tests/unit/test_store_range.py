# -*- test-case-name: tests.unit.test_store_range -*-
"""
Tests for the bounded history read C{events_range} of both stores.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.translate import proxy_policy
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from lbtwist.testing import MemoryStore
from tests import traces
from tests.unit.test_store import PROXY, direct_lines, items


class RangeMixin:
    """
    C{events_range}: at most C{limit} events after an arrival number, by arrival.
    """

    def make_store(self) -> Any:
        raise NotImplementedError

    def filled(self) -> tuple[Any, list[str]]:
        store = self.make_store()
        lines = direct_lines()
        self.successResultOf(store.store(items(lines)))  # type: ignore[attr-defined]
        return store, lines

    def read(self, store: Any, after: int, limit: int) -> list[Any]:
        return self.successResultOf(  # type: ignore[attr-defined,no-any-return]
            store.events_range(traces.DIRECT_JOBID, after, limit)
        )

    def test_pages(self) -> None:
        """
        Pages of two, read one after the other, give every event once, by arrival.
        """
        store, lines = self.filled()
        seen: list[Any] = []
        after = 0
        while True:
            page = self.read(store, after, 2)
            self.assertLessEqual(len(page), 2)  # type: ignore[attr-defined]
            if not page:
                break
            seen.extend(page)
            after = page[-1].seqno
        self.assertEqual([s.seqno for s in seen], list(range(1, len(lines) + 1)))  # type: ignore[attr-defined]
        self.assertEqual([s.line for s in seen], lines)  # type: ignore[attr-defined]
        self.assertEqual(seen[0].jobid, traces.DIRECT_JOBID)  # type: ignore[attr-defined]

    def test_window(self) -> None:
        store, lines = self.filled()
        page = self.read(store, 2, 3)
        self.assertEqual([s.seqno for s in page], [3, 4, 5])  # type: ignore[attr-defined]
        self.assertEqual(self.read(store, len(lines), 10), [])  # type: ignore[attr-defined]
        self.assertEqual(len(self.read(store, 0, 1000)), len(lines))  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            self.successResultOf(  # type: ignore[attr-defined]
                store.events_range("https://x.example.org:9000/none", 0, 5)
            ),
            [],
        )


class MemoryRangeTests(RangeMixin, SynchronousTestCase):
    def make_store(self) -> MemoryStore:
        return MemoryStore(Clock(), proxy_host=PROXY)


class SQLiteRangeTests(RangeMixin, SynchronousTestCase):
    def make_store(self) -> SQLiteStore:
        path = os.path.join(self.mktemp() + ".d", "store.sqlite")
        os.makedirs(os.path.dirname(path))
        store = SQLiteStore(path, clock=Clock(), runner=run_now, policy=proxy_policy((), PROXY))
        self.addCleanup(store.close)
        return store

    def test_limit_in_sql(self) -> None:
        """
        The read is bounded by the query, not by slicing a full load.
        """
        store, _ = self.filled()
        statements: list[str] = []
        store._reader.set_trace_callback(statements.append)
        self.read(store, 1, 2)
        self.assertTrue(any("LIMIT" in s and "seqno >" in s for s in statements), statements)
