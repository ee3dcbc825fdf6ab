# -*- test-case-name: tests.unit.test_purge_service -*-
"""
Tests for L{lbtwist.service.purge}: chunks between commit groups, the server-side dump,
the Job Provenance dump export (read as the JP importer reads it), the periodic service
and the offline purge.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import LBError, TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.purge import PurgeRules
from lbtwist.core.unparse import dump_line, unparse_event
from lbtwist.service.purge import (
    DUMP_DIR,
    Maildir,
    Purger,
    PurgeRequest,
    PurgeService,
    offline_purge,
)
from lbtwist.store.batch import reparse, run_now
from lbtwist.store.sqlite import SQLiteStore
from lbtwist.testing import HeldRunner
from tests import traces

JOBS = (traces.cream_done_ok, traces.cream_done_failed, traces.cream_aborted)
#: 2024-05-01: every fixture job (March 2024) is past its 31 days.
LATER = 1_714_521_600.0


def items(lines: list[str]) -> list[tuple[str, Any]]:
    return [(line, parse_event(line)) for line in lines]


def fired(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def read_maildir(root: str) -> list[str]:
    """
    What L&B's JP importer does (lb_maildir): take each message from new/ into
    work/, read it, then end the transaction (the work/ and tmp/ copies go).
    """
    messages = []
    for name in sorted(os.listdir(os.path.join(root, "new"))):
        work = os.path.join(root, "work", name)
        os.rename(os.path.join(root, "new", name), work)
        with open(work, encoding="utf-8") as f:
            messages.append(f.read())
        os.unlink(work)
        tmp = os.path.join(root, "tmp", name)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return messages


class PurgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.clock = Clock()
        self.clock.advance(LATER)
        self.stores: list[SQLiteStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def store(self, runner: Any = run_now) -> SQLiteStore:
        store = SQLiteStore(
            os.path.join(self.dir, "lbtwist.sqlite"), clock=self.clock, runner=runner
        )
        self.stores.append(store)
        store.start()
        return store

    def fill(self, store: SQLiteStore, held: HeldRunner | None = None) -> None:
        for job in JOBS:
            d = store.store(items(job()))
            if held is not None:
                held.release()
            for r in fired(d):
                self.assertNotIsInstance(r, LBError)

    def test_chunksBetweenCommitGroups(self) -> None:
        """
        A purge is a series of chunks on the writer; a chunk that finds a commit group
        queued behind it as it starts lets the group go first, so intake waits at most
        for one chunk already running.
        """
        held = HeldRunner()
        store = self.store(held)
        self.fill(store, held)
        purger = Purger(store, self.clock, state_dir=self.dir, chunk=1)
        d = purger.run(PurgeRequest(PurgeRules()))
        self.assertEqual(len(held.pending), 1)  # the first chunk
        stored = store.store(items(traces.cream_done_ok_unpurged()[:1]))
        self.assertEqual(len(held.pending), 2)
        held.release()  # chunk 1 yields: the group is queued behind it
        self.assertEqual(len(held.pending), 2)
        self.assertNoResult(stored)
        held.release()  # the commit group
        self.assertNotIsInstance(fired(stored)[0], LBError)
        self.assertNoResult(d)
        while held.pending:
            held.release()
        report = fired(d)
        # The three jobs and the one just registered (dated 2024 too).
        self.assertEqual(report.count, 4)
        self.assertEqual(report.chunks, 5)
        self.assertEqual(purger.running, False)

    def test_busyIntakeDoesNotStarve(self) -> None:
        """
        With a commit group always waiting, a chunk yields at most three times in a
        row, then runs.
        """
        held = HeldRunner()
        store = self.store(held)
        self.fill(store, held)
        purger = Purger(store, self.clock, state_dir=self.dir, chunk=10)
        d = purger.run(PurgeRequest(PurgeRules()))
        lines = traces.cream_done_ok_unpurged()
        store.store(items(lines[:1]))  # a group queued behind the chunk
        n = 1
        releases = 0
        while not d.called:
            # Keep one more group waiting in the commit queue all the time.
            store.store(items(lines[n : n + 1]))
            n += 1
            held.release()
            releases += 1
            self.assertLess(releases, 20)
        # The three jobs and the one being logged (dated 2024 too).
        self.assertEqual(fired(d).count, 4)

    def test_secondPurgeRefused(self) -> None:
        held = HeldRunner()
        store = self.store(held)
        purger = Purger(store, self.clock, state_dir=self.dir)
        first = purger.run(PurgeRequest(PurgeRules()))
        second = fired(purger.run(PurgeRequest(PurgeRules())))
        self.assertIsInstance(second.value, TryAgain)
        while held.pending:
            held.release()
        self.assertEqual(fired(first).count, 0)

    def test_dryRun(self) -> None:
        store = self.store()
        self.fill(store)
        report = fired(
            Purger(store, self.clock, state_dir=self.dir).run(
                PurgeRequest(PurgeRules(), dry_run=True, server_dump=True)
            )
        )
        self.assertEqual(report.count, 3)
        self.assertIsNone(report.dump_file)
        self.assertEqual(len(fired(store.jobs())), 3)
        self.assertFalse(os.path.exists(os.path.join(self.dir, DUMP_DIR)))

    def test_serverDump(self) -> None:
        """
        C{-s}: one dump file per purge in the state directory, in glite-lb-dump form.
        """
        store = self.store()
        self.fill(store)
        events = {job: fired(store.events(job)) for job in (j.jobid for j in fired(store.jobs()))}
        report = fired(
            Purger(store, self.clock, state_dir=self.dir, chunk=2).run(
                PurgeRequest(PurgeRules(), server_dump=True)
            )
        )
        path = report.dump_file
        self.assertTrue(path.startswith(os.path.join(self.dir, DUMP_DIR, "purge_")))
        with open(path, encoding="utf-8") as f:
            text = f.read()
        expected = {dump_line(e.event, e.arrived) for stored in events.values() for e in stored}
        pieces = {p + "\n\n" for p in text.split("\n\n") if p}
        self.assertEqual(pieces, expected)
        self.assertEqual([n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")], [])

    def test_jpDumpExport(self) -> None:
        """
        C{--jpdump-dir}: a dump file per purged job and a maildir message naming it,
        as glite-lb-lb_dump_exporter wrote them; a JP importer reads them.
        """
        store = self.store()
        self.fill(store)
        before = {j.jobid: fired(store.events(j.jobid)) for j in fired(store.jobs())}
        jp = os.path.join(self.dir, "jpdump")
        report = fired(
            Purger(store, self.clock, state_dir=self.dir, jpdump_dir=jp).run(
                PurgeRequest(PurgeRules())
            )
        )
        self.assertEqual(report.jp_files, 3)
        messages = read_maildir(jp)
        self.assertEqual(len(messages), 3)
        seen = set()
        for message in messages:
            first, second = message.split("\n")
            self.assertTrue(first.startswith("jobid  "))
            self.assertTrue(second.startswith("file   "))
            jobid, path = first[7:], second[7:]
            seen.add(jobid)
            unique = jobid.rsplit("/", 1)[1]
            self.assertTrue(os.path.basename(path).startswith(unique + "."))
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            self.assertEqual(len(lines), len(before[jobid]))
            for text, stored in zip(lines, before[jobid], strict=True):
                arrived, _, event = text.partition(" ")
                self.assertTrue(arrived.startswith("DG.ARRIVED="))
                self.assertEqual(event, unparse_event(stored.event))
                self.assertEqual(reparse(event).jobid, jobid)
        self.assertEqual(seen, set(before))
        self.assertEqual(os.listdir(os.path.join(jp, "new")), [])

    def test_periodic(self) -> None:
        """
        The service runs a purge every interval, the first one interval after start.
        """
        store = self.store()
        self.fill(store)
        purger = Purger(store, self.clock, state_dir=self.dir)
        service = PurgeService(purger, self.clock, 3600.0, PurgeRequest(PurgeRules()))
        service.startService()
        self.assertEqual(service.runs, 0)
        self.clock.advance(3599)
        self.assertEqual(service.runs, 0)
        self.clock.advance(1)
        self.assertEqual(service.runs, 1)
        self.assertEqual(fired(store.jobs()), [])
        self.clock.advance(3600)
        self.assertEqual(service.runs, 2)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_vacuumAfterPurge(self) -> None:
        store = self.store()
        self.fill(store)
        report = fired(
            Purger(store, self.clock, state_dir=self.dir, vacuum_pages=1).run(
                PurgeRequest(PurgeRules())
            )
        )
        self.assertEqual(report.free_pages, 0)


class OfflineTests(SynchronousTestCase):
    def test_offline(self) -> None:
        state = self.mktemp()
        os.makedirs(state)
        clock = Clock()
        store = SQLiteStore(os.path.join(state, "lbtwist.sqlite"), clock=clock, runner=run_now)
        for job in JOBS:
            store.store(items(job()))
        store.close()
        later = Clock()
        later.advance(LATER)
        report = offline_purge(state, PurgeRequest(PurgeRules(done=None)), clock=later)
        self.assertEqual(report.count, 2)

    def test_refusedWhileLocked(self) -> None:
        state = self.mktemp()
        os.makedirs(state)
        running = SQLiteStore(
            os.path.join(state, "lbtwist.sqlite"), clock=Clock(), runner=run_now, lock=True
        )
        running.start()
        self.addCleanup(running.close)
        e = self.assertRaises(LBError, offline_purge, state, PurgeRequest(PurgeRules()))
        self.assertEqual(e.code, errno.EBUSY)

    def test_noStore(self) -> None:
        self.assertRaises(
            FileNotFoundError, offline_purge, self.mktemp(), PurgeRequest(PurgeRules())
        )


class MaildirTests(SynchronousTestCase):
    def test_layout(self) -> None:
        root = self.mktemp()
        box = Maildir(root, "lb.example.org")
        self.assertEqual(sorted(os.listdir(root)), ["new", "post", "tmp", "work"])
        path = box.store("a\nb", now=1700000000)
        self.assertEqual(os.path.dirname(path), os.path.join(root, "new"))
        name = os.path.basename(path)
        self.assertTrue(name.startswith(f"1700000000.{os.getpid()}_"))
        self.assertTrue(name.endswith(".lb.example.org"))
        second = box.store("c", now=1700000000)
        self.assertNotEqual(path, second)
        self.assertEqual(os.listdir(os.path.join(root, "tmp")), [])
        self.assertEqual(read_maildir(root), sorted(["a\nb", "c"], key=lambda m: m))


class _ChunkStore:
    """
    Chunks of half a second each, two of them; counts the calls.
    """

    def __init__(self) -> None:
        self.calls = 0

    def purge_chunk(self, rules: Any, now: int, after: Any, limit: int, **kw: Any) -> Any:
        from twisted.internet.defer import succeed

        from lbtwist.store.purging import PurgeChunk

        self.calls += 1
        return succeed(PurgeChunk((), limit, ("t", "j") if self.calls == 1 else None, seconds=0.5))

    def vacuum_step(self, pages: int = 0) -> Any:
        from twisted.internet.defer import succeed

        return succeed(0)


class PauseTests(SynchronousTestCase):
    def test_pauseBetweenChunks(self) -> None:
        """
        With C{pause=1}, the next chunk is asked for as long after a chunk as the
        chunk took; with 0 at once.
        """
        clock = Clock()
        store = _ChunkStore()
        d = Purger(store, clock, state_dir=self.mktemp(), pause=1.0).run(  # type: ignore[arg-type]
            PurgeRequest(PurgeRules())
        )
        self.assertEqual(store.calls, 1)
        clock.advance(0.49)
        self.assertEqual(store.calls, 1)
        clock.advance(0.01)
        self.assertEqual(store.calls, 2)
        self.assertEqual(fired(d).chunks, 2)
        quick = _ChunkStore()
        fired(Purger(quick, clock, state_dir=self.mktemp()).run(PurgeRequest(PurgeRules())))  # type: ignore[arg-type]
        self.assertEqual(quick.calls, 2)


class _VacuumStore:
    """
    Three free pages, one given back per step, each step answered half a second after
    it is asked for; counts the calls.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.free = 3

    def vacuum_step(self, pages: int = 0) -> Any:
        from twisted.internet.task import deferLater

        self.calls += 1
        self.free -= 1
        return deferLater(self.clock, 0.5, lambda: self.free)


