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

Two additions keep every statistics request's work small at any store size
(L{COUNTERS_SCHEMA}, L{add_counters}): C{stat_counts} holds, per state, hour and day,
how many entries there are overall and per value of each grouping column, kept by
triggers on C{state_entries} in the writing transaction, so that a rate over a long
window sums a few counters and counts at most two partial hours of entries; and each
state entry carries, per other state of its job entered no later, how long before it
that state was entered (the C{since_*} columns, kept by the writer and triggers), so
that a duration request reads one index range of the later state without a join.
L{stats_scan} is the straightforward form of the same answers (the test oracle).
"""

from __future__ import annotations

import bisect
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from lbtwist.core.errors import InvalidValue, TooBig
from lbtwist.core.jobid import unique_of
from lbtwist.core.states.status import STATES, public_dict
from lbtwist.core.stats import (
    DAY,
    GROUPS,
    HOUR,
    EntryRow,
    StatsRequest,
    cover,
    duration_answer,
    entries,
    rate_answer,
)
from lbtwist.core.trace import TraceRequest, TraceRow, job_answer, sort_key, trace_row

#: The C{trace_jobs} table and its indexes, the same on both stores but for the
#: type of the times, C{{time}} (SQLite's C{INTEGER}, PostgreSQL's C{BIGINT}).
TRACE_SCHEMA = """\
CREATE TABLE trace_jobs (
    jobid TEXT PRIMARY KEY,
    owner TEXT,
    owner_norm TEXT,
    fqan TEXT,
    lrms_id TEXT,
    cream_id TEXT,
    worker_node TEXT,
    running_from {time},
    running_to {time},
    first {time},
    last {time}
);
CREATE INDEX trace_lrms ON trace_jobs (lrms_id) WHERE lrms_id IS NOT NULL;
CREATE INDEX trace_cream ON trace_jobs (cream_id) WHERE cream_id IS NOT NULL;
CREATE INDEX trace_node ON trace_jobs (worker_node, running_from) WHERE worker_node IS NOT NULL;
CREATE INDEX trace_owner ON trace_jobs (owner_norm, first, last);
CREATE INDEX trace_fqan ON trace_jobs (fqan, first, last) WHERE fqan IS NOT NULL;
CREATE INDEX trace_last ON trace_jobs (last)
"""

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
""" + TRACE_SCHEMA.format(time="INTEGER")

