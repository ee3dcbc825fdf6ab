# -*- test-case-name: tests.unit.test_store_fold -*-
"""
Tests for the status fold of L{lbtwist.store.batch}: checkpoints, late events refolded
from the nearest checkpoint in bounded slices (also across a restart), duplicate keys
of big jobs, future-dated events; on the memory store and on SQLite.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.events import parse_event
from lbtwist.core.states import compute_status
from lbtwist.core.translate import proxy_policy
from lbtwist.store.batch import (
    BatchProcessor,
    decode_key,
    encode_key,
    run_now,
)
from lbtwist.store.interface import StoreResult
from lbtwist.store.sqlite import SQLiteBackend, SQLiteStore, connect, migrate
from lbtwist.tap import Options
from lbtwist.testing import MemoryBackend, MemoryStore
from tests import traces
from tests.logcapture import capture_log
from tests.unit.test_store import (
    PROXY,
    comparable,
    fail_backend_write,
    items,
    record_sqlite_stores,
)

JOBID = traces.DIRECT_JOBID
HOUR = 3600 * 1_000_000
#: Arrival time of the tests' events: a day after the traces' dates.
NOW = parse_event(traces.cream_done_ok()[0]).date + 24 * HOUR


def big_job(n: int, offset: int = 0) -> list[str]:
    """
    A direct CREAM job of C{n} events: the trace's RegJob, then status notifications
    one second apart (a DONE one every tenth, moving the state).
    """
    lines = [traces.cream_done_ok()[0]]
    states = ("IDLE", "RUNNING", "REALLY-RUNNING", "HELD")
    for i in range(1, n):
        lines.append(status_line(i + offset, 10 + i, states[i % 4], states[(i + 1) % 4], i))
    return lines


def status_line(n: int, seconds: int, old: str, new: str, kind: int = 0) -> str:
    return traces.ulm_line(
        "CREAMStatus",
        date=traces.date_text(seconds),
        host=traces.CE_HOST,
        source="CREAMExecutor",
        jobid=JOBID,
        seqcode=f"no_seqcodes_with_cream_{n}",
        result="DONE" if kind % 10 == 0 else "ARRIVED",
        old_state=old,
        new_state=new,
    )


class KeyEncodingTests(SynchronousTestCase):
    """
    L{encode_key}: bytes that sort as the ordering keys do, and back.
    """

    ints = st.one_of(
        st.integers(0, 1 << 64),
        st.integers(-(1 << 70), 1 << 70),
        st.sampled_from([0, 1, -1, (1 << 64) - 1, 1 << 64, -(1 << 64) + 1, -(1 << 64)]),
    )

    @settings(max_examples=300)
    @given(st.lists(ints, max_size=13), st.lists(ints, max_size=13))
    def test_order_and_inverse(self, a: list[int], b: list[int]) -> None:
        self.assertEqual(decode_key(encode_key(a)), a)
        self.assertEqual(encode_key(a) < encode_key(b), a < b)
        self.assertEqual(encode_key(a) == encode_key(b), a == b)


class FoldRulesMixin:
    """
    The fold rules on one backend; subclasses say how to make a store.
    """

    def make_store(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def store(self, store: Any, lines: list[str]) -> list[StoreResult]:
        results = self.successResultOf(store.store(items(lines)))  # type: ignore[attr-defined]
        for r in results:
            self.assertIsInstance(r, StoreResult)  # type: ignore[attr-defined]
        return results  # type: ignore[no-any-return]

    def status(self, store: Any) -> Any:
        return self.successResultOf(store.status(JOBID))  # type: ignore[attr-defined]

    def expected(self, store: Any) -> Any:
        stored = self.successResultOf(store.events(JOBID))  # type: ignore[attr-defined]
        return compute_status((s.event, s.seqno) for s in stored)

    def drain(self, store: Any) -> int:
        """
        Run the background groups until no refold is pending; @return: how many.
        """
        n = 0
        while store.processor.pending():
            store.clock.advance(0)
            n += 1
            self.assertLess(n, 10_000)  # type: ignore[attr-defined]
        return n

    def test_late_event_reads_after_checkpoint(self) -> None:
        """
        A late event refolds from the nearest checkpoint before it: only the events
        after that checkpoint are read again, not the whole job.
        """
        store = self.make_store(checkpoint_every=50)
        lines = big_job(600)
        self.store(store, lines[:590] + lines[595:])
        self.assertEqual(store.processor.reparsed, 0)
        self.store(store, lines[590:591])
        # The checkpoint at 550 events, then events 551..595 of the stored ones.
        self.assertLessEqual(store.processor.reparsed, 50)
        self.assertGreater(store.processor.reparsed, 0)
        self.assertFalse(store.processor.pending())
        self.assertEqual(comparable(self.status(store)), comparable(self.expected(store)))
        # In order again: incremental.
        before = store.processor.reparsed
        self.store(store, [status_line(9999, 5000, "IDLE", "RUNNING")])
        self.assertEqual(store.processor.reparsed, before)

    def test_refold_in_slices(self) -> None:
        """
        A refold bigger than the slice goes on in later (background) groups, at most a
        slice per group; meanwhile the stored status is the one before, flagged.
        """
        store = self.make_store(checkpoint_every=16, refold_slice=20)
        lines = big_job(200)
        self.store(store, lines[:1] + lines[2:])
        before = self.status(store)
        self.assertEqual(before.event_count, 199)
        folded = store.processor.refolded
        self.store(store, lines[1:2])
        self.assertTrue(store.processor.pending())
        self.assertLessEqual(store.processor.refolded - folded, 20)
        self.assertEqual(comparable(self.status(store)), comparable(before))
        slices = []
        while store.processor.pending():
            folded = store.processor.refolded
            # What a background group runs (GroupCommitTests: when).
            self.assertEqual(store.processor.process([]), [])  # type: ignore[attr-defined]
            slices.append(store.processor.refolded - folded)
            self.assertEqual(comparable(self.status(store)), comparable(before))  # type: ignore[attr-defined]
            self.assertLess(len(slices), 100)  # type: ignore[attr-defined]
            if len(slices) == 3:
                break
        self.assertEqual(slices, [20, 20, 20])
        self.drain(store)
        status = self.status(store)
        self.assertEqual(status.event_count, 200)
        self.assertEqual(comparable(status), comparable(self.expected(store)))

    def test_refold_moves_back(self) -> None:
        """
        Events arriving during a refold, in order or before its progress, all end up
        in the status.
        """
        store = self.make_store(checkpoint_every=8, refold_slice=10)
        lines = big_job(120)
        self.store(store, lines[:1] + lines[3:100])
        self.store(store, lines[2:3])
        self.assertTrue(store.processor.pending())
        store.processor.process([])
        self.store(store, lines[100:110])
        self.store(store, lines[1:2])
        self.store(store, lines[110:])
        self.drain(store)
        status = self.status(store)
        self.assertEqual(status.event_count, 120)
        self.assertEqual(comparable(status), comparable(self.expected(store)))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
    )
    @given(
        st.permutations(list(range(40))),
        st.integers(1, 7),
        st.integers(1, 30),
        st.data(),
    )
    def test_any_order_with_checkpoints(
        self, order: list[int], every: int, slice_: int, data: Any
    ) -> None:
        """
        Any arrival order, in any split into commit groups, with checkpoints and slices
        of any size, gives (once the refolds are done) the status of the sorted events.
        """
        lines = traces.cream_done_ok() + [
            status_line(100 + i, 300 + i, "RUNNING", "HELD", i) for i in range(18)
        ]
        self.assertEqual(len(lines), 40)  # type: ignore[attr-defined]
        expected = compute_status((ev, n) for n, (_, ev) in enumerate(items(lines), 1))
        store = self.make_store(checkpoint_every=every, refold_slice=slice_)
        pending = [lines[i] for i in order]
        while pending:
            size = data.draw(st.integers(1, len(pending)))
            self.store(store, pending[:size])
            pending = pending[size:]
            if data.draw(st.booleans()):
                store.clock.advance(0)
        self.drain(store)
        self.assertEqual(comparable(self.status(store)), comparable(expected))

    def test_future_dated_not_anchor(self) -> None:
        """
        An event dated beyond the skew is stored, ordered as dated at its arrival, and
        logged once per job; the events after it are applied incrementally.
        """
        logged = capture_log(self)
        store = self.make_store(max_future_skew=HOUR)
        lines = big_job(60)
        # Arriving as dated (the far-future one as its predecessor).
        store.clock.advance(parse_event(lines[9]).date / 1e6)
        future = lines[10].replace("DATE=2024", "DATE=9999")
        second = lines[20].replace("DATE=2024", "DATE=9999")
        self.store(store, lines[:10] + [future])
        store.clock.advance((parse_event(lines[19]).date - parse_event(lines[9]).date) / 1e6)
        self.store(store, lines[11:20] + [second])
        self.store(store, lines[21:])
        self.assertEqual(store.processor.recomputes, 0)
        status = self.status(store)
        self.assertEqual(status.event_count, 60)
        self.assertLessEqual(status.last_key[1], parse_event(lines[59]).date)
        stored = self.successResultOf(store.events(JOBID))  # type: ignore[attr-defined]
        self.assertEqual(stored[20].line, second)
        warnings = [e for e in logged if "ahead of its arrival" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["jobid"], JOBID)

    def test_future_dated_log_rate_limited(self) -> None:
        """
        Future-dated events of many jobs give at most one log line a second (of arrival
        time), which counts the jobs not logged since the one before.
        """
        logged = capture_log(self)
        store = self.make_store(max_future_skew=HOUR)
        store.clock.advance(NOW / 1e6)
        line = traces.cream_done_ok()[0].replace("DATE=2024", "DATE=9999")
        jobs = [line.replace("CREAM812461375", f"CREAM{n:09d}") for n in range(50)]
        self.store(store, jobs[:30])
        store.clock.advance(1)
        self.store(store, jobs[30:])
        warnings = [e for e in logged if "ahead of its arrival" in e.get("log_format", "")]
        self.assertEqual([w["suppressed"] for w in warnings], [0, 29])  # type: ignore[attr-defined]

    def test_future_skew_within(self) -> None:
        """
        Within the skew an event's DATE orders it: a later-dated event arriving first
        makes the one dated before it late.
        """
        store = self.make_store(max_future_skew=HOUR)
        store.clock.advance(NOW / 1e6)
        lines = big_job(5)
        self.store(store, lines[:3] + lines[4:])
        self.store(store, lines[3:4])
        self.assertEqual(store.processor.recomputes, 1)

    def test_big_job_keys_are_a_set(self) -> None:
        """
        A big job's duplicate keys are a set (no scan, no copy per event); duplicates
        are still found, new events need no lookup.
        """
        store = self.make_store()
        lines = big_job(300)
        self.store(store, lines[:200])
        results = self.store(store, lines[150:151] + lines[200:])
        self.assertEqual([r.duplicate for r in results[:2]], [True, False])
        self.assertEqual(store.processor.lookups, 1)
        self.assertIsInstance(store.processor._cache[JOBID][2], set)
        store.processor._cache.clear()
        results = self.store(store, lines[299:] + [status_line(5000, 9000, "IDLE", "HELD")])
        self.assertEqual([r.duplicate for r in results], [True, False])
        self.assertIsInstance(store.processor._cache[JOBID][2], set)

    def test_failed_write_during_refold(self) -> None:
        """
        A write failing while a refold is under way loses nothing: the refold resumes
        from the stored checkpoints.
        """
        from lbtwist.core.errors import NoSpace

        store = self.make_store(checkpoint_every=10, refold_slice=15)
        lines = big_job(100)
        self.store(store, lines[:1] + lines[2:90])
        self.store(store, lines[1:2])
        store.processor.process([])
        self.fail_next_write(store, NoSpace("disk full"))  # type: ignore[attr-defined]
        failed = self.successResultOf(store.store(items(lines[90:95])))  # type: ignore[attr-defined]
        self.assertIsInstance(failed[0], NoSpace)  # type: ignore[attr-defined]
        self.store(store, lines[90:])
        self.drain(store)
        status = self.status(store)
        self.assertEqual(status.event_count, 100)
        self.assertEqual(comparable(status), comparable(self.expected(store)))


class MemoryFoldTests(FoldRulesMixin, SynchronousTestCase):
    def make_store(self, **kwargs: Any) -> MemoryStore:
        return MemoryStore(Clock(), proxy_host=PROXY, **kwargs)

    def fail_next_write(self, store: MemoryStore, error: Exception) -> None:
        store.backend.fail_next = error  # type: ignore[assignment]


class SQLiteFoldTests(FoldRulesMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.stores: list[SQLiteStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def make_store(self, path: str | None = None, **kwargs: Any) -> SQLiteStore:
        if path is None:
            path = os.path.join(self.mktemp() + ".d", "store.sqlite")
            os.makedirs(os.path.dirname(path))
        store = SQLiteStore(
            path, clock=Clock(), runner=run_now, policy=proxy_policy((), PROXY), **kwargs
        )
        store.clock = store._clock  # type: ignore[attr-defined]
        self.stores.append(store)
        return store

    def fail_next_write(self, store: SQLiteStore, error: Exception) -> None:
        fail_backend_write(store, error)

    def test_refold_resumes_after_restart(self) -> None:
        """
        A refold under way when the store closes is resumed by the next one (the job's
        refold flag and checkpoints are stored), giving the status of all events.
        """
        store = self.make_store(checkpoint_every=16, refold_slice=20)
        lines = big_job(200)
        self.store(store, lines[:1] + lines[2:])
        self.store(store, lines[1:2])
        store.processor.process([])
        self.assertTrue(store.processor.pending())
        self.successResultOf(store.close())
        self.stores.remove(store)
        flagged = connect(store.path).execute("SELECT refold FROM jobs").fetchall()
        self.assertEqual(flagged, [(1,)])
        again = self.make_store(path=store.path, checkpoint_every=16, refold_slice=20)
        self.assertTrue(again.processor.pending())
        self.drain(again)
        status = self.status(again)
        self.assertEqual(status.event_count, 200)
        self.assertEqual(comparable(status), comparable(self.expected(again)))
        conn = again.backend.conn
        self.assertEqual(conn.execute("SELECT refold FROM jobs").fetchall(), [(0,)])
        positions = [r[0] for r in conn.execute("SELECT position FROM checkpoints ORDER BY okey")]
        self.assertEqual(positions, list(range(16, 201, 16)))

    def test_migration_from_version_4(self) -> None:
        """
        A version 4 database gets every event's ordering key: events read back in key
        order and a late event refolds from them.
        """
        path = os.path.join(self.mktemp() + ".d", "store.sqlite")
        os.makedirs(os.path.dirname(path))
        conn = connect(path)
        migrate(conn, 4)
        lines = big_job(30)
        stored = lines[:5] + lines[6:]
        for n, line in enumerate(stored, 1):
            ev = parse_event(line)
            conn.execute(
                "INSERT INTO events (id, jobid, seqno, arrived, type, date, source, host,"
                " level, user_dn, seqcode, priority, line) VALUES"
                " (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (n, ev.jobid, n, ev.type, ev.date, ev.source, ev.host, ev.level, ev.user)
                + (ev.seqcode, line),
            )
        status = compute_status((parse_event(line), n) for n, line in enumerate(stored, 1))
        conn.execute(
            "INSERT INTO jobs (jobid, state, nevents, status) VALUES (?, ?, ?, ?)",
            (JOBID, status.state, len(stored), status.to_json()),
        )
        conn.execute(
            "INSERT INTO events (id, jobid, seqno, arrived, type, date, source, host,"
            " level, user_dn, seqcode, priority, line) SELECT 100, jobid, 99, 0, type, 0,"
            " source, host, level, user_dn, 'other', 0, line FROM events WHERE id = 1"
        )
        conn.close()
        store = self.make_store(path=path, checkpoint_every=4)
        events = self.successResultOf(store.events(JOBID))
        self.assertEqual(events[0].seqno, 99)  # dated 0: first
        self.assertEqual([e.line for e in events[1:]], stored)
        self.store(store, lines[5:6])
        self.assertEqual(comparable(self.status(store)), comparable(self.expected(store)))


class GroupCommitTests(SynchronousTestCase):
    def test_background_groups(self) -> None:
        """
        While refolds are pending, empty groups follow on the next reactor turns until
        they are done; a closed store runs none.
        """
        store = MemoryStore(Clock(), proxy_host=PROXY, refold_slice=10)
        lines = big_job(100)
        self.successResultOf(store.store(items(lines[:1] + lines[2:])))
        self.successResultOf(store.store(items(lines[1:2])))
        self.assertTrue(store.processor.pending())
        commits = store.commits if hasattr(store, "commits") else store._commit.commits
        store.clock.advance(0)
        self.assertFalse(store.processor.pending())
        self.assertGreaterEqual(store._commit.commits - commits, 9)
        self.assertEqual(self.successResultOf(store.status(JOBID)).event_count, 100)
        self.assertEqual(store.clock.getDelayedCalls(), [])

        closing = MemoryStore(Clock(), proxy_host=PROXY, refold_slice=10)
        self.successResultOf(closing.store(items(lines[:1] + lines[2:])))
        self.successResultOf(closing.store(items(lines[1:2])))
        self.assertEqual(len(closing.clock.getDelayedCalls()), 1)
        self.successResultOf(closing.close())
        self.assertEqual(closing.clock.getDelayedCalls(), [])
        self.assertTrue(closing.processor.pending())


class ProcessorTests(SynchronousTestCase):
    def test_bad_tuning(self) -> None:
        for kwargs in ({"checkpoint_every": 0}, {"refold_slice": 0}, {"max_future_skew": -1}):
            self.assertRaises(
                ValueError,
                BatchProcessor,
                MemoryBackend(),
                **kwargs,
            )

    def test_backend_without_keys(self) -> None:
        """
        A backend without the key methods (only C{load_lines}) still gets the right
        status for a late event, from its stored lines.
        """
        backend = MemoryBackend()

        class Plain:
            def __getattr__(self, name: str) -> Any:
                if name in ("load_after", "checkpoint_before", "first_regjob", "refold_jobs"):
                    raise AttributeError(name)
                return getattr(backend, name)

        proc = BatchProcessor(Plain(), checkpoint_every=4)
        lines = big_job(20)
        proc.process([(line, parse_event(line), 1) for line in lines[1:]])
        results = proc.process([(lines[0], parse_event(lines[0]), 2)])
        expected = compute_status((parse_event(line), n) for n, line in enumerate(lines, 1))
        status = results[0].status  # type: ignore[union-attr]
        self.assertEqual(status.state, expected.state)
        self.assertEqual(status.event_count, 20)

    def test_sqlite_backend_queries(self) -> None:
        """
        The SQLite backend's key queries: events after a key, in key order, limited.
        """
        path = self.mktemp()
        conn = connect(path)
        self.addCleanup(conn.close)
        migrate(conn)
        backend = SQLiteBackend(conn)
        proc = BatchProcessor(backend)
        lines = big_job(10)
        proc.process([(line, parse_event(line), 1) for line in lines[::-1]])
        got = backend.load_after(JOBID, b"", 100)
        self.assertEqual([line for _, line in got], lines)
        after = backend.load_after(JOBID, got[3][0], 2)
        self.assertEqual([line for _, line in after], lines[4:6])
        self.assertEqual(backend.first_regjob(JOBID), got[0])
        self.assertIsNone(backend.first_regjob("https://x:9000/none"))


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--state-dir", self.mktemp(), *args])
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["max-future-skew"], 86_400)
        self.assertEqual(options["refold-slice"], 100)

    def test_given(self) -> None:
        options = self.parse("--max-future-skew", "60", "--refold-slice", "7")
        self.assertEqual(options["max-future-skew"], 60)
        self.assertEqual(options["refold-slice"], 7)

    def test_store_gets_them(self) -> None:
        """
        The service's store orders by the skew and refolds by the slice given.
        """
        from lbtwist import tap

        built = record_sqlite_stores(self)
        options = self.parse("--max-future-skew", "60", "--refold-slice", "7")
        tap.makeService(options, reactor=Clock())
        self.assertEqual(built[0]["max_future_skew"], 60_000_000)
        self.assertEqual(built[0]["refold_slice"], 7)


class StalledTests(SynchronousTestCase):
    def test_no_background_loop_on_failure(self) -> None:
        """
        A background group that fails is not retried at once; the next events resume
        the refold.
        """
        from lbtwist.core.errors import NoSpace

        store = MemoryStore(Clock(), proxy_host=PROXY, refold_slice=10)
        lines = big_job(100)
        self.successResultOf(store.store(items(lines[:1] + lines[2:99])))
        self.successResultOf(store.store(items(lines[1:2])))
        store.backend.fail_next = NoSpace("disk full")
        store.clock.advance(0)
        self.assertFalse(store.processor.pending())
        self.assertEqual(store.clock.getDelayedCalls(), [])
        self.successResultOf(store.store(items(lines[99:])))
        store.clock.advance(0)
        status = self.successResultOf(store.status(JOBID))
        self.assertEqual(status.event_count, 100)
        stored = self.successResultOf(store.events(JOBID))
        expected = compute_status((s.event, s.seqno) for s in stored)
        self.assertEqual(comparable(status), comparable(expected))


class SQLiteIndexTests(SynchronousTestCase):
    def test_duplicate_index_by_date(self) -> None:
        """
        Duplicates are looked up by job and DATE (an index a job's events fill at its
        end), not by job and duplicate key (random places in the index, so that every
        commit of a big job wrote more pages).
        """
        path = self.mktemp()
        conn = connect(path)
        self.addCleanup(conn.close)
        migrate(conn)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        self.assertIn("events_date", indexes)
        self.assertNotIn("events_dup", indexes)
        backend = SQLiteBackend(conn)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT type FROM events WHERE jobid = ? AND date = ?"
            " AND dupkey = ?",
            (JOBID, 1, 2),
        ).fetchall()
        self.assertIn("events_date", " ".join(str(row) for row in plan))
        proc = BatchProcessor(backend)
        lines = big_job(100)
        proc.process([(line, parse_event(line), 1) for line in lines])
        again = BatchProcessor(backend)
        results = again.process([(line, parse_event(line), 2) for line in lines[40:42]])
        self.assertEqual([r.duplicate for r in results], [True, True])  # type: ignore[union-attr]
        self.assertEqual(again.lookups, 2)
