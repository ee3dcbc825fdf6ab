# -*- test-case-name: tests.unit.test_store_sqlite -*-
"""
The SQLite event store: WAL, C{synchronous=FULL}, one writer thread.

Every commit group is one transaction holding its events, the touched jobs' statuses,
CREAM id mappings and outbox rows. Reads use a second connection on a second thread,
so queries never wait for an fsync. L{SQLiteReader} is the synchronous read-only
access of the offline command line (L{lbtwist.store.open_reader}).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from lbtwist.core.errors import LBError, NoSpace, TryAgain
from lbtwist.core.seqcode import ordering_key
from lbtwist.core.states.status import PURGED, JobStatus
from lbtwist.core.stats import StatsRequest
from lbtwist.core.trace import TraceRequest
from lbtwist.store import lifecycle, purging, statelock
from lbtwist.store.batch import (
    CHECKPOINT_EVERY,
    REFOLD_SLICE,
    BatchPlan,
    BatchProcessor,
    CommitListener,
    CommitNotifier,
    GroupCommit,
    GroupedWrites,
    Identity,
    OutboxWriter,
    RejectRow,
    Runner,
    SpoolOffsets,
    check_tuning,
    cream_key,
    dupkey,
    encode_key,
    id_runs,
    reparse,
    status_from_json,
)
from lbtwist.store.interface import (
    IEventStore,
    JobSummary,
    OutboxEntry,
    OutboxStats,
    RejectedEntry,
    StoredEvent,
    StoreResult,
)
from lbtwist.store.notif import Notifications, SQLNotifTables
from lbtwist.store.query import (
    JobPage,
    JobQuery,
    owner_key,
    sql_where,
    sqlite_json,
    unique_of,
)
from lbtwist.store.shared import NOTIF_SCHEMA, StoreReads

log = Logger()

if TYPE_CHECKING:
    from lbtwist.core.events import Event
    from lbtwist.core.relaypolicy import RelayPolicy

_T = TypeVar("_T")

_V1 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    jobid TEXT NOT NULL,
    seqno INTEGER NOT NULL,
    arrived INTEGER NOT NULL,
    type TEXT NOT NULL,
    date INTEGER NOT NULL,
    source TEXT NOT NULL,
    host TEXT NOT NULL,
    level TEXT NOT NULL,
    user_dn TEXT NOT NULL,
    seqcode TEXT NOT NULL,
    priority INTEGER NOT NULL,
    line TEXT NOT NULL
);
CREATE UNIQUE INDEX events_job ON events (jobid, seqno);
CREATE TABLE jobs (
    jobid TEXT PRIMARY KEY,
    owner TEXT,
    state TEXT,
    jobtype TEXT,
    last_update TEXT,
    machine TEXT,
    nevents INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE cream_map (
    cream_key TEXT PRIMARY KEY,
    cream_id TEXT NOT NULL,
    glite_id TEXT NOT NULL
);
CREATE INDEX cream_map_glite ON cream_map (glite_id);
"""

_V2 = """
ALTER TABLE events ADD COLUMN dupkey INTEGER NOT NULL DEFAULT 0;
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_id INTEGER NOT NULL
);
CREATE INDEX outbox_destination ON outbox (destination, id);
"""

_IDENTITY_COLUMNS = "type, source, host, date, level, user_dn, seqcode"

#: Statuses kept parsed by the query connection (L{Queries.find_status}): the jobs
#: being polled; about 5 kB each (the C{query-cache} option).
STATUS_CACHE_SIZE = 2048

#: KiB of page cache per connection (the C{sqlite-cache} option; SQLite's own default).
PAGE_CACHE_KIB = 2000

#: Most jobs one page of a filtered job list examines (the C{list-scan} option).
LIST_SCAN = 1000


def set_page_cache(conn: sqlite3.Connection, kib: int) -> None:
    """
    Bound the page cache of C{conn} to C{kib} KiB (memory-mapped I/O stays off,
    so the database's pages are only in memory through this cache).

    @raise ValueError: C{kib} is not positive.
    """
    if kib < 1:
        raise ValueError("the SQLite page cache must be at least 1 KiB")
    conn.execute(f"PRAGMA cache_size = -{int(kib)}")
    conn.execute("PRAGMA mmap_size = 0")


def _script(conn: sqlite3.Connection, sql: str) -> None:
    # Not executescript(): it commits the migration's open transaction first.
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_v1(conn: sqlite3.Connection) -> None:
    _script(conn, _V1)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """
    Duplicate keys (filled in for the events already stored) and the relay outbox.
    """
    _script(conn, _V2)
    rows = conn.execute(f"SELECT id, {_IDENTITY_COLUMNS} FROM events").fetchall()
    conn.executemany(
        "UPDATE events SET dupkey = ? WHERE id = ?",
        [(dupkey(tuple(row[1:])), row[0]) for row in rows],  # type: ignore[arg-type]
    )
    conn.execute("CREATE INDEX events_dup ON events (jobid, dupkey)")


_V3_REJECTED = """
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    major INTEGER NOT NULL,
    minor INTEGER NOT NULL,
    reason TEXT NOT NULL,
    rejected_at INTEGER NOT NULL
);
CREATE INDEX rejected_destination ON rejected (destination, id);
"""


def _migrate_v3_rejected(conn: sqlite3.Connection) -> None:
    """
    The relay's rejected table: events the destination refused for good.
    """
    _script(conn, _V3_REJECTED)


_V4_QUERY = """
ALTER TABLE jobs ADD COLUMN uniq TEXT;
ALTER TABLE jobs ADD COLUMN owner_norm TEXT;
ALTER TABLE jobs ADD COLUMN list_time TEXT NOT NULL DEFAULT ''
"""

_V4_INDEXES = """
CREATE INDEX jobs_uniq ON jobs (uniq);
CREATE INDEX jobs_list ON jobs (list_time DESC, jobid);
CREATE INDEX jobs_owner_list ON jobs (owner_norm, list_time DESC, jobid)
"""


def _migrate_v4_query(conn: sqlite3.Connection) -> None:
    """
    Job lookup by unique part, normalized owners and the listing order (queries).
    """
    _script(conn, _V4_QUERY)
    rows = conn.execute("SELECT jobid, owner, last_update FROM jobs").fetchall()
    conn.executemany(
        "UPDATE jobs SET uniq = ?, owner_norm = ?, list_time = ? WHERE jobid = ?",
        [(unique_of(j), owner_key(o), lu or "", j) for j, o, lu in rows],
    )
    _script(conn, _V4_INDEXES)