_ENTRY_SQL_V1 = (
    "INSERT OR REPLACE INTO state_entries"
    " (state, entered, jobid, destination, ce_node, owner, vo) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: The C{since_*} column of each state: on a job's entry of another state, how long
#: (microseconds) before it the job entered this one (L{None}: not, or later).
SINCE = {state: f"since_{state.lower()}" for state in STATES}

#: The grouping kinds of C{stat_counts}: 0 overall, then one per column of C{GROUPS}.
KINDS = (None, *GROUPS)

#: A grouping value stored in C{stat_counts.value} for a job without one (SQL NULL
#: cannot be part of the key): the integer 0, never a text value.
_NO_VALUE = 0


def _bucket_sql(expr: str, width: int) -> str:
    # The floored bucket of a time, as lbtwist.core.stats.floor_bucket (SQLite's
    # integer division truncates towards zero).
    w = width * 1_000_000
    return f"(CASE WHEN {expr} >= 0 THEN {expr} / {w} ELSE ({expr} + 1) / {w} - 1 END)"


#: The counters kept: (width, kind) pairs. Overall per hour (a year is 8760 rows to
#: add); per grouping value per day (per hour they would be about as many rows as
#: the entries).
COUNTERS = ((HOUR, 0), *((DAY, kind) for kind in range(1, len(KINDS))))


def _counter_values(row: str, sign: int) -> str:
    values = []
    for width, kind in COUNTERS:
        bucket = _bucket_sql(f"{row}.entered", width)
        column = KINDS[kind]
        value = str(_NO_VALUE) if column is None else f"COALESCE({row}.{column}, {_NO_VALUE})"
        values.append(f"({row}.state, {width}, {kind}, {bucket}, {value}, {sign})")
    return ", ".join(values)


def _entries_table(name: str) -> str:
    # state_entries as L{add_counters} leaves it: L{SCHEMA}'s columns, then since_*.
    since = "".join(f"    {column} INTEGER,\n" for column in SINCE.values())
    return (
        f"CREATE TABLE {name} (\n    state TEXT NOT NULL,\n    entered INTEGER NOT NULL,\n"
        "    jobid TEXT NOT NULL,\n    destination TEXT,\n    ce_node TEXT,\n    owner TEXT,\n"
        f"    vo TEXT,\n{since}    PRIMARY KEY (state, entered, jobid)\n) WITHOUT ROWID"
    )


def _counters_schema() -> str:
    parts = [_entries_table("state_entries")]
    parts.append("CREATE UNIQUE INDEX state_entries_job ON state_entries (jobid, state)")
    parts.append(
        "CREATE TABLE stat_counts (state TEXT NOT NULL, width INTEGER NOT NULL,"
        " kind INTEGER NOT NULL, bucket INTEGER NOT NULL, value NOT NULL, n INTEGER NOT NULL,"
        " PRIMARY KEY (state, width, kind, bucket, value)) WITHOUT ROWID"
    )
    upsert = (
        "INSERT INTO stat_counts (state, width, kind, bucket, value, n) VALUES {values}"
        " ON CONFLICT (state, width, kind, bucket, value) DO UPDATE SET n = n + excluded.n"
    )
    parts.append(
        "CREATE TRIGGER stat_counts_in AFTER INSERT ON state_entries BEGIN "
        + upsert.format(values=_counter_values("NEW", 1))
        + "; END"
    )
    parts.append(
        "CREATE TRIGGER stat_counts_out AFTER DELETE ON state_entries BEGIN "
        + upsert.format(values=_counter_values("OLD", -1))
        + "; END"
    )
    # One trigger each way (not one per state: each trigger costs its call).
    setting = ", ".join(
        f"{column} = CASE NEW.state WHEN '{state}' THEN entered - NEW.entered ELSE {column} END"
        for state, column in SINCE.items()
    )
    parts.append(
        "CREATE TRIGGER since_in AFTER INSERT ON state_entries BEGIN UPDATE state_entries"
        f" SET {setting} WHERE jobid = NEW.jobid AND entered >= NEW.entered"
        " AND state != NEW.state; END"
    )
    clearing = ", ".join(
        f"{column} = CASE OLD.state WHEN '{state}' THEN NULL ELSE {column} END"
        for state, column in SINCE.items()
    )
    parts.append(
        "CREATE TRIGGER since_out AFTER DELETE ON state_entries BEGIN UPDATE state_entries"
        f" SET {clearing} WHERE jobid = OLD.jobid AND state != OLD.state; END"
    )
    return ";\n".join(parts)


#: What L{add_counters} makes of L{SCHEMA}: C{state_entries} with the C{since_*}
#: columns, C{stat_counts}, and the triggers that keep both as entries are inserted
#: and deleted (the documentation of the schema; L{add_counters} runs its parts).
COUNTERS_SCHEMA = _counters_schema()


def _since_select(entered: str, row: str) -> str:
    # The since_* values of an entry at `entered` from its job's other entries `row`.
    return ", ".join(
        f"MAX(CASE {row}.state WHEN '{state}' THEN {entered} - {row}.entered END)"
        for state in SINCE
    )


_ENTRY_SQL = (
    "INSERT INTO state_entries (state, entered, jobid, destination, ce_node, owner, vo, "
    + ", ".join(SINCE.values())
    + ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
    + ", ".join(
        f"(SELECT ?2 - entered FROM state_entries WHERE jobid = ?3 AND state = '{state}'"
        " AND state != ?1 AND entered <= ?2)"
        for state in SINCE
    )
    + ")"
)


def add_counters(conn: sqlite3.Connection) -> None:
    """
    Make L{COUNTERS_SCHEMA} of a store that has L{SCHEMA} (the migration): the entries
    copied, in key order, to a table with their C{since_*} columns computed, then the
    counters filled from them and the triggers created.
    """
    columns = "state, entered, jobid, destination, ce_node, owner, vo"
    conn.execute(_entries_table("state_entries_new"))
    conn.execute(
        f"INSERT INTO state_entries_new SELECT {', '.join('b.' + c for c in columns.split(', '))},"
        + _since_select("b.entered", "a")
        + " FROM state_entries b LEFT JOIN state_entries a ON a.jobid = b.jobid"
        " AND a.state != b.state AND a.entered <= b.entered"
        " GROUP BY b.state, b.entered, b.jobid ORDER BY b.state, b.entered, b.jobid"
    )
    conn.execute("DROP TABLE state_entries")
    conn.execute("ALTER TABLE state_entries_new RENAME TO state_entries")
    statements = COUNTERS_SCHEMA.split(";\n")[1:]
    for statement in statements:
        if not statement.startswith("CREATE TRIGGER"):
            conn.execute(statement)
    for width, kind in COUNTERS:
        bucket = _bucket_sql("entered", width)
        column = KINDS[kind]
        value = str(_NO_VALUE) if column is None else f"COALESCE({column}, {_NO_VALUE})"
        conn.execute(
            "INSERT INTO stat_counts (state, width, kind, bucket, value, n)"  # noqa: S608
            f" SELECT state, {width}, {kind}, {bucket}, {value}, COUNT(*)"
            " FROM state_entries GROUP BY 1, 4, 5"
        )
    for statement in statements:
        if statement.startswith("CREATE TRIGGER"):
            conn.execute(statement)


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

    An entry replaces its job's earlier entry of the same state (the last one of each
    in C{entry_rows} wins): the old row is deleted and the new one inserted with its
    C{since_*} columns, the triggers of L{COUNTERS_SCHEMA} keeping the counters and the
    other rows' C{since_*} columns.
    """
    latest = {(e.jobid, e.state): e for e in entry_rows}
    if latest:
        conn.executemany("DELETE FROM state_entries WHERE jobid = ? AND state = ?", list(latest))
        conn.executemany(
            _ENTRY_SQL,
            [
                (e.state, e.entered, e.jobid, e.destination, e.ce_node, e.owner, e.vo)
                for e in latest.values()
            ],
        )
    conn.executemany(_TRACE_SQL, [attrs_tuple(t) for t in trace_rows])


def _write_v1(
    conn: sqlite3.Connection, entry_rows: Iterable[EntryRow], trace_rows: Iterable[TraceRow]
) -> None:
    # The rows as the first schema (L{SCHEMA}) had them: the backfill of its migration,
    # which runs before L{add_counters} adds the columns and triggers.
    conn.executemany(
        _ENTRY_SQL_V1,
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
    Fill both indexes from the stored statuses (the first migration, for existing
    stores; L{add_counters} then adds what the later schema has).
    """
    backfill_with(conn, _write_v1, chunk)


