# -*- test-case-name: tests.unit.test_stats_store -*-
"""
The SQLite side of statistics and traceability: the state-entry index and the trace
index, written with the events that change them (L{write}, in the commit group's
transaction), filled for existing stores by the migration (L{backfill}), read by
index range scans (L{stats}, L{trace}), expired in chunks (L{expire_traces}).

C{state_entries} is clustered on C{(state, entered, jobid)} and holds the grouping
columns, so a rate or a grouped count reads one range of one tree; a unique index on
C{(jobid, state)} keeps one row per job and state (the last entry) and joins the
start of a duration. C{trace_jobs} has one row per job, kept after a purge until
C{trace-retention} has passed since its last state change (L{expire_traces}).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from lbtwist.core.errors import InvalidValue, TooBig
from lbtwist.core.jobid import unique_of
from lbtwist.core.states.status import public_dict
from lbtwist.core.stats import EntryRow, StatsRequest, duration_answer, entries, rate_answer
from lbtwist.core.trace import TraceRequest, TraceRow, job_answer, sort_key, trace_row

SCHEMA = """
CREATE TABLE state_entries (
    state TEXT NOT NULL,
    entered INTEGER NOT NULL,
    jobid TEXT NOT NULL,
    destination TEXT,
    ce_node TEXT,
    owner TEXT,
    vo TEXT,
    PRIMARY KEY (state, entered, jobid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX state_entries_job ON state_entries (jobid, state);
CREATE TABLE trace_jobs (
    jobid TEXT PRIMARY KEY,
    owner TEXT,
    owner_norm TEXT,
    fqan TEXT,
    lrms_id TEXT,
    cream_id TEXT,
    worker_node TEXT,
    running_from INTEGER,
    running_to INTEGER,
    first INTEGER,
    last INTEGER
);
CREATE INDEX trace_lrms ON trace_jobs (lrms_id) WHERE lrms_id IS NOT NULL;
CREATE INDEX trace_cream ON trace_jobs (cream_id) WHERE cream_id IS NOT NULL;
CREATE INDEX trace_node ON trace_jobs (worker_node, running_from) WHERE worker_node IS NOT NULL;
CREATE INDEX trace_owner ON trace_jobs (owner_norm, first, last);
CREATE INDEX trace_fqan ON trace_jobs (fqan, first, last) WHERE fqan IS NOT NULL;
CREATE INDEX trace_last ON trace_jobs (last)
"""

_ENTRY_SQL = (
    "INSERT OR REPLACE INTO state_entries"
    " (state, entered, jobid, destination, ce_node, owner, vo) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_TRACE_SQL = (
    "INSERT OR REPLACE INTO trace_jobs (jobid, owner, owner_norm, fqan, lrms_id, cream_id,"
    " worker_node, running_from, running_to, first, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_TRACE_COLUMNS = (
    "jobid, owner, owner_norm, fqan, lrms_id, cream_id, worker_node, running_from,"
    " running_to, first, last"
)


def write(
    conn: sqlite3.Connection, entry_rows: Iterable[EntryRow], trace_rows: Iterable[TraceRow]
) -> None:
    """
    Write state entries and trace rows (inside the caller's transaction).
    """
    conn.executemany(
        _ENTRY_SQL,
        [
            (e.state, e.entered, e.jobid, e.destination, e.ce_node, e.owner, e.vo)
            for e in entry_rows
        ],
    )
    conn.executemany(_TRACE_SQL, [attrs_tuple(t) for t in trace_rows])


def attrs_tuple(row: TraceRow) -> tuple[Any, ...]:
    return row.key()


def backfill(conn: sqlite3.Connection, chunk: int = 10_000) -> None:
    """
    Fill both indexes from the stored statuses (the migration, for existing stores).
    """
    # Imported here: the status parser of the batch module is what reads stored JSON.
    from lbtwist.store.batch import status_from_json

    after = ""
    while True:
        rows = conn.execute(
            "SELECT jobid, status FROM jobs WHERE jobid > ? ORDER BY jobid LIMIT ?", (after, chunk)
        ).fetchall()
        if not rows:
            return
        entry_rows: list[EntryRow] = []
        trace_rows = []
        for jobid, text in rows:
            status = status_from_json(json.loads(text))
            entry_rows.extend(entries(jobid, None, status))
            trace_rows.append(trace_row(jobid, status))
        write(conn, entry_rows, trace_rows)
        after = rows[-1][0]


def stats(conn: sqlite3.Connection, request: StatsRequest, *, max_jobs: int) -> dict[str, Any]:
    """
    The answer of a statistics request (L{lbtwist.core.stats}).

    @param max_jobs: most durations one request reads (counts have no such bound:
        SQLite counts the index range).
    @raise TooBig: a duration request over more than C{max_jobs} jobs.
    """
    window = (request.start, request.end)
    if request.to_state is None:
        if request.group is None:
            (total,) = conn.execute(
                "SELECT COUNT(*) FROM state_entries WHERE state = ? AND entered >= ? AND entered < ?",
                (request.state, *window),
            ).fetchone()
            counts: dict[str | None, int] = {None: int(total)}
        else:
            counts = {
                key: int(n)
                for key, n in conn.execute(
                    f"SELECT {request.group}, COUNT(*) FROM state_entries"  # noqa: S608
                    " WHERE state = ? AND entered >= ? AND entered < ? GROUP BY 1",
                    (request.state, *window),
                )
            }
        per: dict[int, int] | None = None
        if request.step is not None:
            width = request.step * 1_000_000
            per = {
                int(b): int(n)
                for b, n in conn.execute(
                    "SELECT (entered - ?) / ?, COUNT(*) FROM state_entries"
                    " WHERE state = ? AND entered >= ? AND entered < ? GROUP BY 1",
                    (request.start, width, request.state, *window),
                )
            }
        return rate_answer(request, counts, per)
    group = f"b.{request.group}" if request.group is not None else "NULL"
    rows = conn.execute(
        f"SELECT {group}, b.entered - a.entered FROM state_entries b"  # noqa: S608
        " JOIN state_entries a ON a.jobid = b.jobid AND a.state = ?"
        " WHERE b.state = ? AND b.entered >= ? AND b.entered < ? AND a.entered <= b.entered"
        " LIMIT ?",
        (request.state, request.to_state, *window, max_jobs + 1),
    ).fetchall()
    if len(rows) > max_jobs:
        raise TooBig(
            f"more than {max_jobs} jobs entered {request.to_state} in the window"
            " (stats-max-jobs): a shorter window"
        )
    durations: dict[str | None, list[int]] = {}
    for key, duration in rows:
        durations.setdefault(key, []).append(int(duration))
    return duration_answer(request, durations)


def trace(
    conn: sqlite3.Connection, request: TraceRequest, *, max_jobs: int
) -> tuple[list[dict[str, Any]], bool]:
    """
    The jobs of a trace request, each as L{lbtwist.core.trace.job_answer}, live ones
    from their status and events, purged ones from their zombie's trace record.

    @return: the jobs (by first state entry) and whether more than C{max_jobs} matched.
    """
    key, value = request.key, request.value
    where: str
    args: tuple[Any, ...]
    if key == "lrms_id":
        where, args = "lrms_id = ?", (value,)
    elif key == "cream_id":
        where, args = "cream_id = ?", (value,)
    elif key == "jobid":
        jobid = value if "/" in value else _jobid_of(conn, value)
        if jobid is None:
            return [], False
        where, args = "jobid = ?", (jobid,)
    elif key == "node":
        where = "worker_node = ? AND running_from <= ? AND (running_to IS NULL OR running_to >= ?)"
        args = (value, request.at, request.at)
    elif key in ("dn", "fqan"):
        column = "owner_norm" if key == "dn" else "fqan"
        where, args = f"{column} = ?", (value,)
        if request.end is not None:
            where += " AND first <= ?"
            args += (request.end,)
        if request.start is not None:
            where += " AND first >= ? AND last >= ?"
            args += (request.start - request.lifetime, request.start)
    else:  # pragma: no cover - TraceRequest.parse knows no other key
        raise InvalidValue(f"unknown trace key {key!r}")
    rows = conn.execute(
        f"SELECT jobid FROM trace_jobs WHERE {where} LIMIT ?",  # noqa: S608
        (*args, max_jobs + 1),
    ).fetchall()
    more = len(rows) > max_jobs
    jobs = [job for (jobid,) in rows[:max_jobs] if (job := _job(conn, jobid)) is not None]
    jobs.sort(key=sort_key)
    return jobs, more


def _jobid_of(conn: sqlite3.Connection, unique: str) -> str | None:
    row = conn.execute("SELECT jobid FROM jobs WHERE uniq = ? LIMIT 1", (unique,)).fetchone()
    if row is None:
        row = conn.execute("SELECT jobid FROM zombies WHERE uniq = ?", (unique,)).fetchone()
    return None if row is None else str(row[0])


def _job(conn: sqlite3.Connection, jobid: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT status FROM jobs WHERE jobid = ?", (jobid,)).fetchone()
    if row is not None:
        sources = [
            str(s)
            for (s,) in conn.execute(
                "SELECT source FROM events WHERE jobid = ? GROUP BY source ORDER BY MIN(id)",
                (jobid,),
            )
        ]
        return job_answer(public_dict(json.loads(row[0])), sources)
    zombie = conn.execute(
        "SELECT purged_at, trace FROM zombies WHERE uniq = ?", (unique_of(jobid),)
    ).fetchone()
    if zombie is None:
        return None
    record = json.loads(zombie[1])
    status = dict(record.get("status") or {})
    if record.get("fqans"):
        status["user_fqans"] = record["fqans"]
    return job_answer(status, record.get("sources") or [], purged_at=int(zombie[0]))


def expire_traces(conn: sqlite3.Connection, *, before: int, limit: int) -> int:
    """
    Remove up to C{limit} trace rows of purged jobs whose last state change is before C{before}
    (microseconds), with their state entries, in one transaction.

    @return: how many trace rows went (fewer than C{limit}: none are left).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        gone = [
            str(jobid)
            for (jobid,) in conn.execute(
                "SELECT t.jobid FROM trace_jobs t WHERE t.last < ?"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jobid = t.jobid) LIMIT ?",
                (before, limit),
            )
        ]
        conn.executemany("DELETE FROM trace_jobs WHERE jobid = ?", [(j,) for j in gone])
        conn.executemany("DELETE FROM state_entries WHERE jobid = ?", [(j,) for j in gone])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(gone)
