# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
Statistics, traceability and purging on PostgreSQL: what differs from the SQLite
store's L{lbtwist.store.lifecycle} and L{lbtwist.store.purging}, whose reads and
chunk logic run unchanged on a L{lbtwist.store.postgres.PgConnection}.

  - the C{state_entries} and C{trace_jobs} tables: the same columns; PostgreSQL's
    upserts name one conflict target, so a state entry's key is C{(jobid,
    state)} (one row per job and state, the last entry, as on SQLite) and the
    range scans of the rates use an index on C{(state, entered)} that holds
    the grouping columns;
  - the zombies' trace records are made by L{lbtwist.core.purge.trace_record}
    from the stored statuses (SQLite builds them with its JSON functions);
  - a purge chunk takes the job locks of the commit groups (L{lock_jobs}) and
    leaves out the jobs another front end changed since the chunk read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from lbtwist.core.purge import trace_record
from lbtwist.core.states.status import parse_iso
from lbtwist.core.stats import EntryRow
from lbtwist.core.trace import TraceRow
from lbtwist.store.lifecycle import TRACE_SCHEMA, backfill_with
from lbtwist.store.purging import PurgedJob

SCHEMA = """
CREATE TABLE state_entries (
    state TEXT NOT NULL,
    entered BIGINT NOT NULL,
    jobid TEXT NOT NULL,
    destination TEXT,
    ce_node TEXT,
    owner TEXT,
    vo TEXT,
    PRIMARY KEY (jobid, state)
);
CREATE INDEX state_entries_range ON state_entries (state, entered)
    INCLUDE (jobid, destination, ce_node, owner, vo);
""" + TRACE_SCHEMA.format(time="BIGINT")

_ENTRY_SQL = (
    "INSERT INTO state_entries (state, entered, jobid, destination, ce_node, owner, vo)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (jobid, state) DO UPDATE SET"
    " entered = excluded.entered, destination = excluded.destination,"
    " ce_node = excluded.ce_node, owner = excluded.owner, vo = excluded.vo"
)
_TRACE_COLUMNS = (
    "owner",
    "owner_norm",
    "fqan",
    "lrms_id",
    "cream_id",
    "worker_node",
    "running_from",
    "running_to",
    "first",
    "last",
)
_TRACE_SQL = (
    "INSERT INTO trace_jobs (jobid, "
    + ", ".join(_TRACE_COLUMNS)
    + ") VALUES (?"
    + ", ?" * len(_TRACE_COLUMNS)
    + ") ON CONFLICT (jobid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _TRACE_COLUMNS)
)


def write(conn: Any, entry_rows: Iterable[EntryRow], trace_rows: Iterable[TraceRow]) -> None:
    """
    Write state entries and trace rows (inside the caller's transaction).
    """
    # One row per key and statement: an upsert may not touch a row twice.
    by_key = {
        (e.jobid, e.state): (e.state, e.entered, e.jobid, e.destination, e.ce_node, e.owner, e.vo)
        for e in entry_rows
    }
    conn.executemany(_ENTRY_SQL, list(by_key.values()))
    traces = {t.key()[0]: t.key() for t in trace_rows}
    conn.executemany(_TRACE_SQL, list(traces.values()))


def backfill(conn: Any, chunk: int = 10_000) -> None:
    """
    Fill both indexes from the stored statuses (the migration, for existing stores).
    """
    backfill_with(conn, write, chunk)


#: A job row's parent job id (the purge keeps subjobs of a stored parent).
PARENT_SQL = "status::jsonb->>'parent_job'"


def write_zombies(conn: Any, now: int, jobids: list[str]) -> None:
    """
    The zombie rows (with their trace records) of jobs about to be purged.
    """
    rows = conn.execute(
        "SELECT jobid, uniq, status, (SELECT array_agg(source ORDER BY first) FROM"
        " (SELECT source, MIN(id) AS first FROM events e WHERE e.jobid = j.jobid"
        " GROUP BY source) s) FROM jobs j WHERE jobid = ANY(?)",
        (jobids,),
    ).fetchall()
    conn.executemany(
        "INSERT INTO zombies (uniq, jobid, purged_at, trace) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (uniq) DO UPDATE SET jobid = excluded.jobid,"
        " purged_at = excluded.purged_at, trace = excluded.trace",
        [
            (uniq, jobid, now, trace_record(json.loads(status), list(sources or ())))
            for jobid, uniq, status, sources in rows
        ],
    )


def lock_jobs(conn: Any, chosen: list[PurgedJob]) -> list[PurgedJob]:
    """
    Take the commit groups' job locks of a purge chunk's jobs (one order, as
    L{lbtwist.store.postgres.PostgresBackend.begin}) and keep those not changed
    since the chunk read them: an event another front end stored meanwhile
    keeps its job.
    """
    jobs = sorted(job.jobid for job in chosen)
    if not jobs:
        return []
    conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM"
        " (SELECT hashtextextended(j, 0) AS h FROM unnest(?::text[]) AS j"
        " GROUP BY h ORDER BY h) AS locks",
        (jobs,),
    )
    now = dict(
        conn.execute("SELECT jobid, list_time FROM jobs WHERE jobid = ANY(?)", (jobs,)).fetchall()
    )
    return [
        job
        for job in chosen
        if job.jobid in now and now[job.jobid] and parse_iso(now[job.jobid]) == job.last_update
    ]
