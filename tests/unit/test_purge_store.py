# -*- test-case-name: tests.unit.test_purge_store -*-
"""
Tests for L{lbtwist.store.purging} through L{lbtwist.store.sqlite.SQLiteStore}: purge
chunks, zombies and their rules, the 410 path, the lock, the vacuum, JP pending rows.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import LBError
from lbtwist.core.events import PRIO_EXCL, parse_event
from lbtwist.core.ilproto import il_major
from lbtwist.core.purge import DAY, PurgeRules, trace_record
from lbtwist.core.states.status import PURGED
from lbtwist.core.translate import proxy_policy
from lbtwist.store import purging
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SCHEMA_VERSION, SQLiteStore, connect, schema_version
from lbtwist.testing import MemoryStore
from tests import traces

PROXY = "cream-ce01.example.org"


def items(lines: list[str]) -> list[tuple[str, Any]]:
    return [(line, parse_event(line)) for line in lines]


def results(d: Any) -> Any:
    out: list[Any] = []
    d.addCallback(out.append)
    assert out, "not fired"
    return out[0]


def regjob(jobid: str, *, excl: bool = False, user: str = traces.CREAM_USER) -> str:
    line = traces.ulm_line(
        "RegJob",
        date=traces.date_text(9000),
        host=PROXY,
        source="CREAMInterface",
        jobid=jobid,
        seqcode="UI=000009:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000"
        ":LRMS=000000:APP=000000:LBS=000000",
        user=user,
        jobtype="CREAM",
        ns="https://" + PROXY + ":8443/ce-cream/services",
    )
    if excl:
        line = line.replace("DG.PRIORITY=0", f"DG.PRIORITY={PRIO_EXCL}")
    return line


class PurgeStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.stores: list[SQLiteStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def make(self, **kw: Any) -> SQLiteStore:
        kw.setdefault("clock", Clock())
        kw.setdefault("runner", run_now)
        store = SQLiteStore(self.path, **kw)
        self.stores.append(store)
        store.start()
        return store

    def filled(self, **kw: Any) -> SQLiteStore:
        store = self.make(**kw)
        for lines in (traces.cream_done_ok(), traces.cream_done_failed(), traces.cream_aborted()):
            for r in results(store.store(items(lines))):
                self.assertFalse(isinstance(r, LBError), r)
        return store

    def last_update(self, store: SQLiteStore, jobid: str) -> int:
        status = results(store.status(jobid))
        return int(status.lastUpdateTime)

    def test_chunkPurgesDueJobs(self) -> None:
        """
        A chunk purges the jobs past their state's grace: the Cleared job after 3 days,
        the Aborted one only after 7; the rows go and a zombie with a trace stays.
        """
        store = self.filled()
        cleared = traces.DIRECT_JOBID
        aborted = "https://cream-ce01.example.org:9000/CREAM812461379"
        now = self.last_update(store, aborted) + 4 * DAY * 1_000_000
        chunk = results(store.purge_chunk(PurgeRules(), now, None, 100))
        self.assertEqual([j.jobid for j in chunk.purged], [cleared])
        self.assertIsNone(results(store.status(cleared)))
        self.assertEqual(results(store.events(cleared)), [])
        self.assertIsNotNone(results(store.status(aborted)))
        zombie = results(store.zombie(cleared))
        self.assertEqual(zombie.jobid, cleared)
        self.assertEqual(zombie.purged_at, now)
        trace = json.loads(zombie.trace)
        self.assertEqual(trace["status"]["state"], "Cleared")
        self.assertEqual(trace["status"]["owner"], traces.CREAM_USER)
        self.assertNotIn("jdl", trace["status"])
        self.assertNotIn("cream_jdl", trace["status"])
        self.assertIn("CREAMExecutor", trace["sources"])
        # The Aborted job after its 7 days; the Done one waits its 31.
        later = now + 10 * DAY * 1_000_000
        chunk = results(store.purge_chunk(PurgeRules(), later, None, 100))
        self.assertEqual([j.jobid for j in chunk.purged], [aborted])

    def test_traceAsTraceRecord(self) -> None:
        """
        The trace the purge writes (built by SQLite) is L{trace_record} of the job's
        stored status and its events' sources.
        """
        store = self.filled()
        expected = {}
        for job in results(store.jobs()):
            row = store.backend.conn.execute(
                "SELECT status FROM jobs WHERE jobid = ?", (job.jobid,)
            ).fetchone()
            sources = [e.event.source for e in results(store.events(job.jobid))]
            expected[job.jobid] = json.loads(trace_record(json.loads(row[0]), sources))
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        results(store.purge_chunk(PurgeRules(), now, None, 100))
        for jobid, trace in expected.items():
            self.assertEqual(json.loads(results(store.zombie(jobid)).trace), trace)
        self.assertEqual(
            expected["https://cream-ce01.example.org:9000/CREAM812461377"]["status"]["done_code"],
            "FAILED",
        )

    def test_dryRunChangesNothing(self) -> None:
        """
        A dry run lists the due jobs and leaves them stored.
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        chunk = results(store.purge_chunk(PurgeRules(), now, None, 100, dry_run=True))
        self.assertEqual(len(chunk.purged), 3)
        for job in chunk.purged:
            self.assertIsNotNone(results(store.status(job.jobid)))
        self.assertIsNone(results(store.zombie(traces.DIRECT_JOBID)))

    def test_chunksAreBounded(self) -> None:
        """
        A chunk looks at most C{limit} jobs, oldest update first, and says where the
        next one starts; the chunks together cover every job once.
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        seen: list[str] = []
        after = None
        chunks = 0
        while True:
            chunk = results(store.purge_chunk(PurgeRules(), now, after, 1))
            chunks += 1
            self.assertLessEqual(chunk.scanned, 1)
            seen.extend(j.jobid for j in chunk.purged)
            if chunk.after is None:
                break
            after = chunk.after
        self.assertEqual(len(seen), 3)
        self.assertEqual(len(set(seen)), 3)
        self.assertGreaterEqual(chunks, 3)
        self.assertEqual(results(store.jobs()), [])

    def test_zombieRefusesEvents(self) -> None:
        """
        After the purge, an EXCL registration of the id gets EEXIST, a plain one too,
        and any other event EIDRM; the refusals do not bring the job back.
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        results(store.purge_chunk(PurgeRules(), now, None, 100))
        jobid = traces.DIRECT_JOBID
        [excl] = results(store.store(items([regjob(jobid, excl=True)])))
        self.assertIsInstance(excl, LBError)
        self.assertEqual(excl.code, errno.EEXIST)
        [plain] = results(store.store(items([regjob(jobid)])))
        self.assertEqual(plain.code, errno.EEXIST)
        [other] = results(store.store(items(traces.cream_done_ok()[-1:])))
        self.assertEqual(other.code, errno.EIDRM)
        self.assertIsNone(results(store.status(jobid)))
        # A fresh id registers as before.
        [fresh] = results(store.store(items([regjob(jobid + "1", excl=True)])))
        self.assertFalse(isinstance(fresh, LBError), fresh)

    def test_cachedJobForgotten(self) -> None:
        """
        A job in the writer's status cache is forgotten by the purge: its next event
        is refused, not folded into the cached status.
        """
        store = self.filled()
        self.assertIsNotNone(store.processor.cached(traces.DIRECT_JOBID))
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        results(store.purge_chunk(PurgeRules(), now, None, 100))
        self.assertIsNone(store.processor.cached(traces.DIRECT_JOBID))

    def test_findStatusPurged(self) -> None:
        """
        The query port's lookup of a purged job gives a status in state Purged (410).
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        results(store.purge_chunk(PurgeRules(), now, None, 100))
        jobid, status = results(store.find_status("CREAM812461375"))
        self.assertEqual((jobid, status.state), (traces.DIRECT_JOBID, PURGED))
        self.assertEqual(status.owner, traces.CREAM_USER)
        self.assertIsNone(results(store.find_status("CREAM999")))

    def test_undeliveredKept(self) -> None:
        """
        On a proxy, a job whose events wait in the outbox is not purged, whatever its
        age; once delivered, a terminal relayed job goes after the C{delivered} grace.
        """
        store = self.make(policy=proxy_policy((), PROXY))
        prelude, tail = traces.wms_cream_lines(["Idle", "Aborted"])
        results(store.store(items(prelude + tail)))
        jobid = traces.WMS_JOBID
        status = results(store.status(jobid))
        self.assertEqual(status.state, "Aborted")
        now = int(status.lastUpdateTime) + 2 * DAY * 1_000_000
        rules = PurgeRules(delivered=DAY)
        chunk = results(store.purge_chunk(rules, now, None, 100))
        self.assertEqual(chunk.purged, ())
        self.assertEqual(chunk.undelivered, 1)
        pending = results(store.outbox_pending())
        results(store.outbox_ack([e.id for e in pending]))
        chunk = results(store.purge_chunk(rules, now, None, 100))
        self.assertEqual([j.jobid for j in chunk.purged], [jobid])
        # Without the delivered rule the Aborted job waits its 7 days.
        self.assertEqual(PurgeRules().grace("Aborted"), 7 * DAY)

    def test_beforeCommitFailureRollsBack(self) -> None:
        """
        When writing the dump fails, the chunk is rolled back: nothing is purged.
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000

        def boom(jobs: Any) -> None:
            raise OSError(errno.ENOSPC, "full")

        d = store.purge_chunk(PurgeRules(), now, None, 100, keep_events=True, before_commit=boom)
        self.failureResultOf(d, OSError)
        self.assertEqual(len(results(store.jobs())), 3)
        self.assertIsNone(results(store.zombie(traces.DIRECT_JOBID)))

    def test_keepEventsForDump(self) -> None:
        """
        With C{keep_events} the purged jobs come with their events (arrival, line).
        """
        store = self.filled()
        now = self.last_update(store, traces.DIRECT_JOBID) + 4 * DAY * 1_000_000
        got: list[Any] = []
        results(
            store.purge_chunk(
                PurgeRules(), now, None, 100, keep_events=True, before_commit=got.extend
            )
        )
        [job] = got
        self.assertEqual([line for _, line in job.events], traces.cream_done_ok())

    def test_newStoreIncrementalVacuum(self) -> None:
        """
        A new store file gives purged space back: auto_vacuum is INCREMENTAL, and the
        vacuum steps leave no free page.
        """
        store = self.filled()
        self.assertTrue(purging.auto_vacuum_incremental(store.backend.conn))
        now = self.last_update(store, traces.DIRECT_JOBID) + 40 * DAY * 1_000_000
        results(store.purge_chunk(PurgeRules(), now, None, 100))
        conn = store.backend.conn
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        self.assertGreater(free, 2)
        self.assertEqual(results(store.vacuum_step(2)), free - 2)
        self.assertEqual(results(store.vacuum_step(free)), 0)
        self.assertEqual(conn.execute("PRAGMA freelist_count").fetchone()[0], 0)

    def test_oldStoreFullVacuum(self) -> None:
        """
        A store made before (no auto_vacuum) is switched by L{purging.vacuum_full}.
        """
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        conn = connect(self.path)
        self.assertFalse(purging.auto_vacuum_incremental(conn))
        self.assertEqual(purging.incremental_vacuum(conn), 0)
        purging.vacuum_full(conn)
        self.assertTrue(purging.auto_vacuum_incremental(conn))
        conn.close()

    def test_lock(self) -> None:
        """
        A store opened with C{lock=True} refuses a second one clearly (EBUSY, the pid).
        """
        self.make(lock=True)
        second = SQLiteStore(self.path, clock=Clock(), runner=run_now, lock=True)
        e = self.assertRaises(LBError, second.start)
        self.assertEqual(e.code, errno.EBUSY)
        self.assertIn(str(os.getpid()), e.message)
        self.assertIn("lbtwist purge -m", e.message)

    def test_lockReleasedOnClose(self) -> None:
        store = self.make(lock=True)
        store.close()
        self.stores.remove(store)
        self.make(lock=True)

    def test_jpPendingWithRegistration(self) -> None:
        """
        With C{jp_register}, every stored RegJob leaves a C{jp_pending} row in its
        transaction; L{jp_done} forgets them.
        """
        store = self.make(jp_register=True)
        results(store.store(items(traces.cream_done_ok())))
        rows = results(store.jp_pending(0, 10))
        self.assertEqual([(j, o) for _, j, o in rows], [(traces.DIRECT_JOBID, traces.CREAM_USER)])
        results(store.jp_done([rows[0][0]]))
        self.assertEqual(results(store.jp_pending(0, 10)), [])

    def test_noJpPendingByDefault(self) -> None:
        store = self.make()
        results(store.store(items(traces.cream_done_ok())))
        self.assertEqual(results(store.jp_pending(0, 10)), [])

    def test_migration(self) -> None:
        """
        The purge tables exist at the current schema version.
        """
        store = self.make()
        conn = store.backend.conn
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertTrue({"zombies", "jp_pending"} <= names)


class ZombieReplyTests(SynchronousTestCase):
    def test_relayGivesUp(self) -> None:
        """
        EIDRM (an event of a purged job) is a permanent IL refusal, as EEXIST is:
        a relay must not resend it forever.
        """
        self.assertEqual(il_major(errno.EIDRM), il_major(errno.EEXIST))
        self.assertNotEqual(il_major(errno.EIDRM), il_major(errno.EAGAIN))


class MemoryZombieTests(SynchronousTestCase):
    """
    The zombie rule in the shared commit logic, on the memory backend.
    """

    def test_memoryZombie(self) -> None:
        store = MemoryStore(Clock(), relay=False)
        store.backend.zombies["CREAM812461375"] = traces.DIRECT_JOBID
        [r] = results(store.store(items([regjob(traces.DIRECT_JOBID, excl=True)])))
        self.assertEqual(r.code, errno.EEXIST)
        jobid, status = results(store.find_status("CREAM812461375"))
        self.assertEqual(status.state, PURGED)