def backfill_with(
    conn: Any,
    write: Callable[[Any, Iterable[EntryRow], Iterable[TraceRow]], None],
    chunk: int = 10_000,
) -> None:
    """
    Fill both indexes from the stored statuses, C{chunk} jobs at a time, in job
    id order, each chunk's rows written by C{write(conn, entry_rows, trace_rows)}
    (the store's dialect).
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
    The answer of a statistics request (L{lbtwist.core.stats}) from the counters and
    the C{since_*} columns: a rate reads the day and hour counters inside the window
    and counts the entries of the (at most two) partial hours at its edges; a duration
    request reads the later state's entries in the window, one index range.

    @param max_jobs: most durations one request reads (counts have no such bound).
    @raise TooBig: a duration request over more than C{max_jobs} jobs.
    """
    if request.to_state is None:
        counts = _counts(conn, request.state, request.start, request.end, request.group)
        per = _per_bucket(conn, request) if request.step is not None else None
        return rate_answer(request, counts, per)
    if request.to_state == request.state:
        # Each entry is its own start: durations of 0, one per entry in the window.
        counts = _counts(conn, request.state, request.start, request.end, request.group)
        if sum(counts.values()) > max_jobs:
            raise _too_many(request, max_jobs)
        return duration_answer(request, {key: [0] * n for key, n in counts.items() if n})
    since = SINCE[request.state]
    group = request.group or "NULL"
    inner = (
        f"SELECT {group} AS g, {since} AS d FROM state_entries"  # noqa: S608
        f" WHERE state = ? AND entered >= ? AND entered < ? AND {since} IS NOT NULL LIMIT ?"
    )
    # One row of two JSON arrays: far cheaper to read than a row per duration.
    groups_text, values_text = conn.execute(
        f"SELECT json_group_array(g), json_group_array(d) FROM ({inner})",  # noqa: S608
        (request.to_state, request.start, request.end, max_jobs + 1),
    ).fetchone()
    values = json.loads(values_text)
    if len(values) > max_jobs:
        raise _too_many(request, max_jobs)
    durations: dict[str | None, list[int]] = {}
    if request.group is None:
        if values:
            durations[None] = values
    else:
        for key, duration in zip(json.loads(groups_text), values, strict=True):
            durations.setdefault(key, []).append(duration)
    return duration_answer(request, durations)


