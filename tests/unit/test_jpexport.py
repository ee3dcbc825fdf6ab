# -*- test-case-name: tests.unit.test_jpexport -*-
"""
Tests for L{lbtwist.service.jpexport}: a maildir message per stored registration,
written after the commit, batch by batch, nothing lost when it falls behind.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.events import parse_event
from lbtwist.service.jpexport import JPRegExporter
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from tests import traces
from tests.unit.test_purge_service import read_maildir


def registration(n: int) -> str:
    line = traces.cream_done_ok()[0]
    return line.replace("CREAM812461375", f"CREAM9{n:08d}")


class JPRegTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.clock = Clock()
        self.store = SQLiteStore(
            os.path.join(self.dir, "lbtwist.sqlite"),
            clock=self.clock,
            runner=run_now,
            jp_register=True,
        )
        self.addCleanup(self.store.close)
        self.store.start()
        self.box = os.path.join(self.dir, "jpreg")
        self.held: list[tuple[Any, Deferred[Any]]] = []

    def exporter(self, batch: int = 500, held: bool = False) -> JPRegExporter:
        def run(work: Any) -> Deferred[Any]:
            if held:
                d: Deferred[Any] = Deferred()
                self.held.append((work, d))
                return d
            return maybeDeferred(work)

        exporter = JPRegExporter(
            self.store,
            self.clock,
            self.box,
            server="ce.example.org",
            interval=1.0,
            batch=batch,
            run=run,
        )
        exporter.startService()
        self.addCleanup(exporter.stopService)
        return exporter

    def register(self, count: int, start: int = 0) -> None:
        lines = [registration(n) for n in range(start, start + count)]
        self.store.store([(line, parse_event(line)) for line in lines])

    def test_messagePerRegistration(self) -> None:
        """
        Each registration gives C{<jobid>\\n<owner DN>} in new/, in L&B's layout.
        """
        self.register(3)
        exporter = self.exporter()
        self.clock.advance(0)
        self.assertEqual(exporter.exported, 3)
        self.assertEqual(sorted(os.listdir(self.box)), ["new", "post", "tmp", "work"])
        names = os.listdir(os.path.join(self.box, "new"))
        self.assertTrue(all(n.endswith(".ce.example.org") for n in names))
        messages = sorted(read_maildir(self.box))
        expected = sorted(
            f"https://cream-ce01.example.org:9000/CREAM9{n:08d}\n{traces.CREAM_USER}"
            for n in range(3)
        )
        self.assertEqual(messages, expected)
        self.assertEqual(
            self.store.backend.conn.execute("SELECT COUNT(*) FROM jp_pending").fetchone()[0], 0
        )

    def test_laterRegistrations(self) -> None:
        exporter = self.exporter()
        self.clock.advance(0)
        self.assertEqual(exporter.exported, 0)
        self.register(2)
        self.clock.advance(0.5)
        self.assertEqual(exporter.exported, 0)
        self.clock.advance(0.5)
        self.assertEqual(exporter.exported, 2)

    def test_batches(self) -> None:
        """
        At most C{batch} at a time; a full batch is followed by the next at once.
        """
        self.register(5)
        exporter = self.exporter(batch=2)
        self.clock.advance(0)
        self.assertEqual((exporter.exported, exporter.batches), (5, 3))
        self.assertEqual(len(read_maildir(self.box)), 5)

    def test_behindLosesNothing(self) -> None:
        """
        While the writer thread is busy, intake goes on and the new registrations wait
        in the store; they are all written afterwards.
        """
        self.register(2)
        exporter = self.exporter(batch=2, held=True)
        self.clock.advance(0)
        self.assertEqual(len(self.held), 1)
        self.register(3, start=2)  # stored at once: intake does not wait for the exporter
        self.assertEqual(
            self.store.backend.conn.execute("SELECT COUNT(*) FROM jp_pending").fetchone()[0], 5
        )
        work, d = self.held.pop(0)
        d.callback(work())
        while True:
            self.clock.advance(1)
            if not self.held:
                break
            work, d = self.held.pop(0)
            d.callback(work())
        self.assertEqual(exporter.exported, 5)
        self.assertEqual(len(read_maildir(self.box)), 5)
