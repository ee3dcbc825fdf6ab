# -*- test-case-name: tests.unit.test_dump -*-
"""
Tests for C{lbtwist dump} windows and C{--since-last}, C{lbtwist load}, and the
dump -> load round trip; C{lbtwist status --at} and C{lbtwist explain}.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli.dump import LAST_FILE, read_last
from lbtwist.core.errors import LBError
from lbtwist.core.events import parse_event
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteReader, SQLiteStore
from tests import traces
from tests.unit.test_cli import NOW, call, make_ctx

START = NOW // 1_000_000


def fill(state_dir: str, lines: list[str], steps: list[float] | None = None) -> list[int]:
    """
    Store C{lines} one by one in a new store of C{state_dir}, the clock moving
    C{steps[i]} seconds (1 by default) after each; return the arrival times.
    """
    os.makedirs(state_dir, exist_ok=True)
    clock = Clock()
    clock.advance(START)
    store = SQLiteStore(os.path.join(state_dir, "lbtwist.sqlite"), clock=clock, runner=run_now)
    arrivals = []
    for i, line in enumerate(lines):
        arrivals.append(int(round(clock.seconds() * 1_000_000)))
        d = store.store([(line, parse_event(line))])
        out: list[Any] = []
        d.addCallback(out.append)
        assert out and not isinstance(out[0][0], LBError), out
        clock.advance(steps[i] if steps else 1)
    store.close()
    return arrivals


def statuses(state_dir: str) -> dict[str, Any]:
    reader = SQLiteReader(os.path.join(state_dir, "lbtwist.sqlite"))
    try:
        return {job.jobid: reader.status(job.jobid) for job in reader.jobs()}
    finally:
        reader.close()


def events_of(out: str) -> list[str]:
    return [x for x in out.splitlines() if x]


def at(now: int) -> Any:
    ctx = make_ctx()
    ctx.now = lambda: now
    return ctx


ALL_LINES = [line for _, lines in traces.iter_all() for line in lines]


class DumpWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state_dir = self.mktemp()
        self.lines = traces.cream_done_ok()
        self.arrivals = fill(self.state_dir, self.lines)

    def test_window_is_open_closed(self) -> None:
        """
        --from T --to U gives the events that arrived in (T, U].
        """
        a = self.arrivals
        status, out, err = call(
            [
                "dump",
                "--state-dir",
                self.state_dir,
                "--from",
                str(a[2] / 1e6),
                "--to",
                str(a[5] / 1e6),
            ]
        )
        self.assertEqual((status, err), (0, ""))
        dumped = events_of(out)
        self.assertEqual(len(dumped), 3)
        self.assertEqual(
            [parse_event(x.partition(" ")[2]).date for x in dumped],
            [parse_event(x).date for x in self.lines[3:6]],
        )
        self.assertEqual(read_last(self.state_dir), (a[2], a[5]))

    def test_since_last(self) -> None:
        """
        --since-last starts where the last dump ended; together they give every
        event once.
        """
        a = self.arrivals
        first = call(["dump", "--state-dir", self.state_dir, "--to", str(a[4] / 1e6)])
        self.assertEqual(len(events_of(first[1])), 5)
        second = call(
            ["dump", "--state-dir", self.state_dir, "--since-last", "-v"], at(a[-1] + 60_000_000)
        )
        self.assertEqual(second[0], 0)
        self.assertEqual(len(events_of(second[1])), len(self.lines) - 5)
        self.assertIn(f"{len(self.lines) - 5} events arrived in", second[2])
        self.assertEqual(read_last(self.state_dir), (a[4], a[-1] + 50_000_000))
        # Nothing new since then.
        third = call(
            ["dump", "--state-dir", self.state_dir, "--since-last"], at(a[-1] + 60_000_000)
        )
        self.assertEqual(events_of(third[1]), [])
        # The keywords of the last window.
        again = call(
            ["dump", "--state-dir", self.state_dir, "--from", "last_start", "--to", str(a[6] / 1e6)]
        )
        self.assertEqual(len(events_of(again[1])), 0 if a[-1] + 50_000_000 > a[6] else 1)

    def test_settle(self) -> None:
        """
        --since-last without --to stops --settle seconds before now.
        """
        a = self.arrivals
        ctx = make_ctx()
        ctx.now = lambda: a[3] + 2_000_000
        out = call(["dump", "--state-dir", self.state_dir, "--since-last", "--settle", "2"], ctx)
        self.assertEqual(len(events_of(out[1])), 4)

    def test_errors(self) -> None:
        for argv, text in [
            (["--since-last", "--from", "now"], "exclude each other"),
            (["--from", "last_end"], "no dump was recorded"),
            (["--from", "20240314092700", "--to", "20240314092600"], "ends before it starts"),
            (["--to", "yesterday"], "bad time"),
            (["--settle", "-1", "--since-last"], "negative"),
        ]:
            status, out, err = call(["dump", "--state-dir", self.state_dir, *argv])
            self.assertEqual((status, out), (1, ""), argv)
            self.assertIn(text, err)
        with open(os.path.join(self.state_dir, LAST_FILE), "w") as f:
            f.write("garbage\n")
        status, out, err = call(["dump", "--state-dir", self.state_dir, "--since-last"])
        self.assertIn("not two times", err)

    def test_arrival_index(self) -> None:
        conn = sqlite3.connect(os.path.join(self.state_dir, "lbtwist.sqlite"))
        plan = " ".join(
            str(row)
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT jobid FROM events WHERE arrived > 1 AND arrived <= 2"
                " ORDER BY arrived, id"
            )
        )
        conn.close()
        self.assertIn("events_arrived", plan)

    def test_pages(self) -> None:
        reader = SQLiteReader(os.path.join(self.state_dir, "lbtwist.sqlite"))
        self.addCleanup(reader.close)
        got, after, pages = [], None, 0
        while True:
            page, after = reader.dump_page(None, None, after, 3)
            got += page
            pages += 1
            if after is None:
                break
        self.assertEqual(pages, -(-len(self.lines) // 3))
        out = call(["dump", "--state-dir", self.state_dir, "--page", "2"])[1]
        self.assertEqual(out, call(["dump", "--state-dir", self.state_dir])[1])
        self.assertEqual(call(["dump", "--state-dir", self.state_dir, "--page", "0"])[0], 2)
        self.assertEqual([e.arrived for e in got], self.arrivals)
        self.assertEqual(reader.dump(), got)


class LoadTests(SynchronousTestCase):
    def dump_of(self, state_dir: str) -> str:
        status, out, err = call(["dump", "--state-dir", state_dir])
        self.assertEqual((status, err), (0, ""))
        return out

    def test_round_trip_and_duplicates(self) -> None:
        source = self.mktemp()
        fill(source, ALL_LINES)
        dump = self.dump_of(source)
        target = self.mktemp()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(dump)
        status, out, err = call(["load", path, "--state-dir", target, "--chunk", "7"])
        self.assertEqual(
            (status, out, err), (0, f"stored {len(ALL_LINES)}, duplicate 0, refused 0\n", "")
        )
        self.assertEqual(statuses(target), statuses(source))
        self.assertEqual(self.dump_of(target), dump)
        # Again: every event is a duplicate, nothing changes.
        status, out, err = call(["load", "-", "--state-dir", target], make_ctx(stdin=dump))
        self.assertEqual(out, f"stored 0, duplicate {len(ALL_LINES)}, refused 0\n")
        self.assertEqual(statuses(target), statuses(source))

    def test_refused(self) -> None:
        source = self.mktemp()
        fill(source, traces.cream_aborted())
        dump = self.dump_of(source).splitlines()
        bad = [
            dump[0],
            "DATE=20240314092653.000000 HOST=x",
            "DG.ARRIVED=nonsense DATE=1",
            *dump[1:],
        ]
        status, out, err = call(
            ["load", "-", "--state-dir", self.mktemp()], make_ctx(stdin="\n".join(bad) + "\n")
        )
        self.assertEqual(status, 1)
        self.assertEqual(out, f"stored {len(traces.cream_aborted())}, duplicate 0, refused 2\n")
        self.assertIn("-:2: ERR", err)
        self.assertIn("no DG.ARRIVED= prefix", err)
        self.assertIn("-:3: ERR", err)
        self.assertEqual(call(["load", "-", "--state-dir", "x", "--chunk", "0"])[0], 2)
        # --max-errors caps the lines reported, not the count.
        status, out, err = call(
            ["load", "-", "--state-dir", self.mktemp(), "--max-errors", "1"],
            make_ctx(stdin="\n".join(bad) + "\n"),
        )
        self.assertIn("refused 2", out)
        self.assertEqual(err.count("ERR"), 1)

    @settings(max_examples=10, deadline=None)
    @given(
        st.lists(
            st.sampled_from([n for n, _ in traces.iter_all()]), min_size=1, max_size=4, unique=True
        ),
        st.randoms(use_true_random=False),
        st.lists(st.sampled_from([0, 0.000001, 0.5, 1, 3600]), min_size=200, max_size=200),
    )
    def test_round_trip_property(
        self, names: list[str], rnd: random.Random, steps: list[float]
    ) -> None:
        """
        Random traces, interleaved and shuffled (late events), arriving at random
        intervals (several in one microsecond): dump -> load into an empty store
        gives every job's status exactly.
        """
        every = dict(traces.iter_all())
        lines = [line for name in names for line in every[name]]
        rnd.shuffle(lines)
        lines += rnd.sample(lines, min(3, len(lines)))  # duplicates
        source = self.mktemp()
        os.makedirs(source)
        clock = Clock()
        clock.advance(START)
        store = SQLiteStore(os.path.join(source, "lbtwist.sqlite"), clock=clock, runner=run_now)
        for i, line in enumerate(lines):
            store.store([(line, parse_event(line))])
            clock.advance(steps[i % len(steps)])
        store.close()
        dump = self.dump_of(source)
        target = self.mktemp()
        status, out, err = call(["load", "-", "--state-dir", target], make_ctx(stdin=dump))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(statuses(target), statuses(source))


class AtAndExplainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state_dir = self.mktemp()
        self.lines = traces.cream_aborted()
        self.arrivals = fill(self.state_dir, self.lines)
        self.jobid = parse_event(self.lines[0]).jobid

    def test_status_at(self) -> None:
        dates = [parse_event(x).date for x in self.lines]
        status, out, err = call(
            [
                "status",
                "--json",
                "--state-dir",
                self.state_dir,
                "--at",
                str(dates[0] / 1e6),
                self.jobid,
            ]
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["state"], "Submitted")
        now = call(["status", "--json", "--state-dir", self.state_dir, self.jobid])[1]
        self.assertEqual(json.loads(now)["state"], "Aborted")
        later = call(
            [
                "status",
                "--json",
                "--state-dir",
                self.state_dir,
                "--at",
                str(dates[-1] / 1e6),
                self.jobid,
            ]
        )[1]
        self.assertEqual(json.loads(later), json.loads(now))
        # By arrival: the store's clock put every arrival after the events' DATEs... or not.
        first = call(
            [
                "status", "--json", "--state-dir", self.state_dir, "--by-arrival",
                "--at", str(self.arrivals[0] / 1e6 - 1), self.jobid,
            ]
        )  # fmt: skip
        self.assertEqual(first[0], 1)
        self.assertIn("no such job", first[2])
        self.assertEqual(call(["status", "--by-arrival", "--state-dir", "x", "j"])[0], 2)
        self.assertEqual(call(["status", "--at", "now", "-all"])[0], 2)
        # Without --state-dir over HTTPS: a bad time fails before any connection.
        status, out, err = call(["status", "--at", "whenever", "j"])
        self.assertEqual((status, out), (1, ""))
        self.assertIn("bad time", err)

    def test_explain(self) -> None:
        status, out, err = call(["explain", "--state-dir", self.state_dir, self.jobid])
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"{self.jobid}: Aborted")
        (abort,) = [x for x in lines if "-> Aborted" in x]
        self.assertIn("CREAMAbort", abort)
        self.assertIn("DATE - arrival per producer (count, min, max):", lines)
        status, out, err = call(["explain", "--json", "--state-dir", self.state_dir, self.jobid])
        records = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(len(records), len(self.lines))
        self.assertTrue(all("skew_s" in r for r in records))
        self.assertEqual(call(["explain", "--state-dir", self.state_dir, "https://x/y"])[0], 1)

    def test_explain_in_arrival_order(self) -> None:
        """
        An event that arrived last but is dated before the end shows as late, last.
        """
        lines = traces.cream_done_ok_unpurged()
        late = next(x for x in lines if "REALLY-RUNNING" in x.split("NEW_STATE=")[-1])
        lines = [x for x in lines if x is not late] + [late]
        state_dir = self.mktemp()
        fill(state_dir, lines)
        jobid = parse_event(lines[0]).jobid
        status, out, err = call(["explain", "--json", "--state-dir", state_dir, jobid])
        records = [json.loads(x) for x in out.splitlines()]
        self.assertEqual([r["number"] for r in records], list(range(1, len(lines) + 1)))
        self.assertEqual(records[-1]["effect"], "late")
        self.assertIn("late_before", records[-1])
