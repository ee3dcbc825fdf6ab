# -*- test-case-name: tests.unit.test_purge_store -*-
"""
The SQLite side of purging: one bounded chunk of a purge in one transaction (the
purged jobs' rows go, a zombie with its trace record takes each one's place), the
zombie lookups, the incremental vacuum that gives the space back, and the Job
Provenance registrations kept until they are exported (C{jp_pending}).

Everything here runs on the store's writer connection (L{SQLiteStore} calls it on its
writer thread, between commit groups), except the read-only lookups of L{Queries}.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lbtwist.core.jobid import unique_of
from lbtwist.core.purge import TRACE_DROPPED, PurgeRules, is_due
from lbtwist.core.states.status import DONE_CODE_NAMES, INTERNAL_FIELDS, format_iso, parse_iso

if TYPE_CHECKING:
    from lbtwist.store.batch import BatchPlan

#: Pages one incremental vacuum step frees (4 kB pages: 1 MB; some 20 ms of the writer).
VACUUM_PAGES = 256
#: Most job rows one chunk looks at, whatever it is asked (its IN lists stay short).
MAX_CHUNK = 10_000


@attrs.frozen
class PurgedJob:
    """
    A job a purge chunk took (or, in a dry run, would take).

    @ivar events: C{(arrived, line)} of its events by arrival number, when the purge
        keeps them (a server-side dump or the Job Provenance export); else empty.
    """

    jobid: str
    state: str | None
    last_update: int
    owner: str | None
    events: tuple[tuple[int, str], ...] = ()


@attrs.frozen
class PurgeChunk:
    """
    What one chunk did.

    @ivar purged: the jobs purged (or due, in a dry run), in scan order.
    @ivar scanned: job rows looked at.
    @ivar after: where the next chunk starts (C{(list_time, jobid)}), L{None}: done.
    @ivar undelivered: due jobs kept because some of their events wait in the outbox.
    @ivar yielded: nothing was done, a commit group waited (ask again from C{after}).
    """

    purged: tuple[PurgedJob, ...]
    scanned: int
    after: tuple[str, str] | None
    undelivered: int = 0
    #: The chunk did nothing: a commit group was waiting, it goes first (run it again).
    yielded: bool = False
    #: Seconds the chunk took on the writer.
    seconds: float = 0.0


@attrs.frozen
class Zombie:
    """
    A purged job: its id, when it was purged (microseconds) and its trace record (JSON).
    """

    uniq: str
    jobid: str
    purged_at: int
    trace: str

    def owner(self) -> str | None:
        """
        The owner DN the trace record names.
        """
        try:
            value = json.loads(self.trace).get("status", {}).get("owner")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None


# Scans the listing index (list_time DESC, jobid) backwards: oldest update first.
_SCAN = (
    "SELECT jobid, state, list_time FROM jobs"
    " WHERE list_time {low} ? AND list_time < ?{cursor}"
    " ORDER BY list_time, jobid DESC LIMIT ?"
)
_CURSOR = " AND (list_time > ? OR jobid < ?)"


def purge_chunk(
    conn: sqlite3.Connection,
    *,
    rules: PurgeRules,
    now: int,
    after: tuple[str, str] | None,
    limit: int,
    dry_run: bool = False,
    keep_events: bool = False,
    destination: Callable[[str], str | None] | None = None,
    before_commit: Callable[[Sequence[PurgedJob]], None] | None = None,
    parent_sql: str | None = None,
    write_zombies: Callable[[Any, int, list[str]], None] | None = None,
    lock: Callable[[Any, list[PurgedJob]], list[PurgedJob]] | None = None,
) -> PurgeChunk:
    """
    Look at the next C{limit} jobs (at most L{MAX_CHUNK}; oldest update first, from C{after}) and purge those
    due under C{rules} at C{now}, in one transaction: their events, checkpoints, CREAM
    id mappings, rejected relay rows and job rows are deleted and a zombie row (the
    trace record) is written for each. Jobs with events still waiting in the outbox are
    kept (undelivered events are never dropped); a subjob whose parent is still stored
    is kept (it goes once orphaned, as in L&B).

    @param destination: the relay destination of a job (a proxy's policy): a relayed
        terminal job may go after C{rules.delivered}.
    @param before_commit: called with the chunk's purged jobs inside the transaction
        (it writes the dump files); an exception rolls the chunk back.
    @param parent_sql: the SQL of a job row's parent job id (another store's JSON
        functions; default SQLite's).
    @param write_zombies: writes the zombie rows of C{(conn, now, jobids)} from their
        job rows (default: SQLite's JSON functions build the trace records).
    @param lock: called first in the transaction with the chosen jobs, returns
        those to purge (a store shared by several writers locks them and leaves
        out those changed since they were read).
    """
    limit = min(limit, MAX_CHUNK)
    shortest = rules.shortest()
    if shortest is None:
        return PurgeChunk((), 0, None)
    cutoff = format_iso(now - shortest * 1_000_000)
    if after is None:
        sql, args = _SCAN.format(low=">", cursor=""), ["", cutoff, limit]
    else:
        sql = _SCAN.format(low=">=", cursor=_CURSOR)
        args = [after[0], cutoff, after[0], after[1], limit]
    rows = conn.execute(sql, args).fetchall()
    nxt = (rows[-1][2], rows[-1][0]) if len(rows) >= limit else None
    due: list[tuple[str, str | None, int]] = []
    for jobid, state, list_time in rows:
        last = parse_iso(list_time)
        relayed = destination is not None and bool(destination(jobid))
        if is_due(rules, state, last, now, delivered=relayed):
            due.append((jobid, state, last))
    if not due:
        return PurgeChunk((), len(rows), nxt)
    ids = [d[0] for d in due]
    marks = ",".join("?" * len(ids))
    waiting = _with_outbox(conn, ids, marks)
    rows_by_id = {
        str(r[0]): r
        for r in conn.execute(
            f"SELECT jobid, owner, {parent_sql or _PARENT} FROM jobs"  # noqa: S608
            f" WHERE jobid IN ({marks})",
            ids,
        )
    }
    chosen: list[PurgedJob] = []
    due_ids = set(ids)
    for jobid, state, last in due:
        row = rows_by_id.get(jobid)
        if jobid in waiting or row is None:
            continue
        parent = row[2]
        if parent and parent not in due_ids and _exists(conn, parent):
            continue
        events: tuple[tuple[int, str], ...] = ()
        if keep_events:
            events = tuple(
                (int(a), str(line))
                for a, line in conn.execute(
                    "SELECT arrived, line FROM events WHERE jobid = ? ORDER BY seqno", (jobid,)
                )
            )
        chosen.append(PurgedJob(jobid, state, last, row[1], events))
    if dry_run or not chosen:
        return PurgeChunk(tuple(chosen), len(rows), nxt, len(waiting))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if lock is not None:
            chosen = lock(conn, chosen)
        marks = ",".join("?" * len(chosen))
        gone = [job.jobid for job in chosen]
        if gone:
            conn.execute(
                "DELETE FROM rejected WHERE event_id IN"
                f" (SELECT id FROM events WHERE jobid IN ({marks}))",
                gone,
            )
            # The zombies and their trace records first, from the rows about to go.
            if write_zombies is None:
                conn.execute(_ZOMBIES.format(marks=marks), [now, *gone])
            else:
                write_zombies(conn, now, gone)
        pairs = [(j,) for j in gone]
        conn.executemany("DELETE FROM events WHERE jobid = ?", pairs)
        conn.executemany("DELETE FROM checkpoints WHERE jobid = ?", pairs)
        conn.executemany("DELETE FROM cream_map WHERE glite_id = ?", pairs)
        conn.executemany("DELETE FROM jobs WHERE jobid = ?", pairs)
        if before_commit is not None:
            before_commit(chosen)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return PurgeChunk(tuple(chosen), len(rows), nxt, len(waiting))


_PARENT = "json_extract(status, '$.parent_job')"


def _done_code(field: str) -> str:
    names = " ".join(f"WHEN {code} THEN '{name}'" for code, name in DONE_CODE_NAMES.items())
    value = f"json_extract(status, '$.{field}')"
    return f"'$.{field}', CASE {value} {names} ELSE {value} END"


# The trace record of L{lbtwist.core.purge.trace_record}, built by SQLite's JSON
# functions (no status parsed in Python: the purge's time goes into the deletes).
_ZOMBIES = (
    "INSERT OR REPLACE INTO zombies (uniq, jobid, purged_at, trace)"
    " SELECT uniq, jobid, ?, json_object("
    "'fqans', json(coalesce(json_extract(status, '$.user_fqans'), '[]')),"
    " 'sources', (SELECT json_group_array(source) FROM (SELECT source FROM events e"
    " WHERE e.jobid = jobs.jobid GROUP BY source ORDER BY MIN(id))),"
    " 'status', json_set(json_remove(status, "
    + ", ".join(f"'$.{k}'" for k in sorted(TRACE_DROPPED | INTERNAL_FIELDS))
    + "), "
    + _done_code("done_code")
    + ", "
    + _done_code("cream_done_code")
    + ")) FROM jobs WHERE jobid IN ({marks})"
)


def _with_outbox(conn: sqlite3.Connection, jobids: list[str], marks: str) -> set[str]:
    """
    Those of C{jobids} with events waiting in the outbox (one pass over the outbox).
    """
    if conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None:
        return set()
    rows = conn.execute(
        "SELECT DISTINCT e.jobid FROM outbox o JOIN events e ON e.id = o.event_id"
        f" WHERE e.jobid IN ({marks})",
        jobids,
    )
    return {str(r[0]) for r in rows}


def _exists(conn: sqlite3.Connection, jobid: str) -> bool:
    return conn.execute("SELECT 1 FROM jobs WHERE jobid = ?", (jobid,)).fetchone() is not None


def is_zombie(conn: sqlite3.Connection, jobid: str) -> bool:
    """
    Whether C{jobid} (by its unique part) was purged.
    """
    row = conn.execute("SELECT 1 FROM zombies WHERE uniq = ?", (unique_of(jobid),)).fetchone()
    return row is not None


def find_zombie(conn: sqlite3.Connection, unique: str) -> Zombie | None:
    """
    The zombie of a unique part (or of a full job id), if the job was purged.
    """
    row = conn.execute(
        "SELECT uniq, jobid, purged_at, trace FROM zombies WHERE uniq = ?", (unique_of(unique),)
    ).fetchone()
    return None if row is None else Zombie(str(row[0]), str(row[1]), int(row[2]), str(row[3]))


def incremental_vacuum(conn: sqlite3.Connection, pages: int = VACUUM_PAGES) -> int:
    """
    Give up to C{pages} free pages back to the file system (a store created with
    C{auto_vacuum = INCREMENTAL}; on others this does nothing).

    @return: the free pages left (0 on a store without incremental vacuum).
    """
    if not auto_vacuum_incremental(conn):
        return 0
    # Run to completion (sqlite3_exec): through execute() each step frees one page only.
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def auto_vacuum_incremental(conn: sqlite3.Connection) -> bool:
    """
    Whether the store file gives freed pages back on an incremental vacuum.
    """
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def vacuum_full(conn: sqlite3.Connection) -> None:
    """
    Rewrite the whole file with C{auto_vacuum = INCREMENTAL} (offline: no other
    connection may be open; C{lbtwist purge --vacuum}).
    """
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")


def write_jp_pending(conn: sqlite3.Connection, plan: BatchPlan) -> None:
    """
    A C{jp_pending} row for each RegJob of a commit group (in its transaction).
    """
    rows = [
        (n.jobid, n.event.user)
        for n in plan.events
        if n.event.type == "RegJob" and not n.event.generated
    ]
    if rows:
        conn.executemany("INSERT INTO jp_pending (jobid, owner) VALUES (?, ?)", rows)


def jp_pending(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str, str]]:
    """
    At most C{limit} registrations not yet exported, with an id above C{after}.
    """
    return [
        (int(i), str(j), str(o))
        for i, j, o in conn.execute(
            "SELECT id, jobid, owner FROM jp_pending WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
    ]


def jp_done(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """
    Forget exported registrations (one transaction).
    """
    if not ids:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("DELETE FROM jp_pending WHERE id = ?", [(i,) for i in ids])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def new_store_vacuum(conn: sqlite3.Connection) -> None:
    """
    On a store file without tables yet, choose C{auto_vacuum = INCREMENTAL} (it can only
    be chosen before the first table, or by a full C{VACUUM}: L{vacuum_full}).
    """
    if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
