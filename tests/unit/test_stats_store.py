# -*- test-case-name: tests.unit.test_stats_store -*-
"""
Tests for L{lbtwist.store.lifecycle} through L{lbtwist.store.sqlite.SQLiteStore}: the
indexes written with the events, the statistics and trace queries, trace after
purge, expiry in chunks, the migration's backfill; the web and command-line routes.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.core.errors import TooBig
from lbtwist.core.events import parse_event
from lbtwist.core.purge import DAY, PurgeRules
from lbtwist.core.stats import StatsRequest
from lbtwist.core.trace import TraceRequest
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.traceexpiry import TraceExpiry
from lbtwist.service.web.resources import QueryResource
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import MIGRATIONS, SQLiteStore, _migrate_stats
from tests import traces

S = 1_000_000
OK = traces.DIRECT_JOBID  # CREAM812461375: Running 09:28:10.001011, Done 09:28:38.001015
FAILED = "https://cream-ce01.example.org:9000/CREAM812461377"
ABORTED = "https://cream-ce01.example.org:9000/CREAM812461379"
RUNNING_AT = 1710408490001011
DONE_AT = 1710408518001015
DAY_FROM, DAY_TO = "2024-03-14T00:00:00Z", "2024-03-15T00:00:00Z"
ADMIN = "/DC=org/DC=example/O=People/CN=Ada Admin"
STATS = "/DC=org/DC=example/O=People/CN=Stan Stats"
TRACER = "/DC=org/DC=example/O=People/CN=Tom Tracer"
POLICY = (
    f'resource "LB" {{ action "GET_STATISTICS" {{ rule permit {{ subject = "{STATS}" }} }}\n'
    f'action "TRACE" {{ rule permit {{ subject = "{TRACER}" }} }} }}'
)


def results(d: Any) -> Any:
    out: list[Any] = []
    d.addCallback(out.append)
    d.addErrback(out.append)
    assert out, "not fired"
    return out[0]


def stats_request(*params: tuple[str, str]) -> StatsRequest:
    return StatsRequest.parse(params, now=0, max_buckets=100)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "lbtwist.sqlite")
        self.clock = Clock()
        self.store = self.open()

    def open(self) -> SQLiteStore:
        store = SQLiteStore(self.path, clock=self.clock, runner=run_now)
        self.addCleanup(store.close)
        store.start()
        return store

    def fill(self, store: SQLiteStore | None = None) -> None:
        store = store or self.store
        for job in (traces.cream_done_ok, traces.cream_done_failed, traces.cream_aborted):
            # One event per commit group: the indexes follow each change.
            for line in job():
                results(store.store([(line, parse_event(line))]))

    def stats(self, *params: tuple[str, str], max_jobs: int = 100) -> Any:
        return results(self.store.stats(stats_request(*params), max_jobs))

    def trace(self, *params: tuple[str, str]) -> list[dict[str, Any]]:
        jobs, more = results(self.store.trace(TraceRequest.parse(params), 10))
        self.assertFalse(more)
        return jobs

    def test_rates(self) -> None:
        """
        Three jobs were submitted that day, two ran, in the 09:00 hour; none the next day.
        """
        self.fill()
        window = (("from", DAY_FROM), ("to", DAY_TO))
        self.assertEqual(self.stats(("state", "Submitted"), *window)["count"], 3)
        answer = self.stats(("state", "Running"), *window, ("step", "3600"))
        self.assertEqual(answer["count"], 2)
        self.assertEqual(answer["buckets"][9], 2)
        self.assertEqual(sum(answer["buckets"]), 2)
        # [from, to): a window ending at the Running entry leaves it out.
        edge = (("from", DAY_FROM), ("to", str(RUNNING_AT / S)))
        self.assertEqual(self.stats(("state", "Running"), *edge)["count"], 0)
        later = (("from", DAY_TO), ("to", "2024-03-16T00:00:00Z"))
        self.assertEqual(self.stats(("state", "Submitted"), *later)["count"], 0)
        # The grouping values are the job's when it entered the state: no worker node
        # at submission, one when running.
        grouped = self.stats(("state", "Submitted"), *window, ("group", "ce_node"))
        self.assertEqual({g["group"]: g["count"] for g in grouped["groups"]}, {None: 3})
        grouped = self.stats(("state", "Running"), *window, ("group", "ce_node"))
        self.assertEqual(
            {g["group"]: g["count"] for g in grouped["groups"]}, {"wn042.example.org": 2}
        )

    def test_durations(self) -> None:
        """
        Running -> Done took 28.000004 s for both finished jobs; the Aborted one never
        got there.
        """
        self.fill()
        answer = self.stats(
            ("state", "Running"), ("to_state", "Done"), ("from", DAY_FROM), ("to", DAY_TO)
        )
        self.assertEqual(answer["count"], 2)
        self.assertEqual(answer["median"], (DONE_AT - RUNNING_AT) / S)
        error = results(
            self.store.stats(
                stats_request(
                    ("state", "Submitted"),
                    ("to_state", "Waiting"),
                    ("from", DAY_FROM),
                    ("to", DAY_TO),
                ),
                2,
            )
        )
        error.trap(TooBig)

    def test_trace(self) -> None:
        """
        From the LRMS id, or the worker node at a moment it ran, to the owner's DN.
        """
        self.fill()
        [job] = self.trace(("lrms_id", "4711.batch01.example.org"))[:1]
        self.assertEqual(job["owner"], traces.CREAM_USER)
        self.assertIn("CREAMExecutor", job["sources"])
        self.assertEqual(job["worker_node"], traces.WORKER)
        self.assertFalse(job["purged"])
        running = self.trace(("node", traces.WORKER), ("at", str((RUNNING_AT + S) / S)))
        self.assertEqual(sorted(j["jobid"] for j in running), [OK, FAILED])
        self.assertEqual(self.trace(("node", traces.WORKER), ("at", str(DONE_AT / S + 1))), [])
        self.assertEqual(self.trace(("node", traces.WORKER), ("at", str(RUNNING_AT / S - 1))), [])
        self.assertEqual(len(self.trace(("dn", traces.CREAM_USER), ("from", DAY_FROM))), 3)
        self.assertEqual(self.trace(("dn", traces.CREAM_USER), ("from", DAY_TO)), [])
        self.assertEqual([j["jobid"] for j in self.trace(("jobid", "CREAM812461379"))], [ABORTED])
        self.assertEqual([j["jobid"] for j in self.trace(("cream_id", "CREAM812461377"))], [FAILED])

    def test_afterPurgeThenExpired(self) -> None:
        """
        A purged job is still traced (from its zombie's record) until the retention has
        passed since its last update; the expiry runs in chunks.
        """
        self.fill()
        now = DONE_AT + 40 * DAY * S
        chunk = results(self.store.purge_chunk(PurgeRules(), now, None, 100))
        self.assertEqual(len(chunk.purged), 3)
        [job] = [
            j
            for j in self.trace(("node", traces.WORKER), ("at", str(RUNNING_AT / S + 1)))
            if j["jobid"] == OK
        ]
        self.assertTrue(job["purged"])
        self.assertEqual(job["owner"], traces.CREAM_USER)
        self.assertIn("CREAMExecutor", job["sources"])
        self.assertIn("Running", job["entered"])
        self.clock.advance(now / S + 365 * DAY)
        expiry = TraceExpiry(self.store, self.clock, retention=365 * DAY, chunk=2)
        expiry.startService()
        self.addCleanup(expiry.stopService)
        self.clock.advance(3600)
        self.assertEqual(expiry.removed, 3)
        self.assertEqual(self.trace(("dn", traces.CREAM_USER)), [])
        self.assertEqual(
            self.stats(("state", "Submitted"), ("from", DAY_FROM), ("to", DAY_TO))["count"], 0
        )

    def test_backfill(self) -> None:
        """
        A store made before the indexes gets them filled by the migration.
        """
        self.fill()
        self.store.close()
        conn = sqlite3.connect(self.path)
        conn.executescript(
            "DROP TABLE state_entries; DROP TABLE trace_jobs; DROP TABLE stat_counts;"
            f" PRAGMA user_version = {MIGRATIONS.index(_migrate_stats)};"
        )
        conn.close()
        self.store = self.open()
        self.assertEqual(
            self.stats(("state", "Submitted"), ("from", DAY_FROM), ("to", DAY_TO))["count"], 3
        )
        self.assertEqual(len(self.trace(("lrms_id", "4711.batch01.example.org"))), 2)


class RoutesTests(SynchronousTestCase):
    """
    C{GET /stats}, C{GET /trace} and the commands on the same store.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.clock = Clock()
        self.store = SQLiteStore(
            os.path.join(self.dir, "lbtwist.sqlite"), clock=self.clock, runner=run_now
        )
        self.addCleanup(self.store.close)
        self.store.start()
        for job in (traces.cream_done_ok, traces.cream_done_failed, traces.cream_aborted):
            results(self.store.store([(line, parse_event(line)) for line in job()]))
        self.who = Identity(ADMIN)
        self.resource = QueryResource(
            self.store,
            clock=self.clock,
            policy=parse_policy(POLICY),
            super_users=(ADMIN,),
            identify=lambda request: self.who,
        )

    def get(self, target: str, as_dn: str = ADMIN) -> tuple[int, bytes]:
        self.who = Identity(as_dn)
        path, _, _ = target.partition("?")
        req = DummyRequest([seg.encode() for seg in path[1:].split("/")])
        req.uri = target.encode()
        self.resource.render(req)  # type: ignore[arg-type]
        assert req.finished
        return req.responseCode or 200, b"".join(req.written)

    def test_rights(self) -> None:
        stats = f"/stats?state=Running&from={DAY_FROM}&to={DAY_TO}"
        trace = "/trace?lrms_id=4711.batch01.example.org"
        for dn, stats_code, trace_code in (
            (ADMIN, 200, 200),
            (STATS, 200, 403),
            (TRACER, 403, 200),
            (traces.CREAM_USER, 403, 403),
        ):
            self.assertEqual(self.get(stats, dn)[0], stats_code, dn)
            self.assertEqual(self.get(trace, dn)[0], trace_code, dn)
        code, body = self.get(stats, STATS)
        self.assertEqual(json.loads(body)["count"], 2)
        code, body = self.get(trace, TRACER)
        data = json.loads(body)
        self.assertEqual([j["owner"] for j in data["jobs"]], [traces.CREAM_USER] * 2)
        self.assertFalse(data["truncated"])

    def test_badAndText(self) -> None:
        code, body = self.get("/stats?state=Nowhere")
        self.assertEqual(code, 400)
        self.assertIn("unknown state", json.loads(body)["message"])
        self.assertEqual(self.get("/trace?node=wn1")[0], 400)
        code, body = self.get(
            f"/stats?state=Running&to_state=Done&from={DAY_FROM}&to={DAY_TO}&format=text"
        )
        self.assertEqual(code, 200)
        self.assertIn(b"Running -> Done", body)
        self.assertIn(b"median 28", body)

    def test_commands(self) -> None:
        self.store.close()
        out, err = io.StringIO(), io.StringIO()
        ctx = CLIContext(env={}, stdout=out, stderr=err, now=lambda: DONE_AT)
        code = run(["trace", "--state-dir", self.dir, "--lrms-id", "4711.batch01.example.org"], ctx)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn(f"owner: {traces.CREAM_USER}", out.getvalue())
        self.assertIn("lrms id: 4711.batch01.example.org", out.getvalue())
        out.truncate(0)
        out.seek(0)
        code = run(
            [
                "stats",
                "--state-dir",
                self.dir,
                "-s",
                "Submitted",
                "--from",
                DAY_FROM,
                "--to",
                DAY_TO,
                "--json",
            ],
            ctx,
        )
        self.assertEqual(code, 0, err.getvalue())
        self.assertEqual(json.loads(out.getvalue())["count"], 3)
        self.assertEqual(run(["stats", "-s", "Running"], ctx), 2)
        self.assertEqual(run(["stats", "--state-dir", self.dir, "-s", "Nowhere"], ctx), 1)
        self.assertIn("unknown state", err.getvalue())
