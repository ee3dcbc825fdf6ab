# -*- test-case-name: tests.unit.test_stats_counters -*-
"""
Tests for the statistics counters and kept durations of L{lbtwist.store.lifecycle}:
on random stores (entries replaced, re-entered earlier and later, deleted by the trace
expiry, written in random commit groups) every kind of request answers exactly as
L{lifecycle.stats_scan}, the straightforward reference, does; the migration fills an
existing store to the same; and a rate's work does not grow with the window's entries.
"""

from __future__ import annotations

import os
import random
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import TooBig
from lbtwist.core.states.status import STATES
from lbtwist.core.stats import GROUPS, EntryRow, StatsRequest, cover
from lbtwist.core.trace import TraceRow
from lbtwist.store import lifecycle
from lbtwist.store.sqlite import MIGRATIONS, _migrate_stats_counters, connect, migrate

S = 1_000_000
HOUR = 3600 * S
DAY = 86_400 * S
T0 = 1_764_547_200 * S  # a midnight
SPAN = 4 * DAY

DESTINATIONS = (None, "ce1:8443/cream-pbs-a", "ce2:8443/cream-pbs-b")
NODES = (None, "wn1", "wn2", "wn3")
OWNERS = ("/CN=Ann", "/CN=Bob", None)
VOS = (None, "atlas", "cms")