def _too_many(request: StatsRequest, max_jobs: int) -> TooBig:
    return TooBig(
        f"more than {max_jobs} jobs entered {request.to_state} in the window"
        " (stats-max-jobs): a shorter window"
    )


def _counts(
    conn: sqlite3.Connection, state: str, start: int, end: int, group: str | None
) -> dict[str | None, int]:
    # Entries of `state` in [start, end), overall (key None) or per value of `group`.
    kind = KINDS.index(group)
    parts = cover(start, end, hours=group is None, days=group is not None)
    counts: dict[str | None, int] = {}
    for low, high in parts.raw:
        if group is None:
            rows = conn.execute(
                "SELECT NULL, COUNT(*) FROM state_entries"
                " WHERE state = ? AND entered >= ? AND entered < ?",
                (state, low, high),
            )
        else:
            rows = conn.execute(
                f"SELECT {group}, COUNT(*) FROM state_entries"  # noqa: S608
                " WHERE state = ? AND entered >= ? AND entered < ? GROUP BY 1",
                (state, low, high),
            )
        for key, n in rows:
            counts[key] = counts.get(key, 0) + int(n)
    for width, ranges in ((HOUR, parts.hours), (DAY, parts.days)):
        for first, stop in ranges:
            for value, n in conn.execute(
                "SELECT value, SUM(n) FROM stat_counts WHERE state = ? AND width = ?"
                " AND kind = ? AND bucket >= ? AND bucket < ? GROUP BY value",
                (state, width, kind, first, stop),
            ):
                key = None if isinstance(value, int) else str(value)
                counts[key] = counts.get(key, 0) + int(n)
    if group is None:
        return {None: counts.get(None, 0)}
    return {key: n for key, n in counts.items() if n}


def _per_bucket(conn: sqlite3.Connection, request: StatsRequest) -> dict[int, int]:
    # The count of each step bucket: hour counters for the hours wholly inside one
    # bucket, the entries themselves for the rest (edges, hours a bucket boundary cuts).
    assert request.step is not None
    start, end = request.start, request.end
    width = request.step * 1_000_000
    hour = HOUR * 1_000_000
    per: dict[int, int] = {}
    raw: list[tuple[int, int]] = []
    h0, h1 = -(-start // hour), end // hour
    if h0 >= h1:
        raw.append((start, end))
    else:
        raw.append((start, h0 * hour))
        rows = conn.execute(
            "SELECT bucket, n FROM stat_counts WHERE state = ? AND width = ? AND kind = 0"
            " AND bucket >= ? AND bucket < ? AND n != 0 ORDER BY bucket",
            (request.state, HOUR, h0, h1),
        ).fetchall()
        keys = [int(h) for h, _ in rows]
        running = list(itertools.accumulate((int(n) for _, n in rows), initial=0))
        # Whole hours of a bucket: only the hours a boundary cuts are counted raw.
        n_buckets = -(-(end - start) // width)
        for k in range(n_buckets):
            low = max(start + k * width, h0 * hour)
            high = min(start + (k + 1) * width, h1 * hour)
            if low >= high:
                continue
            a, b = -(-low // hour), high // hour
            if a >= b:
                raw.append((low, high))
                continue
            raw.append((low, a * hour))
            raw.append((b * hour, high))
            total = running[bisect.bisect_left(keys, b)] - running[bisect.bisect_left(keys, a)]
            per[k] = per.get(k, 0) + total
        raw.append((h1 * hour, end))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(r for r in raw if r[0] < r[1]):
        if merged and merged[-1][1] == low:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    for low, high in merged:
        for k, n in conn.execute(
            "SELECT (entered - ?) / ?, COUNT(*) FROM state_entries"
            " WHERE state = ? AND entered >= ? AND entered < ? GROUP BY 1",
            (start, width, request.state, low, high),
        ):
            per[int(k)] = per.get(int(k), 0) + int(n)
    return per


def stats_scan(conn: sqlite3.Connection, request: StatsRequest, *, max_jobs: int) -> dict[str, Any]:
    """
    The answer of a statistics request (L{lbtwist.core.stats}) counted from the state
    entries alone, durations by joining each entry to its job's earlier one: the
    reference L{stats} must agree with (tests, C{bench/stats.py}); its work grows with
    the window.

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
