# -*- test-case-name: tests.unit.test_store_memory -*-
"""
Tests for the memory and work bounds of the SQLite store: the writer's job cache, the
query reader's parsed-status cache, the SQLite page cache and the jobs one filtered job
list page examines, each an option (C{--job-cache}, C{--query-cache},
C{--sqlite-cache}, C{--list-scan}).
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import JobStatus
from lbtwist.store import sqlite as sqlite_module
from lbtwist.store.batch import BatchPlan, JobRow, run_now
from lbtwist.store.query import JobCondition, JobQuery
from lbtwist.store.sqlite import PAGE_CACHE_KIB, Queries, SQLiteStore, set_page_cache
from lbtwist.testing import MemoryStore
from tests import traces
from tests.unit.test_store import items


def direct_job(n: int) -> tuple[str, list[str]]:
    """
    @return: the unique part and the lines of the C{n}th copy of a direct CREAM job.
    """
    source = traces.cream_done_ok_unpurged()
    old_unique = source[0].split('DG.JOBID="', 1)[1].split('"', 1)[0].rsplit("/", 1)[1]
    unique = f"CREAM{700000000 + n}"
    lines = [line.replace(old_unique, unique) for line in source]
    assert all(unique in line for line in lines)
    return unique, lines


class StoreMemoryTests(SynchronousTestCase):
    def make_store(self, **kwargs: Any) -> SQLiteStore:
        path = os.path.join(self.mktemp() + ".d", "store.sqlite")
        os.makedirs(os.path.dirname(path))
        store = SQLiteStore(path, clock=Clock(), runner=run_now, **kwargs)
        self.addCleanup(store.close)
        return store

    def fill(self, store: SQLiteStore, jobs: int) -> list[str]:
        uniques = []
        for n in range(jobs):
            unique, lines = direct_job(n)
            self.successResultOf(store.store(items(lines)))
            uniques.append(unique)
        return uniques

    def test_page_cache_on_both_connections(self) -> None:
        """
        The writer's and the reader's connection get the page cache given, in KiB,
        and no memory-mapped I/O.
        """
        store = self.make_store(page_cache=321)
        store.start()
        for conn in (store.backend.conn, store._reader):
            self.assertEqual(conn.execute("PRAGMA cache_size").fetchone()[0], -321)
            self.assertEqual(conn.execute("PRAGMA mmap_size").fetchone()[0], 0)
        default = self.make_store()
        default.start()
        self.assertEqual(
            default._reader.execute("PRAGMA cache_size").fetchone()[0], -PAGE_CACHE_KIB
        )

    def test_query_cache_bounded(self) -> None:
        """
        The reader keeps at most C{query_cache} parsed statuses, the most recently
        asked; a kept one is not parsed again while its stored form is unchanged.
        """
        store = self.make_store(query_cache=3)
        uniques = self.fill(store, 5)
        parsed: list[object] = []
        original = sqlite_module.status_from_json

        def counting(data: Any) -> Any:
            parsed.append(data)
            return original(data)

        self.patch(sqlite_module, "status_from_json", counting)
        for unique in uniques:
            found = self.successResultOf(store.find_status(unique))
            assert found is not None
            self.assertEqual(found[1].state, "Done")
        self.assertEqual(len(parsed), 5)
        queries = store._queries
        self.assertEqual(queries.status_cache, 3)
        self.assertEqual(len(queries._parsed), 3)
        # The last three are kept: asked again, they are not parsed.
        for unique in uniques[2:]:
            self.successResultOf(store.find_status(unique))
        self.assertEqual(len(parsed), 5)
        # The first was dropped: parsed again.
        self.successResultOf(store.find_status(uniques[0]))
        self.assertEqual(len(parsed), 6)
        self.assertEqual(len(queries._parsed), 3)

    def test_job_cache_bounded(self) -> None:
        """
        The writer keeps the statuses of at most C{cache_size} jobs; a job it
        dropped is read back from the database at its next event, status intact.
        """
        store = self.make_store(cache_size=2)
        uniques = self.fill(store, 4)
        self.assertEqual(len(store.processor._cache), 2)
        first = self.successResultOf(store.find_status(uniques[0]))
        assert first is not None
        self.assertEqual(first[1].state, "Done")

    def test_bad_bounds_refused(self) -> None:
        path = self.mktemp()
        for kwargs in ({"cache_size": 0}, {"query_cache": 0}, {"page_cache": 0}, {"list_scan": 0}):
            self.assertRaises(ValueError, SQLiteStore, path, clock=Clock(), **kwargs)
        self.assertFalse(os.path.exists(path))
        conn = sqlite_module.connect(":memory:")
        self.addCleanup(conn.close)
        self.assertRaises(ValueError, Queries, conn, status_cache=0)
        self.assertRaises(ValueError, Queries, conn, list_scan=0)
        self.assertRaises(ValueError, set_page_cache, conn, 0)


class MemoryOptionTests(SynchronousTestCase):
    def settings(self, *argv: str) -> config.Settings:
        options = tap.Options()
        options.parseOptions(["--state-dir", os.path.abspath(self.mktemp()), *argv])
        return options.settings

    def test_defaults(self) -> None:
        settings = self.settings()
        self.assertEqual(
            (settings.job_cache, settings.query_cache, settings.sqlite_cache, settings.list_scan),
            (
                config.DEFAULT_JOB_CACHE,
                config.DEFAULT_QUERY_CACHE,
                config.DEFAULT_SQLITE_CACHE,
                config.DEFAULT_LIST_SCAN,
            ),
        )

    def test_options_reach_the_store(self) -> None:
        settings = self.settings(
            *("--job-cache", "7", "--query-cache", "5", "--sqlite-cache", "99", "--list-scan", "3")
        )
        store = tap.make_store(settings, Clock())
        assert isinstance(store, SQLiteStore)
        self.assertEqual(
            (store._cache_size, store._query_cache, store._page_cache, store._list_scan),
            (7, 5, 99, 3),
        )

    def test_from_config_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[lbserver]\njob-cache = 11\nquery-cache = 12\nsqlite-cache = 13\nlist-scan = 14\n"
            )
        options = tap.ServerOptions()
        options.parseOptions(["--state-dir", os.path.abspath(self.mktemp()), "--config", path])
        settings = options.settings
        self.assertEqual(
            (settings.job_cache, settings.query_cache, settings.sqlite_cache), (11, 12, 13)
        )

    def test_non_positive_refused(self) -> None:
        for name in ("job-cache", "query-cache", "sqlite-cache", "list-scan"):
            option = config.OPTIONS_BY_NAME[name]
            self.assertRaises(InvalidValue, option.parse, name, "0")


class ListScanTests(SynchronousTestCase):
    """
    A page of a job list with conditions examines at most C{list_scan} jobs.
    """

    def stores(self, rows: list[Any], list_scan: int) -> tuple[MemoryStore, SQLiteStore]:
        memory = MemoryStore(Clock())
        memory.backend.write(BatchPlan(jobs=list(rows)))
        sqlite = SQLiteStore(self.mktemp(), clock=Clock(), runner=run_now, list_scan=list_scan)
        self.addCleanup(sqlite.close)
        sqlite.backend.write(BatchPlan(jobs=list(rows)))
        return memory, sqlite

    def test_no_match_pages_are_short(self) -> None:
        """
        A condition no job meets: each page examines 5 jobs and comes back empty
        with a cursor, until the last one.
        """
        rows = _rows(12, exit_code=lambda i: 0)
        _, sqlite = self.stores(rows, 5)
        query = JobQuery(owner=OWNER, conditions=(JobCondition("exit_code", (("=", 7),)),))
        pages = all_pages(sqlite, query)
        self.assertEqual(pages, [[], [], []])

    def test_unbounded_without_conditions(self) -> None:
        rows = _rows(12, exit_code=lambda i: 0)
        _, sqlite = self.stores(rows, 5)
        self.assertEqual(
            [len(p) for p in all_pages(sqlite, JobQuery(owner=OWNER, limit=100))], [12]
        )

    @settings(max_examples=60, deadline=None)
    @given(
        st.integers(0, 30),
        st.integers(1, 6),
        st.integers(1, 8),
        st.sampled_from([("=", 0), ("!=", 0), (">", 5), ("<", 2)]),
    )
    def test_same_jobs_in_order(self, n: int, list_scan: int, limit: int, alt: Any) -> None:
        """
        Bounded pages put together list the same jobs, in the same order, as the
        memory store's unbounded ones; no page holds more than C{limit} jobs.
        """
        rows = _rows(n, exit_code=lambda i: i % 7)
        memory, sqlite = self.stores(rows, list_scan)
        query = JobQuery(owner=OWNER, conditions=(JobCondition("exit_code", (alt,)),), limit=limit)
        bounded = all_pages(sqlite, query)
        self.assertTrue(all(len(p) <= limit for p in bounded))
        # At most one page per list_scan jobs, plus the pages that are full.
        whole = [j for p in all_pages(memory, query) for j in p]
        self.assertLessEqual(len(bounded), n // list_scan + len(whole) // limit + 1)
        self.assertEqual([j for p in bounded for j in p], whole)


def _rows(n: int, *, exit_code: Any) -> list[Any]:
    rows = []
    for i in range(n):
        data = JobStatus(
            state="Done",
            owner=OWNER,
            exit_code=exit_code(i),
            # Ties in the time (pairs of jobs) order by job id.
            lastUpdateTime=1_700_000_000_000_000 + (i // 2) * 1_000_000,
            jobId=f"https://ce.example.org:9000/CREAM{i:06d}",
        ).to_json_dict()
        rows.append(
            JobRow(
                str(data["jobId"]),
                OWNER,
                "Done",
                "CREAM",
                data["lastUpdateTime"],
                "cream",
                1,
                json.dumps(data),
            )
        )
    return rows


OWNER = "/DC=org/DC=example/CN=Lister"


def all_pages(store: Any, query: JobQuery) -> list[list[str]]:
    pages = []
    for _ in range(1000):
        page = _done(store.query_jobs(query))
        pages.append([j.jobid for j in page.jobs])
        if page.next is None:
            return pages
        query = attrs.evolve(query, after=page.next)
    raise AssertionError("more than 1000 pages")


def _done(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]
