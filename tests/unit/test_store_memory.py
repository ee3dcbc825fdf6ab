# -*- test-case-name: tests.unit.test_store_memory -*-
"""
Tests for the memory bounds of the SQLite store: the writer's job cache, the query
reader's parsed-status cache and the SQLite page cache, each an option
(C{--job-cache}, C{--query-cache}, C{--sqlite-cache}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.core.errors import InvalidValue
from lbtwist.store import sqlite as sqlite_module
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import PAGE_CACHE_KIB, Queries, SQLiteStore, set_page_cache
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
        for kwargs in ({"cache_size": 0}, {"query_cache": 0}, {"page_cache": 0}):
            self.assertRaises(ValueError, SQLiteStore, path, clock=Clock(), **kwargs)
        self.assertFalse(os.path.exists(path))
        conn = sqlite_module.connect(":memory:")
        self.addCleanup(conn.close)
        self.assertRaises(ValueError, Queries, conn, status_cache=0)
        self.assertRaises(ValueError, set_page_cache, conn, 0)


class MemoryOptionTests(SynchronousTestCase):
    def settings(self, *argv: str) -> config.Settings:
        options = tap.Options()
        options.parseOptions(["--state-dir", os.path.abspath(self.mktemp()), *argv])
        return options.settings

    def test_defaults(self) -> None:
        settings = self.settings()
        self.assertEqual(
            (settings.job_cache, settings.query_cache, settings.sqlite_cache),
            (config.DEFAULT_JOB_CACHE, config.DEFAULT_QUERY_CACHE, config.DEFAULT_SQLITE_CACHE),
        )

    def test_options_reach_the_store(self) -> None:
        settings = self.settings("--job-cache", "7", "--query-cache", "5", "--sqlite-cache", "99")
        store = tap.make_store(settings, Clock())
        assert isinstance(store, SQLiteStore)
        self.assertEqual((store._cache_size, store._query_cache, store._page_cache), (7, 5, 99))

    def test_from_config_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[lbserver]\njob-cache = 11\nquery-cache = 12\nsqlite-cache = 13\n")
        options = tap.ServerOptions()
        options.parseOptions(["--state-dir", os.path.abspath(self.mktemp()), "--config", path])
        settings = options.settings
        self.assertEqual(
            (settings.job_cache, settings.query_cache, settings.sqlite_cache), (11, 12, 13)
        )

    def test_non_positive_refused(self) -> None:
        for name in ("job-cache", "query-cache", "sqlite-cache"):
            option = config.OPTIONS_BY_NAME[name]
            self.assertRaises(InvalidValue, option.parse, name, "0")