_V5_FOLD = """
ALTER TABLE events ADD COLUMN okey BLOB;
ALTER TABLE jobs ADD COLUMN refold INTEGER NOT NULL DEFAULT 0;
CREATE TABLE checkpoints (
    jobid TEXT NOT NULL,
    okey BLOB NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (jobid, okey)
) WITHOUT ROWID
"""

# The duplicate index becomes (jobid, date): (jobid, dupkey) took a random place in a
# job's part of the index for every event, so each commit wrote more index pages the
# bigger the job (2.3 kB of WAL per event for the first 1,000 of a job, 7 kB at 50,000);
# dates of a job mostly grow, as do its keys and seqnos.
_V5_INDEXES = """
CREATE INDEX events_okey ON events (jobid, okey);
DROP INDEX events_dup;
CREATE INDEX events_date ON events (jobid, date);
CREATE INDEX jobs_refold ON jobs (jobid) WHERE refold = 1
"""


def _migrate_v5_fold(conn: sqlite3.Connection) -> None:
    """
    Every event's encoded ordering key (indexed), status checkpoints and the refold
    flag. Stored events keep the order their statuses were folded in (their DATE as
    logged, whatever the future skew): the stored statuses stay right.
    """
    _script(conn, _V5_FOLD)
    rows = conn.execute("SELECT id, jobid, seqcode, date, seqno FROM events")
    conn.executemany(
        "UPDATE events SET okey = ? WHERE id = ?",
        [
            (encode_key(ordering_key(SimpleNamespace(jobid=j, seqcode=c, date=d), n)), i)
            for i, j, c, d, n in rows
        ],
    )
    _script(conn, _V5_INDEXES)


_V6_SPOOL = """
CREATE TABLE spool_offsets (
    name TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    offset INTEGER NOT NULL
)
"""


def _migrate_v6_spool(conn: sqlite3.Connection) -> None:
    """
    The committed offsets of the interlogger spool files (written with their events).
    """
    _script(conn, _V6_SPOOL)


_NOTIFY = (
    "\n"
    + NOTIF_SCHEMA.format(int="INTEGER", serial="INTEGER", blob="BLOB", clustered=" WITHOUT ROWID")
    + "\n"
)


# Messages are rows of a rowid table (appended in commit order: a commit's messages
# fill few pages) with a small unique index (registration, seq); a table clustered
# on (registration, seq) put each ~2 kB body in a random place of the tree.


def _migrate_notify(conn: sqlite3.Connection) -> None:
    """
    Notification registrations (by owner, and the "all jobs" ones by a partial
    index), their job index and their message queues (C{lbtwist.store.notif}).
    """
    _script(conn, _NOTIFY)


_PURGE = """
CREATE TABLE zombies (
    uniq TEXT PRIMARY KEY,
    jobid TEXT NOT NULL,
    purged_at INTEGER NOT NULL,
    trace TEXT NOT NULL
);
CREATE TABLE jp_pending (
    id INTEGER PRIMARY KEY,
    jobid TEXT NOT NULL,
    owner TEXT NOT NULL
)
"""


def _migrate_purge(conn: sqlite3.Connection) -> None:
    """
    Purged jobs (zombies, with their trace records) and the Job Provenance
    registrations not yet exported (docs/store.md, "Purge and zombies").
    """
    _script(conn, _PURGE)


def _migrate_dump(conn: sqlite3.Connection) -> None:
    """
    Events by arrival time: the incremental dumps (C{arrived} in C{(from, to]}).
    """
    _script(conn, "CREATE INDEX IF NOT EXISTS events_arrived ON events (arrived, id);")


def _migrate_stats(conn: sqlite3.Connection) -> None:
    """
    The state-entry and trace indexes of statistics and traceability
    (C{lbtwist.store.lifecycle}), filled from the stored statuses.
    """
    _script(conn, lifecycle.SCHEMA)
    lifecycle.backfill(conn)


def _migrate_stats_counters(conn: sqlite3.Connection) -> None:
    """
    Statistics counters per state, hour and day, and the durations kept on each state
    entry, with the triggers that keep them (C{lbtwist.store.lifecycle.add_counters}),
    filled from the entries already stored.
    """
    lifecycle.add_counters(conn)