def random_entry(rng: random.Random, jobid: str) -> EntryRow:
    # Times over four days and a little before T0; some on hour and day boundaries.
    if rng.random() < 0.1:
        entered = T0 + rng.randrange(0, SPAN // HOUR) * HOUR
    else:
        entered = T0 + rng.randrange(-HOUR, SPAN)
    return EntryRow(
        jobid,
        rng.choice(STATES[:8]),
        entered,
        rng.choice(DESTINATIONS),
        rng.choice(NODES),
        rng.choice(OWNERS),
        rng.choice(VOS),
    )


def trace_of(jobid: str, last: int) -> TraceRow:
    return TraceRow(jobid, None, None, None, None, None, None, None, None, T0, last)


def fill(conn: sqlite3.Connection, rng: random.Random, jobs: int, writes: int) -> None:
    """
    C{writes} commit groups of one to six entries of random jobs (a job's state entry
    is written again, later or earlier, as events arrive out of order), then some jobs'
    entries removed by the trace expiry.
    """
    ids = [f"https://ce.example.org:8443/CREAM{n:09d}" for n in range(jobs)]
    for _ in range(writes):
        rows = [random_entry(rng, rng.choice(ids)) for _ in range(rng.randint(1, 6))]
        traces = [trace_of(row.jobid, T0 + rng.randrange(SPAN)) for row in rows]
        conn.execute("BEGIN")
        lifecycle.write(conn, rows, traces)
        conn.execute("COMMIT")
    # No job has a jobs row: all count as purged, expired if their last change is old.
    lifecycle.expire_traces(conn, before=T0 + SPAN // 8, limit=jobs // 4)


def random_request(rng: random.Random) -> StatsRequest:
    kind = rng.random()
    if kind < 0.3:
        start = T0 + rng.randrange(-HOUR, SPAN)
        end = start + rng.randrange(1, SPAN)
    elif kind < 0.6:
        # Whole hours and days, as a dashboard asks.
        start = T0 + rng.randrange(-2, SPAN // HOUR) * HOUR
        end = start + rng.randrange(1, 80) * HOUR
    else:
        start = T0 + rng.randrange(-HOUR, SPAN)
        end = start + rng.randrange(1, 3 * HOUR)
    to_state = None
    if rng.random() < 0.5:
        to_state = rng.choice(STATES[:8])
    group = rng.choice((None, *GROUPS))
    step = None
    if to_state is None and rng.random() < 0.5:
        step = rng.choice((60, 1800, 3600, 5400, 7200, 86_400, rng.randrange(1, 100_000)))
        while -(-(end - start) // (step * S)) > 500:
            step *= 2
    return StatsRequest(rng.choice(STATES[:8]), start, end, to_state, group, step)


def answers(conn: sqlite3.Connection, request: StatsRequest, max_jobs: int) -> tuple[Any, Any]:
    def one(fn: Any) -> Any:
        try:
            return fn(conn, request, max_jobs=max_jobs)
        except TooBig as e:
            return ("TooBig", str(e))

    return one(lifecycle.stats), one(lifecycle.stats_scan)


class CoverTests(SynchronousTestCase):
    def test_pieces(self) -> None:
        """
        A window is split into whole days, whole hours and edges under an hour (no
        hours: under a day) that together are exactly the window.
        """
        rng = random.Random(3)
        for _ in range(2000):
            start = T0 + rng.randrange(-3 * DAY, 3 * DAY)
            end = start + rng.choice((rng.randrange(1, 3 * HOUR), rng.randrange(1, 9 * DAY)))
            if rng.random() < 0.3:
                start -= start % HOUR
            hours = rng.random() < 0.5
            parts = cover(start, end, hours=hours, days=not hours or rng.random() < 0.5)
            pieces = list(parts.raw)
            pieces += [(a * HOUR, b * HOUR) for a, b in parts.hours]
            pieces += [(a * DAY, b * DAY) for a, b in parts.days]
            pieces.sort()
            self.assertEqual(pieces[0][0], start)
            self.assertEqual(pieces[-1][1], end)
            for (_, high), (low, _) in zip(pieces, pieces[1:], strict=False):
                self.assertEqual(high, low)
            self.assertLessEqual(len(parts.raw), 2)
            self.assertLess(sum(b - a for a, b in parts.raw), 2 * (HOUR if hours else DAY))


class CountersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def open(self, name: str, target: int | None = None) -> sqlite3.Connection:
        conn = connect(os.path.join(self.dir, name))
        self.addCleanup(conn.close)
        # Nothing here needs to survive a crash: no syncs.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = MEMORY")
        if target is None:
            migrate(conn)
        else:
            migrate(conn, target)
        return conn

    def test_sameAsScan(self) -> None:
        """
        On random stores every request (rates overall, grouped, per step; durations
        between any two states, grouped; too many) answers exactly as the scan does.
        """
        for seed in range(6):
            rng = random.Random(seed)
            conn = self.open(f"s{seed}.sqlite")
            fill(conn, rng, jobs=rng.choice((20, 60, 150)), writes=rng.choice((100, 400)))
            for _ in range(150):
                request = random_request(rng)
                fast, scan = answers(conn, request, max_jobs=rng.choice((5, 1000)))
                self.assertEqual(fast, scan, (seed, request))

    def test_migration(self) -> None:
        """
        A store filled before the counters existed gets them, and the kept durations,
        from its entries: the same tables as a store that kept them all along.
        """
        before = MIGRATIONS.index(_migrate_stats_counters)
        old = self.open("old.sqlite", before)
        new = self.open("new.sqlite")
        rng = random.Random(11)
        ids = [f"https://ce.example.org:8443/CREAM{n:09d}" for n in range(50)]
        for _ in range(300):
            rows = [random_entry(rng, rng.choice(ids)) for _ in range(3)]
            for conn, write in ((old, lifecycle._write_v1), (new, lifecycle.write)):
                conn.execute("BEGIN")
                write(conn, rows, [])
                conn.execute("COMMIT")
        migrate(old)
        for table in ("state_entries", "stat_counts WHERE n != 0"):
            query = f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5"
            self.assertEqual(old.execute(query).fetchall(), new.execute(query).fetchall())
        for _ in range(50):
            request = random_request(rng)
            fast, scan = answers(old, request, max_jobs=1000)
            self.assertEqual(fast, scan, request)

    def test_rateWorkBounded(self) -> None:
        """
        A rate over the whole store costs about the same with ten times the entries:
        it reads counters, not entries (grouped: per day, so for whole days).
        """

        def work(entries: int) -> tuple[int, int]:
            conn = self.open(f"w{entries}.sqlite")
            rng = random.Random(entries)
            conn.execute("BEGIN")
            lifecycle.write(
                conn,
                [
                    EntryRow(f"j{n}", "Running", T0 + rng.randrange(SPAN), None, None, None, "v")
                    for n in range(entries)
                ],
                [],
            )
            conn.execute("COMMIT")
            steps = [0]

            def tick() -> int:
                steps[0] += 1
                return 0

            conn.set_progress_handler(tick, 100)
            results = []
            for group, start, end in ((None, T0 + 1, T0 + SPAN - 1), ("vo", T0, T0 + SPAN)):
                steps[0] = 0
                request = StatsRequest("Running", start, end, group=group)
                answer = lifecycle.stats(conn, request, max_jobs=10)
                self.assertEqual(
                    answer["count"], lifecycle.stats_scan(conn, request, max_jobs=10)["count"]
                )
                steps[0] = 0
                lifecycle.stats(conn, request, max_jobs=10)
                results.append(steps[0])
            conn.set_progress_handler(None, 0)
            return results[0], results[1]

        small, large = work(1000), work(10_000)
        for few, many in zip(small, large, strict=True):
            self.assertLess(many, 3 * few + 50)
