# -*- test-case-name: tests.unit.test_store_sqlite -*-
"""
Tests for L{lbtwist.store.sqlite}: the store rules on SQLite, durability across a
restart, disk full, schema migrations, the real writer thread; and the ceiling bench.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bench.sqlite_ceiling import measure
from lbtwist.core.errors import LBError, NoSpace, TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.states import compute_status
from lbtwist.core.translate import proxy_policy
from lbtwist.store import batch
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import (
    SCHEMA_VERSION,
    WAL_BACKSTOP_PAGES,
    SQLiteReader,
    SQLiteStore,
    WalCheckpointer,
    connect,
    migrate,
    schema_version,
    translate_error,
)
from tests import traces
from tests.unit.test_store import (
    PROXY,
    StoreRulesMixin,
    direct_lines,
    fail_backend_write,
    items,
    record_sqlite_stores,
    store_options,
    wms_lines,
)


def check_store_option(
    case: SynchronousTestCase,
    option: str,
    keyword: str,
    default: float,
    given: str,
    expected: float,
) -> None:
    """
    A service option reaches the SQLite store as C{keyword}: C{default} without it,
    C{expected} with C{option given}; C{option 0} is refused.
    """
    from lbtwist import tap

    built = record_sqlite_stores(case)
    for args, value in (((), default), ((option, given), expected)):
        options = tap.Options()
        options.parseOptions(["--state-dir", case.mktemp(), *args])
        tap.makeService(options, reactor=Clock())
        case.assertAlmostEqual(built[-1][keyword], value)
    options = tap.Options()
    case.assertRaises(
        usage.UsageError, options.parseOptions, ["--state-dir", case.mktemp(), option, "0"]
    )


class SQLiteStoreRulesTests(StoreRulesMixin, SynchronousTestCase):
    """
    The store contract on SQLite, with a synchronous runner.
    """

    def setUp(self) -> None:
        self.path = ""
        self.stores: list[SQLiteStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def make_store(self, **kwargs: Any) -> SQLiteStore:
        store_options(kwargs)
        path = kwargs.pop("path", None)
        if path is None:
            # A fresh file for every store a test makes, unless it reopens one.
            path = self.path = os.path.join(self.mktemp() + ".d", "store.sqlite")
            os.makedirs(os.path.dirname(path))
        store = SQLiteStore(path, **kwargs)
        self.stores.append(store)
        return store

    def fail_next_write(self, store: Any, error: LBError) -> None:
        fail_backend_write(store, error)

    def reopen(self, store: SQLiteStore, **kwargs: Any) -> SQLiteStore:
        self.successResultOf(store.close())
        self.stores.remove(store)
        return self.make_store(path=store.path, **kwargs)

    def test_pragmas(self) -> None:
        store = self.make_store()
        conn = store.backend.conn
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)

    def test_restart_keeps_status(self) -> None:
        """
        After a restart the status comes from the jobs table: an in-order event
        advances it without reading any stored event again.
        """
        store = self.make_store()
        lines = wms_lines()
        self.store_ok(store, lines[:-1])
        before = self.successResultOf(store.status(traces.WMS_JOBID))
        store = self.reopen(store)
        self.assertEqual(
            self.successResultOf(store.status(traces.WMS_JOBID)).to_json_dict(),
            before.to_json_dict(),
        )
        results = self.store_ok(store, lines[-1:])
        self.assertEqual(store.processor.reparsed, 0)
        self.assertEqual(store.processor.recomputes, 0)
        self.assertEqual(results[0].status.state, "Done")
        # A duplicate of an event stored before the restart is still one.
        self.assertTrue(self.store_ok(store, lines[:1])[0].duplicate)

    def test_restart_then_late_event(self) -> None:
        """
        An out-of-order event after a restart recomputes from the stored lines.
        """
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:3] + lines[4:])
        store = self.reopen(store)
        self.store_ok(store, lines[3:4])
        self.assertEqual(store.processor.recomputes, 1)
        self.assertEqual(store.processor.reparsed, len(lines) - 1)
        status = self.successResultOf(store.status(traces.DIRECT_JOBID))
        stored = self.successResultOf(store.events(traces.DIRECT_JOBID))
        self.assertEqual([s.line for s in stored], lines)
        self.assertEqual(status.state, "Cleared")

    def test_disk_full(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:1])
        conn = store.backend.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [(line + ' DG.PADDING="' + "p" * 200_000 + '"', ev) for line, ev in items(lines[1:4])]
        results = self.successResultOf(store.store(big))
        self.assertEqual(len(results), 3)
        for result in results:
            self.assertIsInstance(result, NoSpace)
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 1)
        conn.execute("PRAGMA max_page_count = 1073741823")
        results = self.store_ok(store, lines[1:4])
        self.assertEqual([r.seqno for r in results], [2, 3, 4])

    def test_locked(self) -> None:
        """
        Another SQLite error (a locked database) is EAGAIN; the store keeps working.
        """
        store = self.make_store()
        store.backend.conn.execute("PRAGMA busy_timeout = 0")
        other = connect(self.path)
        other.execute("BEGIN IMMEDIATE")
        results = self.successResultOf(store.store(items(direct_lines()[:1])))
        self.assertIsInstance(results[0], TryAgain)
        other.execute("ROLLBACK")
        other.close()
        self.assertEqual(self.store_ok(store, direct_lines()[:1])[0].seqno, 1)

    def test_translate_error(self) -> None:
        self.assertIsInstance(
            translate_error(sqlite3.OperationalError("database or disk is full")), NoSpace
        )
        self.assertIsInstance(translate_error(sqlite3.OperationalError("disk I/O error")), TryAgain)
        self.assertIsNone(translate_error(ValueError("x")))

    def test_reader(self) -> None:
        store = self.make_store()
        self.store_ok(store, wms_lines() + direct_lines())
        reader = SQLiteReader(self.path)
        self.addCleanup(reader.close)
        self.assertEqual(reader.status(traces.WMS_JOBID).state, "Done")
        self.assertEqual(
            reader.resolve(f"https://{traces.CE_HOST}:8443/{traces.WMS_CREAM_ID}"),
            traces.WMS_JOBID,
        )
        self.assertEqual([s.line for s in reader.events(traces.DIRECT_JOBID)], direct_lines())
        self.assertEqual(len(reader.dump()), len(self.successResultOf(store.dump())))
        self.assertEqual(len(reader.jobs()), 2)
        self.assertRaises(sqlite3.OperationalError, reader.conn.execute, "DELETE FROM jobs")

    def test_reader_old_schema(self) -> None:
        path = self.mktemp()
        conn = connect(path)
        migrate(conn, 1)
        conn.close()
        self.assertRaises(LBError, SQLiteReader, path)


class ConstructionTests(SynchronousTestCase):
    def test_bad_tuning_refused_at_once(self) -> None:
        """
        Out-of-range tuning and unknown arguments fail when the store is built
        (in C{makeService}), not when it starts after C{twistd} has forked.
        """
        path = self.mktemp()
        for kwargs in ({"checkpoint_every": 0}, {"refold_slice": 0}, {"max_future_skew": -1}):
            self.assertRaises(ValueError, SQLiteStore, path, clock=Clock(), **kwargs)
        self.assertRaises(TypeError, SQLiteStore, path, clock=Clock(), proxy_host=PROXY)
        self.assertFalse(os.path.exists(path))


class OpenReaderTests(SynchronousTestCase):
    """
    L{lbtwist.store.open_reader}: the command line's way into a state directory's store.
    """

    def test_reads_state_dir(self) -> None:
        """
        The store that C{twistd} keeps in a state directory is read, then closed.
        """
        from lbtwist.store import STORE_FILE, open_reader, store_path

        state_dir = self.mktemp()
        os.makedirs(state_dir)
        self.assertEqual(store_path(state_dir), os.path.join(state_dir, STORE_FILE))
        store = SQLiteStore(
            store_path(state_dir),
            clock=Clock(),
            runner=run_now,
            policy=proxy_policy((), PROXY),
        )
        self.successResultOf(store.store(items(wms_lines() + direct_lines())))
        self.successResultOf(store.close())
        with open_reader(state_dir) as reader:
            self.assertEqual(reader.status(traces.WMS_JOBID).state, "Done")  # type: ignore[union-attr]
            self.assertEqual([s.line for s in reader.events(traces.DIRECT_JOBID)], direct_lines())
            self.assertEqual(
                reader.resolve(f"https://{traces.CE_HOST}:8443/{traces.WMS_CREAM_ID}"),
                traces.WMS_JOBID,
            )
            self.assertEqual(len(reader.outbox_pending()), len(wms_lines()) + 4)
            conn = reader.conn  # type: ignore[attr-defined]
        self.assertRaises(sqlite3.ProgrammingError, conn.execute, "SELECT 1")

    def test_no_store(self) -> None:
        """
        A directory without a store is a L{FileNotFoundError} naming the file.
        """
        from lbtwist.store import open_reader

        state_dir = self.mktemp()
        os.makedirs(state_dir)
        with self.assertRaises(FileNotFoundError) as caught:
            with open_reader(state_dir):
                pass
        self.assertEqual(caught.exception.filename, os.path.join(state_dir, "lbtwist.sqlite"))
        self.assertFalse(os.path.exists(os.path.join(state_dir, "lbtwist.sqlite")))

    def test_other_schema(self) -> None:
        from lbtwist.store import open_reader, store_path

        state_dir = self.mktemp()
        os.makedirs(state_dir)
        conn = connect(store_path(state_dir))
        migrate(conn, 1)
        conn.close()
        with self.assertRaises(LBError):
            with open_reader(state_dir):
                pass


class MigrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()

    def open(self) -> SQLiteStore:
        store = SQLiteStore(
            self.path, clock=Clock(), runner=run_now, policy=proxy_policy((), PROXY)
        )
        self.addCleanup(store.close)
        return store

    def test_empty_file(self) -> None:
        open(self.path, "wb").close()
        store = self.open()
        self.assertEqual(schema_version(store.backend.conn), SCHEMA_VERSION)
        tables = {
            row[0]
            for row in store.backend.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )
        }
        self.assertTrue({"events", "jobs", "cream_map", "outbox"} <= tables)

    def test_from_version_1(self) -> None:
        """
        A version 1 database gets duplicate keys for its events and an outbox.
        """
        line = direct_lines()[0]
        ev = parse_event(line)
        conn = connect(self.path)
        self.assertEqual(migrate(conn, 1), 0)
        self.assertEqual(schema_version(conn), 1)
        conn.execute(
            "INSERT INTO events (id, jobid, seqno, arrived, type, date, source, host, level,"
            " user_dn, seqcode, priority, line) VALUES (1, ?, 1, 5, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (ev.jobid, ev.type, ev.date, ev.source, ev.host, ev.level, ev.user, ev.seqcode, line),
        )
        status = compute_status([(ev, 1)])
        conn.execute(
            "INSERT INTO jobs (jobid, state, nevents, status) VALUES (?, ?, 1, ?)",
            (ev.jobid, status.state, json.dumps(status.to_json_dict())),
        )
        conn.close()
        store = self.open()
        self.assertEqual(schema_version(store.backend.conn), SCHEMA_VERSION)
        key = store.backend.conn.execute("SELECT dupkey FROM events WHERE id = 1").fetchone()[0]
        self.assertEqual(key, batch.dupkey(batch.identity(ev)))
        # The old event is found by its backfilled key; the next one gets seqno 2.
        lines = direct_lines()
        results = self.successResultOf(store.store(items(lines[:2])))
        self.assertEqual([(r.duplicate, r.seqno) for r in results], [(True, None), (False, 2)])
        self.assertEqual(self.successResultOf(store.status(ev.jobid)).event_count, 2)

    def test_newer_version_refused(self) -> None:
        conn = connect(self.path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        store = SQLiteStore(self.path, clock=Clock(), runner=run_now)
        self.assertRaises(LBError, store.start)

    def test_opened_on_start(self) -> None:
        """
        Constructing the store touches nothing on disk (twistd forks after building its
        services); start() creates and migrates the database.
        """
        store = SQLiteStore(self.path, clock=Clock(), runner=run_now)
        self.addCleanup(store.close)
        self.assertFalse(os.path.exists(self.path))
        store.start()
        conn = connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)

    def test_failed_migration_rolls_back(self) -> None:
        conn = connect(self.path)
        migrate(conn, 1)
        conn.execute("CREATE TABLE outbox (x)")  # makes migration 2 fail
        self.assertRaises(sqlite3.OperationalError, migrate, conn)
        self.assertEqual(schema_version(conn), 1)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        self.assertNotIn("dupkey", columns)
        conn.close()


class ThreadedStoreTests(TestCase):
    """
    The real writer and reader threads, with the real reactor.
    """

    @inlineCallbacks
    def test_threads(self) -> Any:
        path = self.mktemp()
        store = SQLiteStore(path, clock=reactor, policy=proxy_policy((), PROXY))
        lines = wms_lines()
        ds = [store.store(items([line])) for line in lines]
        results = []
        for d in ds:
            results.extend((yield d))
        self.assertEqual([r.duplicate for r in results], [False] * len(lines))
        self.assertLess(store.commits, len(lines) + 1)
        status = yield store.status(traces.WMS_JOBID)
        self.assertEqual(status.state, "Done")
        outbox = yield store.outbox_pending()
        self.assertEqual(len(outbox), len(lines) + 4)
        yield store.close()
        self.assertEqual(store._pools, [])


class CeilingBenchTests(SynchronousTestCase):
    def test_measure(self) -> None:
        result = measure(self.mktemp(), 16, 40)
        self.assertEqual(result["rows"], 40)
        self.assertEqual(result["commits"], 3)
        self.assertGreater(result["rows_per_s"], 0)
        self.assertGreater(result["commits_per_s"], 0)


class SwitchIntervalTests(TestCase):
    """
    The store's own threads come with the thread switch interval it is given.
    """

    def setUp(self) -> None:
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())

    @inlineCallbacks
    def test_set_with_threads(self) -> Any:
        """
        The interval is set when the store starts its threads, which then commit as
        before.
        """
        sys.setswitchinterval(0.005)
        store = SQLiteStore(self.mktemp(), clock=reactor, switch_interval=0.0007)
        self.assertEqual(sys.getswitchinterval(), 0.005)  # nothing before start
        store.start()
        self.assertAlmostEqual(sys.getswitchinterval(), 0.0007)
        results = yield store.store(items(direct_lines()))
        self.assertEqual(len(results), len(direct_lines()))
        yield store.close()

    def test_not_without_threads(self) -> None:
        """
        A store given a runner starts no threads and leaves the interval alone.
        """
        sys.setswitchinterval(0.005)
        store = SQLiteStore(self.mktemp(), clock=Clock(), runner=run_now, switch_interval=0.0007)
        store.start()
        self.addCleanup(store.close)
        self.assertEqual(sys.getswitchinterval(), 0.005)

    def test_bad_interval(self) -> None:
        for bad in (0.0, -1.0):
            self.assertRaises(
                ValueError, SQLiteStore, self.mktemp(), clock=Clock(), switch_interval=bad
            )

    def test_service_option(self) -> None:
        """
        C{--thread-switch-interval} (microseconds, default 500) reaches the store.
        """
        check_store_option(
            self, "--thread-switch-interval", "switch_interval", 0.0005, "200", 0.0002
        )


class WalCheckpointerTests(SynchronousTestCase):
    """
    L{WalCheckpointer}: the log's pages copied on a connection of its own, only
    after commits, errors counted and logged.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.conn = connect(self.path)
        self.addCleanup(self.conn.close)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.conn.execute("CREATE TABLE t (x BLOB)")
        self.commits = 0
        self.checkpointer = WalCheckpointer(self.path, 0.1, lambda: self.commits)
        self.checkpointer.open()
        self.addCleanup(self.checkpointer.stop)

    def write(self, rows: int) -> None:
        self.conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * rows)
        self.commits += 1

    def pending_frames(self) -> int:
        # A passive checkpoint that finds nothing to copy: log frames minus copied ones.
        _, log_frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(log_frames) - int(copied)

    def test_copies_after_commits_only(self) -> None:
        self.write(200)
        size = os.path.getsize(self.path)
        self.assertTrue(self.checkpointer.run_once())
        self.assertGreater(os.path.getsize(self.path), size)  # the pages are in the file
        self.assertEqual(self.pending_frames(), 0)
        self.assertFalse(self.checkpointer.run_once())  # no commit since
        self.write(10)
        self.assertTrue(self.checkpointer.run_once())
        self.assertEqual(self.checkpointer.passes, 2)

    def test_error_counted_and_logged_once(self) -> None:
        logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        assert self.checkpointer._conn is not None
        self.checkpointer._conn.close()  # every pass now fails
        for _ in range(3):
            self.write(1)
            self.assertFalse(self.checkpointer.run_once())
        self.assertEqual((self.checkpointer.errors, self.checkpointer.passes), (3, 0))
        failures = [e for e in logged if "WAL checkpoint failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.checkpointer._conn = None

    def test_bad_interval(self) -> None:
        for bad in (0.0, -1.0):
            self.assertRaises(ValueError, WalCheckpointer, self.path, bad, lambda: 0)
            self.assertRaises(
                ValueError, SQLiteStore, self.mktemp(), clock=Clock(), wal_checkpoint_interval=bad
            )


class ThreadedCheckpointTests(TestCase):
    """
    A store with its own threads runs its checkpointer, the writer's own automatic
    checkpoint raised to the backstop, and stops it when it closes.
    """

    @inlineCallbacks
    def test_with_threads(self) -> Any:
        store = SQLiteStore(self.mktemp(), clock=reactor, wal_checkpoint_interval=0.01)
        store.start()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        backstop = store.backend.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.assertEqual(backstop, WAL_BACKSTOP_PAGES)
        yield store.store(items(direct_lines()))
        yield store.close()
        self.assertIsNone(checkpointer._thread)
        self.assertIsNone(checkpointer._conn)

    def test_not_without_threads(self) -> None:
        store = SQLiteStore(self.mktemp(), clock=Clock(), runner=run_now)
        store.start()
        self.addCleanup(store.close)
        self.assertIsNone(store._checkpointer)
        self.assertEqual(
            store.backend.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 1000
        )

    def test_service_option(self) -> None:
        """
        C{--wal-checkpoint-interval} (seconds, default 0.1) reaches the store.
        """
        check_store_option(
            self, "--wal-checkpoint-interval", "wal_checkpoint_interval", 0.1, "0.5", 0.5
        )


class ThreadRunnerTests(SynchronousTestCase):
    """
    The writer thread's runner counts the work handed to it and not started yet.
    """

    def test_waiting(self) -> None:
        from lbtwist.store.sqlite import ThreadRunner

        class Pool:
            def __init__(self) -> None:
                self.calls: list[Any] = []

            def callInThreadWithCallback(self, on_result: Any, f: Any) -> None:
                self.calls.append((on_result, f))

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                f(*args)

        pool = Pool()
        runner = ThreadRunner(Reactor(), pool)  # type: ignore[arg-type]  # stand-ins
        first = runner(lambda: 1)
        runner(lambda: 2)
        self.assertEqual(runner.waiting, 2)
        on_result, f = pool.calls.pop(0)
        on_result(True, f())
        self.assertEqual(runner.waiting, 1)
        self.assertEqual(self.successResultOf(first), 1)