#: Ordered migrations: C{MIGRATIONS[n]} takes a database from version C{n} to C{n + 1}.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_v1,
    _migrate_v2,
    _migrate_v3_rejected,
    _migrate_v4_query,
    _migrate_v5_fold,
    _migrate_v6_spool,
    _migrate_notify,
    _migrate_purge,
    _migrate_dump,
    _migrate_stats,
    _migrate_stats_counters,
]

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """
    @return: the database's C{PRAGMA user_version}.
    """
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """
    Apply the missing migrations, each in its own transaction.

    @return: the version the database had.
    @raise LBError: the database is newer than this code.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise LBError(f"database schema version {found} is newer than {SCHEMA_VERSION}")
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """
    Open a connection in autocommit mode (transactions are explicit).
    """
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def translate_error(error: Exception) -> LBError | None:
    """
    @return: L{NoSpace} for a full disk or database, L{TryAgain} for other SQLite errors.
    """
    if not isinstance(error, sqlite3.Error):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(error):
        return NoSpace(f"store: {error}")
    return TryAgain(f"store: {error}")


#: The event rows of a commit group (L{event_rows}), in both stores' schema.
INSERT_EVENTS = (
    "INSERT INTO events (id, jobid, seqno, arrived, type, date, source, host,"
    " level, user_dn, seqcode, priority, line, dupkey, okey)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: The job rows of a commit group (L{job_rows}): new ones inserted, known ones updated.
UPSERT_JOBS = (
    "INSERT INTO jobs (jobid, owner, state, jobtype, last_update, machine,"
    " nevents, status, uniq, owner_norm, list_time, refold)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (jobid) DO UPDATE SET owner = excluded.owner,"
    " state = excluded.state, jobtype = excluded.jobtype,"
    " last_update = excluded.last_update, machine = excluded.machine,"
    " nevents = excluded.nevents, status = excluded.status,"
    " owner_norm = excluded.owner_norm, list_time = excluded.list_time,"
    " refold = excluded.refold"
)


def event_rows(plan: BatchPlan, ids: Mapping[int, int] | None = None) -> list[tuple[Any, ...]]:
    """
    The parameters of L{INSERT_EVENTS} for a plan's events.

    @param ids: the database's ids for the plan's event ids (a store whose ids come
        from a sequence); L{None}: the plan's own.
    """
    return [
        (
            n.event_id if ids is None else ids[n.event_id],
            n.jobid,
            n.seqno,
            n.arrived,
            n.event.type,
            n.event.date,
            n.event.source,
            n.event.host,
            n.event.level,
            n.event.user,
            n.event.seqcode,
            n.event.priority,
            n.line,
            n.dupkey,
            n.okey,
        )
        for n in plan.events
    ]


def job_rows(plan: BatchPlan) -> list[tuple[Any, ...]]:
    """
    The parameters of L{UPSERT_JOBS} for a plan's job rows.
    """
    return [
        (
            j.jobid,
            j.owner,
            j.state,
            j.jobtype,
            j.last_update,
            j.machine,
            j.nevents,
            j.status_json,
            unique_of(j.jobid),
            owner_key(j.owner),
            j.last_update or "",
            1 if j.refold else 0,
        )
        for j in plan.jobs
    ]


class SQLiteBackend:
    """
    The writer side: owns the writing connection (used on the writer thread only).

    @ivar transactions: number of committed transactions.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.transactions = 0
        #: The store's notifications (set when the store opens).
        self.notif: Notifications = cast("Notifications", None)
        #: The committed outbox rows kept for the relay (L{OutboxTail}), if any.
        self.tail: OutboxTail | None = None
        #: Keep a C{jp_pending} row with every stored RegJob (C{--jpreg-dir}).
        self.jp_register = False

    def max_event_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def load_job(self, jobid: str) -> tuple[dict[str, Any], int] | None:
        row = self.conn.execute(
            "SELECT status, nevents FROM jobs WHERE jobid = ?", (jobid,)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def load_lines(self, jobid: str) -> list[tuple[int, str]]:
        return self.conn.execute(
            "SELECT seqno, line FROM events WHERE jobid = ? ORDER BY seqno", (jobid,)
        ).fetchall()

    def find_identities(self, jobid: str, key: int) -> list[Identity]:
        rows = self.conn.execute(
            f"SELECT {_IDENTITY_COLUMNS} FROM events WHERE jobid = ? AND dupkey = ?",
            (jobid, key),
        ).fetchall()
        return [tuple(row) for row in rows]

    def find_dated(self, jobid: str, date: int, key: int) -> list[Identity]:
        rows = self.conn.execute(
            f"SELECT {_IDENTITY_COLUMNS} FROM events WHERE jobid = ? AND date = ? AND dupkey = ?",
            (jobid, date, key),
        ).fetchall()
        return [tuple(row) for row in rows]

    def load_dupkeys(self, jobid: str) -> list[int]:
        return [
            int(row[0])
            for row in self.conn.execute("SELECT dupkey FROM events WHERE jobid = ?", (jobid,))
        ]

    def load_after(self, jobid: str, okey: bytes, limit: int) -> list[tuple[bytes, str]]:
        return self.conn.execute(
            "SELECT okey, line FROM events WHERE jobid = ? AND okey > ? ORDER BY okey LIMIT ?",
            (jobid, okey, limit),
        ).fetchall()

    def checkpoint_before(
        self, jobid: str, before: bytes | None, upto: bytes | None
    ) -> tuple[bytes, dict[str, Any]] | None:
        sql = "SELECT okey, status FROM checkpoints WHERE jobid = ?"
        args: list[Any] = [jobid]
        if before is not None:
            sql += " AND okey < ?"
            args.append(before)
        if upto is not None:
            sql += " AND okey <= ?"
            args.append(upto)
        row = self.conn.execute(sql + " ORDER BY okey DESC LIMIT 1", args).fetchone()
        return None if row is None else (bytes(row[0]), json.loads(row[1]))

    def first_regjob(self, jobid: str) -> tuple[bytes, str] | None:
        row = self.conn.execute(
            "SELECT okey, line FROM events WHERE jobid = ? AND type = 'RegJob'"
            " ORDER BY okey LIMIT 1",
            (jobid,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def refold_jobs(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT jobid FROM jobs WHERE refold = 1")]

    def is_zombie(self, jobid: str) -> bool:
        """
        Whether the job was purged (asked only for jobs without a row).
        """
        return purging.is_zombie(self.conn, jobid)

    def write(self, plan: BatchPlan) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(INSERT_EVENTS, event_rows(plan))
            conn.executemany(UPSERT_JOBS, job_rows(plan))
            if plan.cuts:
                conn.executemany("DELETE FROM checkpoints WHERE jobid = ? AND okey > ?", plan.cuts)
            if plan.checkpoints:
                conn.executemany(
                    "INSERT OR REPLACE INTO checkpoints (jobid, okey, position, status)"
                    " VALUES (?, ?, ?, ?)",
                    [(c.jobid, c.okey, c.position, c.status_json) for c in plan.checkpoints],
                )
            if plan.mappings:
                conn.executemany(
                    "INSERT OR REPLACE INTO cream_map (cream_key, cream_id, glite_id)"
                    " VALUES (?, ?, ?)",
                    [(m.cream_key, m.cream_id, m.glite_id) for m in plan.mappings],
                )
            tail: list[TailRow] | None = None
            if plan.outbox:
                conn.executemany(
                    "INSERT INTO outbox (destination, event_id) VALUES (?, ?)",
                    [(o.destination, o.event_id) for o in plan.outbox],
                )
                if self.tail is not None:
                    tail = _tail_rows(conn, plan)
            if plan.offsets:
                _write_offsets(conn, plan.offsets)
            if plan.notifications:
                self.notif.write_messages(plan.notifications)
            if self.jp_register:
                purging.write_jp_pending(conn, plan)
            if plan.entries or plan.traces:
                lifecycle.write(conn, plan.entries, plan.traces)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        if plan.notifications:
            self.notif.committed(plan.notifications)
        if self.tail is not None and plan.outbox:
            if tail is None:
                # Rows it cannot describe: the database answers for them.
                self.tail.reset(_last_outbox_id(conn))
            else:
                self.tail.add(tail)

    def translate_error(self, error: Exception) -> LBError | None:
        return translate_error(error)

    def outbox_done(self, acks: list[int], rejects: list[RejectRow]) -> None:
        """
        Remove acknowledged outbox rows and move rejected ones, in one transaction.

        That transaction is not synced by itself (C{synchronous = NORMAL} for it):
        the next event commit's sync makes it durable too. A power cut before that
        only leaves the rows in the outbox, to be sent again (the server answers a
        duplicate OK, a rejection is rejected again); it saves the writer thread,
        which the intake's commits need, one sync per acknowledgement group.
        """
        conn = self.conn
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            self._outbox_done(acks, rejects)
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    def _outbox_done(self, acks: list[int], rejects: list[RejectRow]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if rejects:
                conn.executemany(
                    "INSERT INTO rejected (outbox_id, destination, event_id, major, minor,"
                    " reason, rejected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.entry.id,
                            r.entry.destination,
                            r.entry.event_id,
                            r.major,
                            r.minor,
                            r.reason,
                            r.rejected_at,
                        )
                        for r in rejects
                    ],
                )
            ids = [*acks, *(r.entry.id for r in rejects)]
            conn.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", id_runs(ids))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1


def _write_offsets(conn: sqlite3.Connection, offsets: SpoolOffsets) -> None:
    gone = [(name,) for name, spooled in offsets.items() if spooled is None]
    if gone:
        conn.executemany("DELETE FROM spool_offsets WHERE name = ?", gone)
    conn.executemany(
        "INSERT INTO spool_offsets (name, inode, offset) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET inode = excluded.inode, offset = excluded.offset",
        [(name, s[0], s[1]) for name, s in offsets.items() if s is not None],
    )


#: An outbox row as L{OutboxTail} keeps it: the fields of L{OutboxEntry}.
TailRow = tuple[int, str, int, str, str, int]

#: Outbox rows kept in memory per destination by default (L{OutboxTail}).
OUTBOX_TAIL = 8192


def _last_outbox_id(conn: sqlite3.Connection) -> int:
    """
    The highest outbox id ever given (the AUTOINCREMENT counter).
    """
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return 0 if row is None else int(row[0])


def _tail_rows(conn: sqlite3.Connection, plan: BatchPlan) -> list[TailRow] | None:
    """
    The outbox rows C{plan} inserts, with their ids: the last ones the table's
    AUTOINCREMENT gave (one writer, consecutive ids), read inside the
    transaction. C{None} if an outbox row's event is not in the plan.
    """
    last = _last_outbox_id(conn)
    events = {n.event_id: n for n in plan.events}
    rows: list[TailRow] = []
    for row_id, o in enumerate(plan.outbox, last - len(plan.outbox) + 1):
        n = events.get(o.event_id)
        if n is None:
            return None
        rows.append((row_id, o.destination, o.event_id, n.jobid, n.line, n.arrived))
    return rows


class OutboxTail:
    """
    The outbox rows of the latest commits, per destination, kept in memory so that
    the relay sends live events without reading them back (L{SQLiteStore.outbox_after}).

    Per destination, every committed row with an id above C{base} is kept, in id
    order, at most C{limit} of them: beyond, the oldest are dropped and C{base}
    rises (those rows are read from the database again). A read after an id at or
    above C{base} is answered here and forgets the rows up to that id (the relay
    reads each destination forward); one below it goes to the database.

    Rows are added by the writer thread after their commit and read on the reactor
    thread, under a lock.
    """

    def __init__(self, limit: int, start: int) -> None:
        """
        @param limit: rows kept per destination.
        @param start: the highest outbox id at start: rows up to it are only in
            the database.
        """
        if limit < 1:
            raise ValueError(f"outbox tail of {limit} rows")
        self.limit = limit
        self._start = start
        self._rows: dict[str, deque[TailRow]] = {}
        self._base: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, rows: Iterable[TailRow]) -> None:
        """
        Rows just committed, in id order.
        """
        with self._lock:
            for row in rows:
                dest = row[1]
                kept = self._rows.get(dest)
                if kept is None:
                    kept = self._rows[dest] = deque()
                kept.append(row)
                if len(kept) > self.limit:
                    self._base[dest] = kept.popleft()[0]

    def after(self, destination: str, after_id: int, limit: int) -> list[TailRow] | None:
        """
        @return: up to C{limit} committed rows of C{destination} with an id above
            C{after_id}, or C{None} if some of them may only be in the database.
        """
        with self._lock:
            base = self._base.get(destination, self._start)
            if after_id < base:
                return None
            kept = self._rows.get(destination)
            if not kept:
                return []
            while kept and kept[0][0] <= after_id:
                base = kept.popleft()[0]
            self._base[destination] = base
            return list(islice(kept, limit))

    def reset(self, upto: int) -> None:
        """
        Forget every row: those up to C{upto} are read from the database.
        """
        with self._lock:
            self._rows.clear()
            self._base.clear()
            self._start = max(self._start, upto)

    def depth(self, destination: str) -> int:
        """
        Rows kept for C{destination}.
        """
        with self._lock:
            return len(self._rows.get(destination, ()))


def _stored(row: tuple[Any, ...]) -> StoredEvent:
    jobid, seqno, arrived, line = row
    return StoredEvent(jobid, seqno, arrived, line, reparse(line))


class Queries:
    """
    Synchronous queries on one connection (the reader thread's, or the CLI's).

    @param status_cache: most parsed statuses kept (least recently used dropped).
    @param list_scan: most jobs a page of a job list with conditions examines, in
        listing order; C{None}: no bound.
    """

    #: The list page's columns read from the stored status (CREAM state, exit
    #: code, done code), in this dialect's JSON functions.
    SUMMARY_EXTRA = (
        "json_extract(status, '$.cream_state'), json_extract(status, '$.exit_code'),"
        " json_extract(status, '$.done_code')"
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        status_cache: int = STATUS_CACHE_SIZE,
        list_scan: int | None = LIST_SCAN,
    ) -> None:
        if status_cache < 1:
            raise ValueError("the status cache must hold at least one status")
        if list_scan is not None and list_scan < 1:
            raise ValueError("a job list page must examine at least one job")
        self.conn = conn
        self.status_cache = status_cache
        self.list_scan = list_scan
        # Statuses rebuilt from their JSON, by job id, with that JSON: reused while
        # the stored JSON is the same (parsing it is most of a status query).
        self._parsed: OrderedDict[str, tuple[str, JobStatus]] = OrderedDict()

    def json_compare(self, field: str, op: str, value: Any) -> tuple[str, list[Any]]:
        """
        A job list condition on a status field of the JSON only, in this dialect.
        """
        return sqlite_json(field, op, value)

    def _status_of(self, jobid: str, text: str) -> JobStatus:
        cached = self._parsed.get(jobid)
        if cached is not None and cached[0] == text:
            self._parsed.move_to_end(jobid)
            return cached[1].copy()
        status = status_from_json(json.loads(text))
        self._parsed[jobid] = (text, status.copy())
        if len(self._parsed) > self.status_cache:
            self._parsed.popitem(last=False)
        return status

    def find_status(self, unique: str) -> tuple[str, JobStatus] | None:
        """
        L{find_job} and L{status} in one call.
        """
        row = self.conn.execute(
            "SELECT jobid, status FROM jobs WHERE uniq = ? ORDER BY jobid LIMIT 1", (unique,)
        ).fetchone()
        if row is None:
            row = self.conn.execute(
                "SELECT j.jobid, j.status FROM cream_map m JOIN jobs j ON j.jobid = m.glite_id"
                " WHERE m.cream_key = ?",
                (unique,),
            ).fetchone()
        if row is None:
            return self._zombie_status(unique)
        return str(row[0]), self._status_of(str(row[0]), row[1])

    def _zombie_status(self, unique: str) -> tuple[str, JobStatus] | None:
        # A purged job answers as a status in state Purged (the query port's 410).
        found = purging.find_zombie(self.conn, unique)
        if found is None:
            return None
        return found.jobid, JobStatus(state=PURGED, jobId=found.jobid, owner=found.owner())

    def zombie(self, unique: str) -> purging.Zombie | None:
        """
        The zombie (purge time and trace record) of a purged job, by unique part or id.
        """
        return purging.find_zombie(self.conn, unique)

    def stats(self, request: StatsRequest, max_jobs: int) -> dict[str, Any]:
        """
        A statistics answer (L{lifecycle.stats}).
        """
        return lifecycle.stats(self.conn, request, max_jobs=max_jobs)

    def trace(self, request: TraceRequest, max_jobs: int) -> tuple[list[dict[str, Any]], bool]:
        """
        The jobs of a trace request, and whether there were more (L{lifecycle.trace}).
        """
        return lifecycle.trace(self.conn, request, max_jobs=max_jobs)

    def status(self, jobid: str) -> JobStatus | None:
        row = self.conn.execute("SELECT status FROM jobs WHERE jobid = ?", (jobid,)).fetchone()
        return None if row is None else self._status_of(jobid, row[0])

    def events(self, jobid: str) -> list[StoredEvent]:
        rows = self.conn.execute(
            "SELECT jobid, seqno, arrived, line FROM events WHERE jobid = ? ORDER BY okey",
            (jobid,),
        ).fetchall()
        return [_stored(row) for row in rows]

    def spool_offsets(self) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute("SELECT name, inode, offset FROM spool_offsets")
        return {name: (int(inode), int(offset)) for name, inode, offset in rows}

    def events_range(self, jobid: str, after: int, limit: int) -> list[StoredEvent]:
        rows = self.conn.execute(
            "SELECT jobid, seqno, arrived, line FROM events WHERE jobid = ? AND seqno > ?"
            " ORDER BY seqno LIMIT ?",
            (jobid, after, limit),
        ).fetchall()
        return [_stored(row) for row in rows]

    def last_seqcode(self, jobid: str) -> str | None:
        row = self.conn.execute(
            "SELECT seqcode FROM events WHERE jobid = ? ORDER BY okey DESC LIMIT 1", (jobid,)
        ).fetchone()
        return None if row is None else str(row[0])

    def resolve(self, jobid: str) -> str | None:
        row = self.conn.execute(
            "SELECT glite_id FROM cream_map WHERE cream_key = ?", (cream_key(jobid),)
        ).fetchone()
        return None if row is None else str(row[0])

    def jobs(
        self, owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[JobSummary]:
        sql = "SELECT jobid, owner, state, jobtype, last_update FROM jobs"
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY jobid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [JobSummary(*row) for row in self.conn.execute(sql, args)]

    def find_job(self, unique: str) -> str | None:
        row = self.conn.execute(
            "SELECT jobid FROM jobs WHERE uniq = ? ORDER BY jobid LIMIT 1", (unique,)
        ).fetchone()
        if row is None:
            row = self.conn.execute(
                "SELECT glite_id FROM cream_map WHERE cream_key = ?", (unique,)
            ).fetchone()
        return None if row is None else str(row[0])

    def query_jobs(self, query: JobQuery) -> JobPage:
        """
        One page of a job list. With conditions, the page examines at most
        C{list_scan} jobs in listing order (the owner's, after the cursor): a
        condition few jobs meet cannot make one page scan the whole table. The
        page then holds the matches among them, maybe none, and a cursor after
        the last job examined.
        """
        where, args = sql_where(query, self.json_compare)
        bound = self._scan_bound(query) if query.conditions else None
        if bound is not None:
            # Only the jobs up to the bound (in listing order): the index range ends there.
            where += " AND list_time >= ? AND (list_time > ? OR jobid <= ?)"
            args.extend([bound[0], bound[0], bound[1]])
        rows = self.conn.execute(
            "SELECT jobid, owner, state, jobtype, last_update, list_time,"
            f" {self.SUMMARY_EXTRA} FROM jobs"
            f" WHERE {where} ORDER BY list_time DESC, jobid LIMIT ?",
            [*args, query.limit + 1],
        ).fetchall()
        page = rows[: query.limit]
        following: tuple[str, str] | None = None
        if len(rows) > query.limit and page:
            following = (page[-1][5], page[-1][0])
        elif bound is not None:
            following = bound
        return JobPage([JobSummary(*row[:5], *row[6:]) for row in page], following)

    def _scan_bound(self, query: JobQuery) -> tuple[str, str] | None:
        """
        @return: the position of the last job a page of C{query} examines: the
            C{list_scan}th in listing order after the cursor (an index-only read),
            C{None} when no more jobs follow it.
        """
        if self.list_scan is None:
            return None
        where, args = sql_where(attrs.evolve(query, conditions=()))
        rows = self.conn.execute(
            f"SELECT list_time, jobid FROM jobs WHERE {where}"
            " ORDER BY list_time DESC, jobid LIMIT 2 OFFSET ?",
            [*args, self.list_scan - 1],
        ).fetchall()
        if len(rows) < 2:
            return None
        return str(rows[0][0]), str(rows[0][1])

    def dump(
        self, from_arrived: int | None = None, to_arrived: int | None = None
    ) -> list[StoredEvent]:
        events: list[StoredEvent] = []
        after: tuple[int, int] | None = None
        while True:
            page, after = self.dump_page(from_arrived, to_arrived, after, 10_000)
            events += page
            if after is None:
                return events

    def dump_page(
        self,
        from_arrived: int | None,
        to_arrived: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> tuple[list[StoredEvent], tuple[int, int] | None]:
        """
        Up to C{limit} events that arrived in C{(from_arrived, to_arrived]}, by arrival,
        after the cursor C{after} (from the previous page); the cursor of the next page
        is C{None} after the last one.
        """
        low = from_arrived if from_arrived is not None else -(1 << 63)
        high = to_arrived if to_arrived is not None else (1 << 63) - 1
        if after is None:
            rows = self.conn.execute(
                "SELECT jobid, seqno, arrived, line, id FROM events"
                " WHERE arrived > ? AND arrived <= ? ORDER BY arrived, id LIMIT ?",
                (low, high, limit + 1),
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT jobid, seqno, arrived, line, id FROM events"
                " WHERE (arrived, id) > (?, ?) AND arrived > ? AND arrived <= ?"
                " ORDER BY arrived, id LIMIT ?",
                (after[0], after[1], low, high, limit + 1),
            ).fetchall()
        page = rows[:limit]
        cursor = (page[-1][2], page[-1][4]) if len(rows) > limit and page else None
        return [_stored(row[:4]) for row in page], cursor

    def _of_destination(self, sql: str, alias: str, destination: str | None) -> Any:
        """
        The rows of C{sql} (a query of the outbox or the rejected table as
        C{alias}), only C{destination}'s unless it is C{None}, in id order.
        """
        args: tuple[str, ...] = ()
        if destination is not None:
            sql += f" WHERE {alias}.destination = ?"
            args = (destination,)
        return self.conn.execute(f"{sql} ORDER BY {alias}.id", args)

    def outbox_pending(self, destination: str | None = None) -> list[OutboxEntry]:
        sql = (
            "SELECT o.id, o.destination, o.event_id, e.jobid, e.line"
            " FROM outbox o JOIN events e ON e.id = o.event_id"
        )
        return [OutboxEntry(*row) for row in self._of_destination(sql, "o", destination)]

    def outbox_after(self, destination: str, after_id: int, limit: int) -> list[OutboxEntry]:
        rows = self.conn.execute(
            "SELECT o.id, o.destination, o.event_id, e.jobid, e.line, e.arrived"
            " FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.destination = ? AND o.id > ? ORDER BY o.id LIMIT ?",
            (destination, after_id, limit),
        )
        return [OutboxEntry(*row) for row in rows]

    def outbox_stats(self) -> dict[str, OutboxStats]:
        stats: dict[str, OutboxStats] = {}
        heads = self.conn.execute(
            "SELECT destination, COUNT(*), MIN(id) FROM outbox GROUP BY destination"
        ).fetchall()
        for dest, depth, first in heads:
            row = self.conn.execute(
                "SELECT e.arrived FROM outbox o JOIN events e ON e.id = o.event_id WHERE o.id = ?",
                (first,),
            ).fetchone()
            stats[dest] = OutboxStats(dest, int(depth), None if row is None else int(row[0]), 0)
        for dest, count in self.conn.execute(
            "SELECT destination, COUNT(*) FROM rejected GROUP BY destination"
        ):
            old = stats.get(dest) or OutboxStats(dest, 0, None, 0)
            stats[dest] = OutboxStats(dest, old.depth, old.oldest_arrived, int(count))
        return stats

    def rejected(self, destination: str | None = None) -> list[RejectedEntry]:
        sql = (
            "SELECT r.outbox_id, r.destination, r.event_id, r.major, r.minor, r.reason,"
            " r.rejected_at, e.jobid, e.line FROM rejected r JOIN events e ON e.id = r.event_id"
        )
        return [RejectedEntry(*row) for row in self._of_destination(sql, "r", destination)]


_STARTED_PARTS = frozenset(
    {
        "backend",
        "processor",
        "_queries",
        "_reader",
        "_runner",
        "_read",
        "_commit",
        "_notifier",
        "_outbox",
        "notifications",
    }
)


class ThreadRunner:
    """
    Runs work on a one-thread pool and counts the calls handed to it that have not
    started yet (C{waiting}): a draining commit yields to them.
    """

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool
        self._lock = threading.Lock()
        self.waiting = 0

    def __call__(self, work: Callable[[], _T]) -> Deferred[_T]:
        with self._lock:
            self.waiting += 1

        def started() -> _T:
            with self._lock:
                self.waiting -= 1
            return work()

        return deferToThreadPool(self._reactor, self._pool, started)


#: WAL pages at which the writer's commit checkpoints itself while a L{WalCheckpointer}
#: runs (SQLite's own default is 1000; 4000 pages are about 16 MB). Under a steady intake
#: the checkpointer's passes rarely catch up with the writer, so the log is not reused
#: from its start until the writer's own checkpoint runs: it then finds nearly every
#: page copied already, and the log stays within about this size.
WAL_BACKSTOP_PAGES = 4000

#: Default seconds between two passes of the L{WalCheckpointer} (C{wal-checkpoint-interval}).
WAL_CHECKPOINT_INTERVAL = 0.1


class WalCheckpointer:
    """
    Copies the committed pages of the write-ahead log into the database file on a
    thread and connection of its own, so that the writer's commits never do it.

    SQLite's automatic checkpoint runs inside the commit that takes the log past
    1,000 pages: that commit (and every event waiting for it) also copies about 4 MB
    into the database file and syncs it. Here a passive checkpoint runs every
    C{interval} seconds in which the writer committed; it never blocks the writer
    (which goes on appending to the log) nor the readers, and the log is reused from
    its start once it has been copied. The writer keeps its own automatic checkpoint
    at L{WAL_BACKSTOP_PAGES}, which bounds the log.
    What is durable does not change: a commit is durable once its log pages are synced.

    @param commits: the writer's count of committed transactions (read, never written).
    @ivar passes: checkpoints run; C{errors}: checkpoints that failed (logged, at
        most once a minute; the next pass tries again).
    """

    def __init__(self, path: str, interval: float, commits: Callable[[], int]) -> None:
        if not interval > 0:
            raise ValueError("the WAL checkpoint interval must be positive")
        self._path = path
        self._interval = interval
        self._commits = commits
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._seen = -1
        self._logged = -float("inf")
        self.passes = 0
        self.errors = 0

    def open(self) -> None:
        """
        Open the checkpointer's connection (L{start} does, then starts the thread).
        """
        self._conn = connect(self._path)
        self._conn.execute("PRAGMA synchronous = FULL")

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(
            target=self._run, name="lbtwist-store-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.run_once()

    def run_once(self) -> bool:
        """
        One pass: a passive checkpoint if the writer committed since the last one.

        @return: whether a checkpoint ran.
        """
        commits = self._commits()
        if commits == self._seen or self._conn is None:
            return False
        self._seen = commits
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:
            self.errors += 1
            now = time.monotonic()
            if now - self._logged >= 60:
                self._logged = now
                log.warn("store: WAL checkpoint failed ({error}); retried", error=error)
            return False
        self.passes += 1
        return True

    def stop(self) -> None:
        """
        Stop the thread (after the pass it may be running) and close its connection.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _thread_runner(reactor: IReactorFromThreads, name: str) -> tuple[ThreadRunner, ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
    pool.start()
    return ThreadRunner(reactor, pool), pool


@implementer(IEventStore)
class SQLiteStore(GroupedWrites, StoreReads):
    """
    L{IEventStore} on SQLite.

    @param path: database file (created and migrated as needed).
    @param clock: provides C{seconds()} (arrival times).
    @param reactor: runs the threads (default: C{clock}).
    @param policy: the relaying role (a proxy's store, L{RelayPolicy}): outbox rows
        for the events of jobs it gives a destination, and the events it generates;
        C{None} (a server's store): nothing is relayed or generated.
    @param runner: runs writer work (default: a dedicated thread); tests pass a
        synchronous one.
    @param read_runner: runs queries (default: a second thread; C{runner} if one is given).
    @param cache_size: job statuses the writer keeps (the C{job-cache} option).
    @param query_cache: parsed statuses the reader keeps (the C{query-cache} option).
    @param page_cache: KiB of SQLite page cache per connection (C{sqlite-cache}).
    @param list_scan: most jobs a page of a filtered job list examines (C{list-scan}).
    """

    def __init__(
        self,
        path: str,
        *,
        clock: IReactorTime,
        reactor: IReactorFromThreads | None = None,
        policy: RelayPolicy | None = None,
        runner: Runner | None = None,
        read_runner: Runner | None = None,
        cache_size: int = 100_000,
        checkpoint_every: int = CHECKPOINT_EVERY,
        refold_slice: int = REFOLD_SLICE,
        max_future_skew: int | None = None,
        switch_interval: float | None = None,
        query_cache: int = STATUS_CACHE_SIZE,
        page_cache: int = PAGE_CACHE_KIB,
        list_scan: int = LIST_SCAN,
        outbox_tail: int = OUTBOX_TAIL,
        lock: bool | statelock.StateLock = False,
        jp_register: bool = False,
        wal_checkpoint_interval: float | None = WAL_CHECKPOINT_INTERVAL,
    ) -> None:
        """
        @param checkpoint_every: see L{BatchProcessor}.
        @param refold_slice: see L{BatchProcessor}.
        @param max_future_skew: see L{BatchProcessor}.
        @param switch_interval: seconds; set as the interpreter's thread switch interval
            (C{sys.setswitchinterval}) when the store starts its own threads: a reactor
            woken by a socket waits at most this long for the writer thread, busy
            planning a commit, to let it run (the interpreter's default is 5 ms).
            C{None}: left as it is.
        @param outbox_tail: committed outbox rows kept in memory per destination for
            the relay (L{OutboxTail}; a relaying store only).
        @param lock: C{True}: hold the lock of the store's directory
            (L{lbtwist.store.statelock}) while open: a second writer (a service,
            C{lbtwist purge --state-dir}, C{lbtwist load}) is refused clearly. A
            L{lbtwist.store.statelock.StateLock}: the caller holds it already (the
            service, from its start-up), and keeps it.
        @param jp_register: keep a C{jp_pending} row with every stored RegJob, in its
            transaction (the Job Provenance export, C{--jpreg-dir}).
        @param wal_checkpoint_interval: seconds between the passes of the store's
            L{WalCheckpointer}, started with the store's own threads; C{None}: the
            writer's commits checkpoint the log as SQLite does by default.
        @raise ValueError: a tuning value is out of range.
        """
        check_tuning(checkpoint_every, refold_slice, max_future_skew)
        if switch_interval is not None and not switch_interval > 0:
            raise ValueError("switch_interval must be positive")
        self._switch_interval = switch_interval
        if wal_checkpoint_interval is not None and not wal_checkpoint_interval > 0:
            raise ValueError("wal_checkpoint_interval must be positive")
        self._wal_checkpoint_interval = wal_checkpoint_interval
        self._checkpointer: WalCheckpointer | None = None
        if cache_size < 1 or query_cache < 1 or page_cache < 1 or list_scan < 1:
            raise ValueError("cache_size, query_cache, page_cache and list_scan must be positive")
        self._list_scan = list_scan
        if outbox_tail < 1:
            raise ValueError(f"outbox tail of {outbox_tail} rows")
        self._outbox_tail = outbox_tail
        #: C{(events, queued_at_us)} per committed group (set before L{start}; metrics).
        self.commit_observer: Callable[[int, int], None] | None = None
        self.path = path
        self._query_cache = query_cache
        self._page_cache = page_cache
        self._checkpoint_every = checkpoint_every
        self._refold_slice = refold_slice
        self._max_future_skew = max_future_skew
        self.policy = policy
        self.relay = policy is not None
        self._clock = clock
        self._thread_reactor = reactor
        self._given_runner = runner
        self._given_read_runner = read_runner
        self._cache_size = cache_size
        self._pools: list[ThreadPool] = []
        self._listeners: list[CommitListener] = []
        self._started = False
        self._closed = False
        self._lock = lock
        self._lock_file: statelock.StateLock | None = None
        self._jp_register = jp_register

    def start(self) -> None:
        """
        Open the database (creating and migrating it as needed) and start the store's
        threads. Called by the service when it starts, after C{twistd} has forked: neither
        threads nor SQLite connections survive a fork. Any other use starts the store too.
        """
        if self._started:
            return
        self._started = True
        path = self.path
        clock = self._clock
        runner = self._given_runner
        read_runner = self._given_read_runner
        if self._lock is True:
            # Released again when the store closes.
            self._lock_file = statelock.acquire(os.path.dirname(os.path.abspath(path)))
        conn = connect(path)
        try:
            purging.new_store_vacuum(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            set_page_cache(conn, self._page_cache)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.backend = SQLiteBackend(conn)
        if self.relay:
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
            self.backend.tail = OutboxTail(self._outbox_tail, int(last))
        self.backend.jp_register = self._jp_register
        self._reader = connect(path)
        set_page_cache(self._reader, self._page_cache)
        self._queries = Queries(
            self._reader, status_cache=self._query_cache, list_scan=self._list_scan
        )
        self.processor = BatchProcessor(
            self.backend,
            policy=self.policy,
            cache_size=self._cache_size,
            checkpoint_every=self._checkpoint_every,
            refold_slice=self._refold_slice,
            max_future_skew=self._max_future_skew,
        )
        # The clock is the reactor unless one is given for the threads.
        reactor = self._thread_reactor or cast(IReactorFromThreads, clock)
        # The store's own writer thread drains the commit queue itself, handing each
        # committed group's results to the reactor (GroupCommit, handoff).
        handoff = None
        yield_to = None
        if runner is None:
            if self._switch_interval is not None:
                sys.setswitchinterval(self._switch_interval)
            writer, pool = _thread_runner(reactor, "lbtwist-store-writer")
            self._pools.append(pool)
            runner = writer
            handoff = reactor.callFromThread

            # A draining writer yields to any other work handed to its thread (the
            # outbox's acknowledgements, closing).
            def yield_to() -> bool:
                return writer.waiting > 0

            if read_runner is None:
                read_runner, pool = _thread_runner(reactor, "lbtwist-store-reader")
                self._pools.append(pool)
            if self._wal_checkpoint_interval is not None:
                backend = self.backend
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
                self._checkpointer = WalCheckpointer(
                    path, self._wal_checkpoint_interval, lambda: backend.transactions
                )
                self._checkpointer.start()
        self._runner = runner
        self._read = read_runner or runner
        self._commit = GroupCommit(
            clock, self.processor.process, runner, self.processor.pending, handoff, yield_to
        )
        self.notifications = self.backend.notif = Notifications(
            SQLNotifTables(conn, self._reader),
            writer=runner,
            reader=self._read,
            call_from_thread=reactor.callFromThread if self._pools else None,
        )
        self.processor.notify = self.notifications.matcher
        self._notifier = CommitNotifier(self.processor)
        for listener in self._listeners:
            self._notifier.add(listener)
        self._outbox = OutboxWriter(clock, runner, self.backend.outbox_done)
        self._commit.observer = self.commit_observer
        self._commit.kick()

    def __getattr__(self, name: str) -> object:
        # The parts made by start(): using any of them starts the store.
        if name in _STARTED_PARTS and not self.__dict__.get("_started", True):
            self.start()
            return getattr(self, name)
        raise AttributeError(name)

    @property
    def commits(self) -> int:
        """
        Number of commit groups started.
        """
        return self._commit.commits

    def _query(self, work: Callable[[Queries], _T]) -> Deferred[_T]:
        return self._read(lambda: work(self._queries))

    def outbox_after(
        self, destination: str, after_id: int, limit: int
    ) -> Deferred[list[OutboxEntry]]:
        """
        Rows committed since the last read come from the L{OutboxTail} (at once,
        no query), older ones from the database on the reader thread.
        """
        tail = self.backend.tail
        if tail is not None:
            rows = tail.after(destination, after_id, limit)
            if rows is not None:
                return succeed([OutboxEntry(*row) for row in rows])
        return self._read(lambda: self._queries.outbox_after(destination, after_id, limit))

    def outbox_resync(self) -> Deferred[None]:
        """
        Forget the L{OutboxTail} (on the writer, between commits): outbox rows another
        process added (C{lbtwist relay retry}) are read from the database.
        """
        backend = self.backend

        def reset() -> None:
            if backend.tail is not None:
                backend.tail.reset(_last_outbox_id(backend.conn))

        return self._runner(reset)

    def add_commit_listener(self, listener: CommitListener) -> None:
        if self._started:
            self._notifier.add(listener)
        else:
            self._listeners.append(listener)

    def close(self) -> Deferred[None]:
        """
        Finish the running and queued commits, close the connections, stop the threads.
        """
        if not self._started:
            self._closed = True
            return succeed(None)
        if self._closed:
            return self._commit.when_idle()
        self._closed = True
        self._commit.stop()
        d = self._commit.when_idle()
        d.addCallback(lambda _: self._outbox.when_idle())
        checkpointer = self._checkpointer
        if checkpointer is not None:
            # Joined on the writer thread: a pass under way does not hold up the reactor.
            d.addCallback(lambda _: self._runner(checkpointer.stop))
        d.addCallback(lambda _: self._runner(self.backend.conn.close))
        d.addCallback(lambda _: self._read(self._reader.close))
        d.addCallback(lambda _: self._stop_pools())
        return d

    def _stop_pools(self) -> None:
        for pool in self._pools:
            pool.stop()
        self._pools = []
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # -- purge (lbtwist.store.purging), on the writer thread between commit groups --

    def purge_chunk(
        self,
        rules: purging.PurgeRules,
        now: int,
        after: tuple[str, str] | None,
        limit: int,
        *,
        dry_run: bool = False,
        keep_events: bool = False,
        before_commit: Callable[[Any], None] | None = None,
        may_yield: bool = False,
    ) -> Deferred[purging.PurgeChunk]:
        """
        One bounded chunk of a purge (L{purging.purge_chunk}) on the writer thread,
        queued behind the running commit group; the purged jobs leave the status cache.

        @param may_yield: when a commit group is queued behind the chunk as it starts,
            do nothing (C{yielded}) so that the group goes first.
        """
        if self._closed:
            return fail(TryAgain("store closed"))
        destination = self.processor.relay_destination if self.policy is not None else None

        commit = self._commit

        def work() -> purging.PurgeChunk:
            if may_yield and commit.busy:
                return purging.PurgeChunk((), 0, after, yielded=True)
            started = time.perf_counter()
            chunk = purging.purge_chunk(
                self.backend.conn,
                rules=rules,
                now=now,
                after=after,
                limit=limit,
                dry_run=dry_run,
                keep_events=keep_events,
                destination=destination,
                before_commit=before_commit,
            )
            if not dry_run and chunk.purged:
                self.processor.forget([job.jobid for job in chunk.purged])
                self.backend.transactions += 1
            return attrs.evolve(chunk, seconds=time.perf_counter() - started)

        return self._runner(work)

    def vacuum_step(self, pages: int = purging.VACUUM_PAGES) -> Deferred[int]:
        """
        Give up to C{pages} freed pages back (writer thread).

        @return: C{Deferred[int]}: the free pages left.
        """
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._runner(lambda: purging.incremental_vacuum(self.backend.conn, pages))


class SQLiteReader(Queries):
    """
    Synchronous read-only access to a store file, for the offline command line.
    """

    def __init__(self, path: str) -> None:
        super().__init__(connect(path, readonly=True))
        found = schema_version(self.conn)
        if found != SCHEMA_VERSION:
            self.conn.close()
            raise LBError(f"database schema version {found}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()


class SQLiteLoader:
    """
    Offline load of events with their arrival times into a store file (created
    and migrated as needed), through the same commit-group logic as the service
    (L{BatchProcessor}: duplicates absorbed, registrations checked, states folded).
    No relay policy: loaded events get no outbox rows and generate nothing.
    """

    def __init__(self, path: str, *, max_future_skew: int | None = None) -> None:
        conn = connect(path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.processor = BatchProcessor(SQLiteBackend(conn), max_future_skew=max_future_skew)

    def load(self, items: list[tuple[str, Event, int]]) -> list[StoreResult | LBError]:
        """
        Store one group of C{(line, event, arrived)} items in one transaction, and
        finish the refolds they started.
        """
        results = self.processor.process(items)
        while self.processor.pending():
            self.processor.process([])
        return results

    def close(self) -> None:
        self.conn.close()
