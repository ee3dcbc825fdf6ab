# -*- test-case-name: tests.unit.test_web_conditions -*-
"""
Tests for L{lbtwist.service.web.conditions} (L&B's query condition syntax) and the job
list queries of both stores (L{lbtwist.store.query}).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.states.status import JobStatus, format_iso
from lbtwist.service.web.conditions import (
    MAX_CONDITIONS,
    ConditionError,
    parse_conditions,
    parse_time,
)
from lbtwist.store.batch import BatchPlan, JobRow, MappingRow, run_now
from lbtwist.store.query import (
    JobCondition,
    JobQuery,
    decode_cursor,
    encode_cursor,
    unique_of,
)
from lbtwist.store.sqlite import SQLiteStore
from lbtwist.testing import MemoryStore

NOW = 1_700_000_000 * 1_000_000


class ParseTests(SynchronousTestCase):
    def test_lb_example(self) -> None:
        self.assertEqual(
            parse_conditions("status=running|=scheduled&lastupdatetime>last3600", now=NOW),
            (
                JobCondition("state", (("=", "Running"), ("=", "Scheduled"))),
                JobCondition("lastUpdateTime", ((">", NOW - 3600 * 1_000_000),)),
            ),
        )

    def test_operators(self) -> None:
        for op in ("=", "!=", "<", ">", "<=", ">="):
            self.assertEqual(
                parse_conditions(f"exit_code{op}3", now=NOW),
                (JobCondition("exit_code", ((op, 3),)),),
            )

    def test_attribute_spellings(self) -> None:
        cases = {
            "STATE=done": ("state", "Done"),
            "JobType=cream": ("jobtype", "CREAM"),
            "last_update_time>=1700000000": ("lastUpdateTime", NOW),
            "done_code=failed": ("done_code", 1),
            "doneCode=2": ("done_code", 2),
            "ce_node=wn01.example.org": ("ce_node", "wn01.example.org"),
            "destination=ce.example.org:8443/cream-pbs-long": (
                "destination",
                "ce.example.org:8443/cream-pbs-long",
            ),
            "owner=/DC=org/CN=A B": ("owner", "/DC=org/CN=A B"),
            "cream_state=done-ok": ("cream_state", "Done-ok"),
        }
        for text, (field, value) in cases.items():
            [cond] = parse_conditions(text, now=NOW)
            self.assertEqual((cond.field, cond.alternatives[0][1]), (field, value), text)

    def test_alternatives_repeat_attribute(self) -> None:
        [cond] = parse_conditions("state=done|state=aborted", now=NOW)
        self.assertEqual(cond.alternatives, (("=", "Done"), ("=", "Aborted")))

    def test_times(self) -> None:
        self.assertEqual(parse_time("1700000000", now=0), NOW)
        self.assertEqual(parse_time("2023-11-14T22:13:20Z", now=0), NOW)
        self.assertEqual(parse_time("2023-11-14T22:13:20.5Z", now=0), NOW + 500_000)
        self.assertEqual(parse_time("last0", now=NOW), NOW)
        self.assertEqual(parse_time("LAST10", now=NOW), NOW - 10_000_000)

    def test_errors(self) -> None:
        for text in (
            "colour=red",
            "state=sleeping",
            "state",
            "=done",
            "state=done|jobtype=CREAM",
            "exit_code=zero",
            "lastupdatetime>tomorrow",
            "lastupdatetime>2023-13-45T00:00:00Z",
            "destination=",
            "cream_state=floating",
            "x" * 5000,
            "&".join(["state=done"] * (MAX_CONDITIONS + 1)),
            "|".join(["state=done"] * (MAX_CONDITIONS + 1)),
        ):
            self.assertRaises(ConditionError, parse_conditions, text, now=NOW)

    def test_empty(self) -> None:
        self.assertEqual(parse_conditions("", now=NOW), ())
        self.assertEqual(parse_conditions("&&", now=NOW), ())

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=200))
    def test_any_text(self, text: str) -> None:
        """
        Any text parses or raises L{ConditionError}; at most 32 conditions result.
        """
        try:
            conds = parse_conditions(text, now=NOW)
        except ConditionError:
            return
        self.assertLessEqual(sum(len(c.alternatives) for c in conds), MAX_CONDITIONS)

    def test_cursor_round_trip(self) -> None:
        pos = ("2024-03-14T09:26:53.001000Z", "https://h:9000/CREAM1")
        self.assertEqual(decode_cursor(encode_cursor(pos)), pos)
        for bad in ("", "!!", encode_cursor(("a", "b"))[:-3], "WzFd"):
            self.assertRaises(ValueError, decode_cursor, bad)

    def test_unique_of(self) -> None:
        self.assertEqual(unique_of("https://lb.example.org:9000/Hq3tK8vW"), "Hq3tK8vW")
        self.assertEqual(unique_of("https://ce:9000/CREAM1"), "CREAM1")


# Both stores answer job queries alike.

OWNERS = (
    "/DC=org/DC=example/CN=Alice",
    "/dc=org/dc=example/cn=alice",
    "/DC=org/DC=example/CN=Bob/emailAddress=bob@example.org",
    None,
)
STATES = ("Submitted", "Running", "Done", "Aborted")
JOBTYPES = ("CREAM", "SIMPLE", None)
DESTS = ("ce1:8443/cream-pbs-long", "ce2:8443/cream-pbs-short", None)
TIMES = (NOW, NOW + 1, NOW + 1_000_000, None)


@st.composite
def job_rows(draw: Any) -> list[JobRow]:
    rows = []
    for i in range(draw(st.integers(0, 25))):
        status = JobStatus(
            state=draw(st.sampled_from(STATES)),
            jobId=f"https://ce{i % 3}.example.org:9000/CREAM{i:06d}",
            owner=draw(st.sampled_from(OWNERS)),
            jobtype=draw(st.sampled_from(JOBTYPES)),
            destination=draw(st.sampled_from(DESTS)),
            exit_code=draw(st.sampled_from((0, 1, None))),
            lastUpdateTime=draw(st.sampled_from(TIMES)),
        )
        data = status.to_json_dict()
        rows.append(
            JobRow(
                jobid=str(status.jobId),
                owner=status.owner,
                state=status.state,
                jobtype=status.jobtype,
                last_update=data["lastUpdateTime"],
                machine="cream",
                nevents=1,
                status_json=json.dumps(data),
            )
        )
    return rows


_VALUES: dict[str, Any] = {
    "state": st.sampled_from(STATES),
    "jobtype": st.sampled_from(("CREAM", "SIMPLE")),
    "owner": st.sampled_from([o for o in OWNERS if o]),
    "destination": st.sampled_from([d for d in DESTS if d]),
    "exit_code": st.integers(-1, 2),
    "lastUpdateTime": st.sampled_from([t for t in TIMES if t]),
}


@st.composite
def job_queries(draw: Any) -> JobQuery:
    conds = []
    for field in draw(st.lists(st.sampled_from(sorted(_VALUES)), max_size=3)):
        alts = draw(
            st.lists(
                st.tuples(st.sampled_from(("=", "!=", "<", ">", "<=", ">=")), _VALUES[field]),
                min_size=1,
                max_size=3,
            )
        )
        conds.append(JobCondition(field, tuple(alts)))
    owner = draw(st.sampled_from(OWNERS))
    return JobQuery(owner=owner, conditions=tuple(conds), limit=draw(st.integers(1, 7)))


def _done(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def all_pages(store: Any, query: JobQuery) -> list[list[str]]:
    pages = []
    while True:
        page = _done(store.query_jobs(query))
        pages.append([j.jobid for j in page.jobs])
        if page.next is None:
            return pages
        query = JobQuery(query.owner, query.conditions, query.limit, page.next)


class StoreQueryTests(SynchronousTestCase):
    def stores(self, rows: list[JobRow]) -> tuple[MemoryStore, SQLiteStore]:
        memory = MemoryStore(Clock())
        memory.backend.write(BatchPlan(jobs=list(rows)))
        sqlite = SQLiteStore(self.mktemp(), clock=Clock(), runner=run_now)
        self.addCleanup(sqlite.close)
        sqlite.backend.write(BatchPlan(jobs=list(rows)))
        return memory, sqlite

    @settings(max_examples=100, deadline=None)
    @given(job_rows(), job_queries())
    def test_stores_agree(self, rows: list[JobRow], query: JobQuery) -> None:
        """
        The memory and SQLite stores list the same jobs, in the same pages; the pages
        put together are the whole listing, in (last update desc, job id) order.
        """
        memory, sqlite = self.stores(rows)
        pages = all_pages(memory, query)
        self.assertEqual(all_pages(sqlite, query), pages)
        whole = all_pages(memory, JobQuery(query.owner, query.conditions, 1000))
        self.assertEqual([j for p in pages for j in p], whole[0])
        by_id = {r.jobid: r for r in rows}
        keys = [(by_id[j].last_update or "", j) for j in whole[0]]
        by_time_desc = sorted(sorted(keys, key=lambda k: k[1]), key=lambda k: k[0], reverse=True)
        self.assertEqual(keys, by_time_desc)
        _done(sqlite.close())

    def test_owner_normalized(self) -> None:
        rows = _done_rows()
        memory, sqlite = self.stores(rows)
        for store in (memory, sqlite):
            page = _done(store.query_jobs(JobQuery(owner="/DC=ORG/DC=EXAMPLE/CN=ALICE")))
            self.assertEqual(len(page.jobs), 2)
            page = _done(
                store.query_jobs(JobQuery(owner="/DC=org/DC=example/CN=Bob/Email=bob@example.org"))
            )
            self.assertEqual(len(page.jobs), 1)

    def test_find_job(self) -> None:
        memory, sqlite = self.stores(_done_rows())
        for store in (memory, sqlite):
            self.assertEqual(
                _done(store.find_job("CREAM000001")), "https://ce1.example.org:9000/CREAM000001"
            )
            self.assertIsNone(_done(store.find_job("CREAM999")))

    def test_find_status(self) -> None:
        """
        C{find_status} is C{find_job} and C{status} in one read, in both stores,
        CREAM ids of WMS jobs included.
        """
        rows = _done_rows()
        glite = "https://lb.example.org:9000/WMSjob0001"
        data = JobStatus(state="Running", owner=OWNERS[0], jobId=glite).to_json_dict()
        rows.append(JobRow(glite, OWNERS[0], "Running", None, None, "glite", 3, json.dumps(data)))
        mapping = MappingRow("CREAM777777777", "https://ce.example.org:8443/CREAM777777777", glite)
        memory, sqlite = self.stores(rows)
        for store in (memory, sqlite):
            store.backend.write(BatchPlan(mappings=[mapping]))
            for row in rows:
                jobid, status = _done(store.find_status(row.jobid.rsplit("/", 1)[1]))
                self.assertEqual(jobid, row.jobid)
                self.assertEqual(status, _done(store.status(row.jobid)))
                self.assertEqual(status.to_json_dict(), json.loads(row.status_json))
            jobid, status = _done(store.find_status("CREAM777777777"))
            self.assertEqual((jobid, status.state), (glite, "Running"))
            self.assertIsNone(_done(store.find_status("CREAM999")))

    def test_find_status_sees_new_statuses(self) -> None:
        """
        The SQLite reader keeps parsed statuses, but answers the stored one after
        every change, and hands out copies.
        """
        [row, *_] = _done_rows()
        _, sqlite = self.stores([row])
        unique = row.jobid.rsplit("/", 1)[1]
        first = _done(sqlite.find_status(unique))[1]
        first.state = "Scribbled"
        self.assertEqual(_done(sqlite.find_status(unique))[1].state, "Done")
        self.assertEqual(_done(sqlite.status(row.jobid)).state, "Done")
        data = json.loads(row.status_json) | {"state": "Cleared"}
        changed = JobRow(
            row.jobid, row.owner, "Cleared", None, row.last_update, None, 2, json.dumps(data)
        )
        sqlite.backend.write(BatchPlan(jobs=[changed]))
        self.assertEqual(_done(sqlite.find_status(unique))[1].state, "Cleared")
        self.assertEqual(_done(sqlite.status(row.jobid)).state, "Cleared")

    def test_status_cache_bounded_and_parses_once(self) -> None:
        """
        A polled job's JSON is parsed once; the cache keeps at most
        C{status_cache} statuses.
        """
        from lbtwist.store import sqlite as sqlite_module

        rows = _done_rows()
        _, sqlite = self.stores(rows)
        parsed: list[str] = []
        real = sqlite_module.status_from_json

        def counting(data: dict[str, Any]) -> JobStatus:
            parsed.append(data["jobId"])
            return real(data)

        self.patch(sqlite_module, "status_from_json", counting)
        sqlite._queries.status_cache = 2
        first = rows[0].jobid.rsplit("/", 1)[1]
        for _ in range(3):
            self.assertEqual(_done(sqlite.find_status(first))[0], rows[0].jobid)
        self.assertEqual(parsed, [rows[0].jobid])
        for row in rows:
            _done(sqlite.find_status(row.jobid.rsplit("/", 1)[1]))
        self.assertEqual(len(sqlite._queries._parsed), 2)
        _done(sqlite.find_status(first))
        self.assertEqual(parsed.count(rows[0].jobid), 2)

    def test_sqlite_uses_indexes(self) -> None:
        """
        Listing pages and lookups by unique part are index searches, not table scans.
        """
        from lbtwist.store.query import sql_where

        _, sqlite = self.stores(_done_rows())
        conn = sqlite.backend.conn
        for query in (
            JobQuery(owner="/DC=org/CN=x", after=("2024", "x")),
            JobQuery(after=("2024", "x")),
        ):
            where, args = sql_where(query)
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT jobid FROM jobs WHERE {where}"
                " ORDER BY list_time DESC, jobid LIMIT 10",
                args,
            ).fetchall()
            text = " ".join(str(row[-1]) for row in plan)
            self.assertRegex(text, "USING (COVERING )?INDEX jobs_")
            self.assertNotIn("TEMP B-TREE", text)
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT jobid FROM jobs WHERE uniq = 'x'").fetchall()
        self.assertIn("jobs_uniq", " ".join(str(row[-1]) for row in plan))


def _done_rows() -> list[JobRow]:
    rows = []
    for i, owner in enumerate(OWNERS):
        data = JobStatus(
            state="Done",
            owner=owner,
            lastUpdateTime=NOW + i,
            jobId=f"https://ce{i}.example.org:9000/CREAM{i:06d}",
        ).to_json_dict()
        rows.append(
            JobRow(
                str(data["jobId"]),
                owner,
                "Done",
                None,
                format_iso(NOW + i),
                None,
                1,
                json.dumps(data),
            )
        )
    return rows