class VacuumPauseTests(SynchronousTestCase):
    def test_pauseBetweenSteps(self) -> None:
        """
        With C{pause=1}, the next vacuum step is asked for as long after a step's
        answer as the step took; with 0 at once.
        """
        from twisted.internet.defer import ensureDeferred

        clock = Clock()
        store = _VacuumStore(clock)
        purger = Purger(store, clock, state_dir=self.mktemp(), pause=1.0, vacuum_pages=1)  # type: ignore[arg-type]
        d = ensureDeferred(purger._vacuum())
        self.assertEqual(store.calls, 1)
        clock.advance(0.5)
        clock.advance(0.49)
        self.assertEqual(store.calls, 1)
        clock.advance(0.01)
        self.assertEqual(store.calls, 2)
        clock.advance(0.5)
        clock.advance(0.49)
        self.assertEqual(store.calls, 2)
        clock.advance(0.01)
        self.assertEqual(store.calls, 3)
        # The last step leaves no free page: no pause after it.
        clock.advance(0.5)
        self.assertEqual(fired(d), 0)
        quick = _VacuumStore(clock)
        purger = Purger(quick, clock, state_dir=self.mktemp(), vacuum_pages=1)  # type: ignore[arg-type]
        d = ensureDeferred(purger._vacuum())
        clock.advance(0.5)
        self.assertEqual(quick.calls, 2)
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual(fired(d), 0)
