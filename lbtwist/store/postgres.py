# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
The PostgreSQL event store: several front ends (C{twistd lbserver}) on one database.

Each front end keeps the commit-group logic of the SQLite store (L{BatchProcessor},
L{GroupCommit}: one writer thread, one transaction per group, acknowledged only once
committed, with C{synchronous_commit = on}). What differs is that other front ends
write the same tables at the same time:

  - every group first takes a transaction-scoped advisory lock on each of its jobs
    (in one order: two groups never wait on each other crosswise), then reads each
    job row C{FOR UPDATE}: events of one job arriving at two front ends serialize on
    the job, and a group reads what the other front end committed before it;
  - the writer keeps no job status between groups (another front end may have
    changed it): every group reads its jobs again, under the lock;
  - event ids come from a database sequence, not from the front end;
  - the duplicate rule is also a unique index (the job, and a hash of the fields
    that make two events duplicates, L{lbtwist.store.batch.identity}): if two front
    ends ever stored the same event, one transaction fails and its client sends
    again (then it is answered as a duplicate).

Driver: psycopg 3 in its blocking mode, on the store's own threads (one writer, a
pool of readers sized by the C{store-pool} option), as the SQLite store does; the
reactor never waits on the database, and the shared commit logic (synchronous, on
the writer thread) stays the same for both stores.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from lbtwist.core.errors import LBError, NoSpace, TryAgain
from lbtwist.core.stats import StatsRequest
from lbtwist.store import lifecycle, pglease, pglifecycle, purging
from lbtwist.store.batch import (
    CHECKPOINT_EVERY,
    REFOLD_SLICE,
    BatchPlan,
    BatchProcessor,
    CommitListener,
    CommitNotifier,
    GroupCommit,
    GroupedWrites,
    OutboxWriter,
    RejectRow,
    Runner,
    SpoolOffsets,
    check_tuning,
)
from lbtwist.store.interface import (
    IEventStore,
    OutboxEntry,
)
from lbtwist.store.notif import Notifications, NotifRow
from lbtwist.store.pgnotif import CHANGES_KEPT, NotifListener, NotifSync, PgNotifTables
from lbtwist.store.query import postgres_json
from lbtwist.store.shared import StoreReads
from lbtwist.store.sqlite import (
    INSERT_EVENTS,
    LIST_SCAN,
    STATUS_CACHE_SIZE,
    UPSERT_JOBS,
    Queries,
    SQLiteBackend,
    event_rows,
    job_rows,
)

if TYPE_CHECKING:
    from lbtwist.core.events import Event
    from lbtwist.core.relaypolicy import RelayPolicy

_T = TypeVar("_T")

log = Logger()

#: Reader connections (and threads) of a store by default (the C{store-pool} option).
POOL_SIZE = 2

#: URL schemes that select this store.
SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str | None) -> bool:
    """
    @return: whether C{url} names a PostgreSQL database (C{postgresql://...}).
    """
    return url is not None and url.startswith(SCHEMES)


_V1 = """
CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    jobid TEXT NOT NULL,
    seqno BIGINT NOT NULL,
    arrived BIGINT NOT NULL,
    type TEXT NOT NULL,
    date BIGINT NOT NULL,
    source TEXT NOT NULL,
    host TEXT NOT NULL,
    level TEXT NOT NULL,
    user_dn TEXT NOT NULL,
    seqcode TEXT NOT NULL,
    priority INTEGER NOT NULL,
    line TEXT NOT NULL,
    dupkey BIGINT NOT NULL,
    okey BYTEA NOT NULL
);
CREATE SEQUENCE events_id_seq OWNED BY events.id;
CREATE UNIQUE INDEX events_job ON events (jobid, seqno);
CREATE UNIQUE INDEX events_dup ON events (jobid, dupkey, md5(type || chr(1) || source
    || chr(1) || host || chr(1) || date::text || chr(1) || level || chr(1) || user_dn
    || chr(1) || seqcode));
CREATE INDEX events_okey ON events (jobid, okey);
CREATE INDEX events_date ON events (jobid, date);
CREATE INDEX events_arrived ON events (arrived, id);
CREATE TABLE jobs (
    jobid TEXT PRIMARY KEY,
    owner TEXT,
    state TEXT,
    jobtype TEXT,
    last_update TEXT,
    machine TEXT,
    nevents BIGINT NOT NULL,
    status TEXT NOT NULL,
    uniq TEXT,
    owner_norm TEXT,
    list_time TEXT NOT NULL DEFAULT '',
    refold INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_uniq ON jobs (uniq);
CREATE INDEX jobs_list ON jobs (list_time DESC, jobid);
CREATE INDEX jobs_owner_list ON jobs (owner_norm, list_time DESC, jobid);
CREATE INDEX jobs_refold ON jobs (jobid) WHERE refold = 1;
CREATE TABLE cream_map (
    cream_key TEXT PRIMARY KEY,
    cream_id TEXT NOT NULL,
    glite_id TEXT NOT NULL
);
CREATE INDEX cream_map_glite ON cream_map (glite_id);
CREATE TABLE checkpoints (
    jobid TEXT NOT NULL,
    okey BYTEA NOT NULL,
    position BIGINT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (jobid, okey)
);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    event_id BIGINT NOT NULL
);
CREATE INDEX outbox_destination ON outbox (destination, id);
CREATE TABLE rejected (
    id BIGSERIAL PRIMARY KEY,
    outbox_id BIGINT NOT NULL,
    destination TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    major INTEGER NOT NULL,
    minor INTEGER NOT NULL,
    reason TEXT NOT NULL,
    rejected_at BIGINT NOT NULL
);
CREATE INDEX rejected_destination ON rejected (destination, id);
CREATE TABLE spool_offsets (
    name TEXT PRIMARY KEY,
    inode BIGINT NOT NULL,
    "offset" BIGINT NOT NULL
)
"""


def _script(conn: Any, sql: str) -> None:
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_base(conn: Any) -> None:
    """
    Events (with their duplicate keys, ordering keys and the unique duplicate
    index), jobs, CREAM id mappings, status checkpoints, the relay's outbox and
    rejected tables, and the spool offsets: the SQLite store's schema as it is
    when this store was written.
    """
    _script(conn, _V1)


_PURGE = """
CREATE TABLE zombies (
    uniq TEXT PRIMARY KEY,
    jobid TEXT NOT NULL,
    purged_at BIGINT NOT NULL,
    trace TEXT NOT NULL
);
CREATE TABLE jp_pending (
    id BIGSERIAL PRIMARY KEY,
    jobid TEXT NOT NULL,
    owner TEXT NOT NULL
)
"""


def _migrate_purge(conn: Any) -> None:
    """
    Purged jobs (zombies: their events are refused on every front end) and the Job
    Provenance registrations not yet exported, as in the SQLite store.
    """
    _script(conn, _PURGE)


def _migrate_dump(conn: Any) -> None:
    """
    Events by arrival time: the incremental dumps (C{arrived} in C{(from, to]}).
    """
    _script(conn, "CREATE INDEX IF NOT EXISTS events_arrived ON events (arrived, id)")


def _migrate_notify(conn: Any) -> None:
    """
    Notification registrations, their job index and message queues (the SQLite
    store's tables), and the registration change log every front end follows
    (L{lbtwist.store.pgnotif}).
    """
    from lbtwist.store.pgnotif import SCHEMA

    _script(conn, SCHEMA)


def _migrate_lifecycle(conn: Any) -> None:
    """
    The state-entry and trace indexes of statistics and traceability, filled
    from the stored statuses (L{lbtwist.store.pglifecycle}).
    """
    from lbtwist.store import pglifecycle

    _script(conn, pglifecycle.SCHEMA)
    pglifecycle.backfill(conn)


def _migrate_relay_lease(conn: Any) -> None:
    """
    The relay leases: which front end sends the outbox rows of a destination
    (L{lbtwist.store.pglease}).
    """
    pglease.create_table(conn)


#: Ordered migrations: C{MIGRATIONS[n]} takes a database from version C{n} to C{n + 1}.
MIGRATIONS: list[Callable[[Any], None]] = [
    _migrate_base,
    _migrate_purge,
    _migrate_dump,
    _migrate_notify,
    _migrate_lifecycle,
    _migrate_relay_lease,
]

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

# The version table, and the advisory lock key that serializes migrations (any
# fixed number: front ends starting together migrate one after the other).
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS lbtwist_schema (version INTEGER NOT NULL)"
_MIGRATE_LOCK = 0x6C62_7477


def schema_version(conn: Any) -> int:
    """
    @return: the database's schema version (0: no lbtwist schema).
    """
    row = conn.execute("SELECT to_regclass('lbtwist_schema')").fetchone()
    if row[0] is None:
        return 0
    row = conn.execute("SELECT version FROM lbtwist_schema").fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: Any, target: int = SCHEMA_VERSION) -> int:
    """
    Apply the missing migrations, each in its own transaction, under an advisory
    lock (several front ends may start at once).

    @param conn: a L{PgConnection}.
    @return: the version the database had.
    @raise LBError: the database is newer than this code.
    """
    conn.execute(f"SELECT pg_advisory_lock({_MIGRATE_LOCK})")
    try:
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise LBError(f"database schema version {found} is newer than {SCHEMA_VERSION}")
        for version in range(found, target):
            conn.execute("BEGIN")
            try:
                conn.execute(_VERSION_TABLE)
                MIGRATIONS[version](conn)
                conn.execute("DELETE FROM lbtwist_schema")
                conn.execute("INSERT INTO lbtwist_schema (version) VALUES (?)", (version + 1,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return found
    finally:
        conn.execute(f"SELECT pg_advisory_unlock({_MIGRATE_LOCK})")


_PLACEHOLDER = re.compile(r"\?")
# SQLite's two-argument MAX (a scalar there; PostgreSQL's is GREATEST).
_SCALAR_MAX = re.compile(r"\bMAX\(([^(),]+),([^(),]+)\)")
_CONVERTED: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    # The shared query code writes SQLite's "?" placeholders (and no literal "?"
    # or "%"): psycopg's are "%s". Statements are few and fixed: cached. The few
    # SQLite forms the shared store code uses are translated too: BEGIN IMMEDIATE
    # (the writer's), INSERT OR IGNORE (a single-row VALUES insert) and MAX(a, b).
    converted = _CONVERTED.get(sql)
    if converted is None:
        text = _PLACEHOLDER.sub("%s", sql).replace(
            " offset FROM spool_offsets", ' "offset" FROM spool_offsets'
        )
        if text == "BEGIN IMMEDIATE":
            text = "BEGIN"
        if text.startswith("INSERT OR IGNORE INTO "):
            text = (
                "INSERT INTO " + text[len("INSERT OR IGNORE INTO ") :] + " ON CONFLICT DO NOTHING"
            )
        text = _SCALAR_MAX.sub(r"GREATEST(\1,\2)", text)
        converted = _CONVERTED[sql] = text
    return converted


class PgConnection:
    """
    A psycopg connection in autocommit mode (transactions are explicit, as on
    SQLite) answering the C{execute}/C{executemany} calls the shared query code
    makes, with SQLite's placeholders.
    """

    def __init__(self, url: str) -> None:
        import psycopg

        self.raw = psycopg.connect(url, autocommit=True)
        self.raw.execute("SET synchronous_commit = on")

    @property
    def in_transaction(self) -> bool:
        import psycopg

        return bool(self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        return self.raw.execute(_pg_sql(sql), args)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_pg_sql(sql), rows)

    def close(self) -> None:
        self.raw.close()


def _raw_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def connect(url: str) -> PgConnection:
    """
    Open a connection to the database of C{url} (C{postgresql://...}).

    @raise TryAgain: the database cannot be reached.
    """
    import psycopg

    try:
        return PgConnection(url)
    except psycopg.Error as e:
        raise TryAgain(f"store: cannot connect to PostgreSQL: {e}") from e


def translate_error(error: Exception) -> LBError | None:
    """
    @return: L{NoSpace} for a full disk, L{TryAgain} for other PostgreSQL errors
        (a lost connection, a deadlock, a duplicate stored by another front end).
    """
    import psycopg

    if not isinstance(error, psycopg.Error):
        return None
    if isinstance(error, psycopg.errors.DiskFull):
        return NoSpace(f"store: {error}")
    return TryAgain(f"store: {error}")


class PostgresBackend(SQLiteBackend):
    """
    The writer side of a front end: owns the writing connection (writer thread only).

    The reads of the shared logic (L{SQLiteBackend}: job, lines, identities,
    checkpoints) run unchanged in the group's transaction; the group begins with
    L{begin} (the job locks) and ends with L{write} (commit) or L{end} (rollback).
    """

    conn: Any

    #: The front end's relay leases (a relaying store): outbox rows are written
    #: under destination locks and acknowledged under the lease's fencing token.
    leases: pglease.RelayLeases | None = None

    #: Acknowledged or rejected rows left in the outbox because their lease was lost.
    refused_acks = 0

    def __init__(self, conn: PgConnection) -> None:
        super().__init__(cast(Any, conn))

    def begin(self, jobids: Iterable[str]) -> int | None:
        """
        Open the group's transaction and lock its jobs (advisory locks, in one
        order: also the jobs not stored yet).

        @return: the registrations' change version (C{notif_version}), read by the
            same statement once the locks are held; L{None} for a group without jobs.
        """
        conn = self.conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        jobs = sorted(set(jobids))
        if not jobs:
            return None
        row = conn.execute(
            "SELECT COUNT(pg_advisory_xact_lock(h)), (SELECT version FROM notif_version) FROM"
            " (SELECT hashtextextended(j, 0) AS h FROM unnest(?::text[]) AS j"
            " GROUP BY h ORDER BY h) AS locks",
            (jobs,),
        ).fetchone()
        return int(row[1])

    def end(self) -> None:
        """
        Roll back whatever the group left open (a group that wrote nothing).
        """
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def max_event_id(self) -> int:
        # Ids come from the database's sequence (L{write}): the planned ones are local.
        return 0

    def load_job(self, jobid: str) -> tuple[dict[str, Any], int] | None:
        import json

        row = self.conn.execute(
            "SELECT status, nevents FROM jobs WHERE jobid = ? FOR UPDATE", (jobid,)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def refold_jobs(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT jobid FROM jobs WHERE refold = 1")]

    def write(self, plan: BatchPlan) -> None:
        conn = self.conn
        if not conn.in_transaction:
            conn.execute("BEGIN")
        try:
            ids: dict[int, int] = {}
            if plan.events:
                rows = conn.execute(
                    "SELECT nextval('events_id_seq') FROM generate_series(1, ?)",
                    (len(plan.events),),
                ).fetchall()
                ids = {n.event_id: int(r[0]) for n, r in zip(plan.events, rows, strict=True)}
            conn.executemany(INSERT_EVENTS, event_rows(plan, ids))
            conn.executemany(UPSERT_JOBS, job_rows(plan))
            if plan.cuts:
                conn.executemany("DELETE FROM checkpoints WHERE jobid = ? AND okey > ?", plan.cuts)
            conn.executemany(
                "INSERT INTO checkpoints (jobid, okey, position, status) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (jobid, okey) DO UPDATE SET position = excluded.position,"
                " status = excluded.status",
                [(c.jobid, c.okey, c.position, c.status_json) for c in plan.checkpoints],
            )
            conn.executemany(
                "INSERT INTO cream_map (cream_key, cream_id, glite_id) VALUES (?, ?, ?)"
                " ON CONFLICT (cream_key) DO UPDATE SET cream_id = excluded.cream_id,"
                " glite_id = excluded.glite_id",
                [(m.cream_key, m.cream_id, m.glite_id) for m in plan.mappings],
            )
            if plan.outbox:
                pglease.lock_destinations(conn, {o.destination for o in plan.outbox})
            conn.executemany(
                "INSERT INTO outbox (destination, event_id) VALUES (?, ?)",
                [(o.destination, ids.get(o.event_id, o.event_id)) for o in plan.outbox],
            )
            if plan.offsets:
                _write_offsets(conn, plan.offsets)
            if plan.notifications:
                self.notif.write_messages(plan.notifications)
            if self.jp_register:
                purging.write_jp_pending(conn, plan)
            if plan.entries or plan.traces:
                pglifecycle.write(conn, plan.entries, plan.traces)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        if plan.notifications:
            self.notif.committed(plan.notifications)

    def translate_error(self, error: Exception) -> LBError | None:
        return translate_error(error)

    def outbox_done(self, acks: list[int], rejects: list[RejectRow]) -> None:
        """
        Remove acknowledged outbox rows and move rejected ones, in one transaction.
        """
        self._outbox_done(acks, rejects)

    def _outbox_done(self, acks: list[int], rejects: list[RejectRow]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            others: set[str] | None = None
            asked = len(acks) + len(rejects)
            leases = self.leases
            if leases is not None and asked:
                # Not the rows of destinations whose lease another front end
                # took: it sends them again.
                others = pglease.held_elsewhere(conn, leases.holder)
                rejects = [r for r in rejects if r.entry.destination not in others]
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
            ids = [i for i in acks] + [r.entry.id for r in rejects]
            if ids and others is None:
                conn.execute("DELETE FROM outbox WHERE id = ANY(?)", (ids,))
            elif others is not None:
                deleted = 0
                if ids:
                    deleted = conn.execute(
                        "DELETE FROM outbox WHERE id = ANY(?) AND destination <> ALL(?)",
                        (ids, sorted(others)),
                    ).rowcount
                if deleted < asked:
                    self.refused_acks += asked - deleted
                    log.info(
                        "relay: {n} acknowledged or rejected rows left in the outbox: their"
                        " lease is another front end's now (it sends them again)",
                        n=asked - deleted,
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1


def _write_offsets(conn: Any, offsets: SpoolOffsets) -> None:
    gone = [(name,) for name, spooled in offsets.items() if spooled is None]
    conn.executemany("DELETE FROM spool_offsets WHERE name = ?", gone)
    conn.executemany(
        'INSERT INTO spool_offsets (name, inode, "offset") VALUES (?, ?, ?)'
        ' ON CONFLICT (name) DO UPDATE SET inode = excluded.inode, "offset" = excluded."offset"',
        [(name, s[0], s[1]) for name, s in offsets.items() if s is not None],
    )


class PgQueries(Queries):
    """
    The shared queries (L{Queries}) on a PostgreSQL connection.
    """

    SUMMARY_EXTRA = (
        "status::jsonb->>'cream_state', (status::jsonb->>'exit_code')::bigint,"
        " (status::jsonb->>'done_code')::bigint"
    )

    def json_compare(self, field: str, op: str, value: Any) -> tuple[str, list[Any]]:
        return postgres_json(field, op, value)

    def stats(self, request: StatsRequest, max_jobs: int) -> dict[str, Any]:
        """
        A statistics answer counted from the state entries
        (L{lifecycle.stats_scan}: SQLite's kept counters are SQLite triggers).
        """
        return lifecycle.stats_scan(self.conn, request, max_jobs=max_jobs)

    def outbox_pending(self, destination: str | None = None) -> list[OutboxEntry]:
        sql = (
            "SELECT o.id, o.destination, o.event_id, e.jobid, e.line, e.arrived"
            " FROM outbox o JOIN events e ON e.id = o.event_id"
        )
        return [OutboxEntry(*row) for row in self._of_destination(sql, "o", destination)]


class _ReaderPool:
    """
    C{size} reader threads, each with its own connection and L{PgQueries}
    (thread-local: a connection, and a status cache, serve one thread at a time).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        url: str,
        size: int,
        make: Callable[[PgConnection], PgQueries],
    ) -> None:
        self._reactor = reactor
        self._url = url
        self._make = make
        self._local = threading.local()
        self._opened: list[PgConnection] = []
        self._lock = threading.Lock()
        self.pool = ThreadPool(minthreads=size, maxthreads=size, name="lbtwist-store-reader")
        self.pool.start()

    def queries(self) -> PgQueries:
        queries: PgQueries | None = getattr(self._local, "queries", None)
        if queries is None:
            conn = connect(self._url)
            with self._lock:
                self._opened.append(conn)
            queries = self._local.queries = self._make(conn)
        return queries

    def run(self, work: Callable[[PgQueries], _T]) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self.pool, lambda: work(self.queries()))

    def stop(self) -> None:
        self.pool.stop()
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened = []


_STARTED_PARTS = frozenset(
    {
        "backend",
        "processor",
        "_runner",
        "_reads",
        "_commit",
        "_notifier",
        "_outbox",
        "notifications",
    }
)


@implementer(IEventStore)
class PostgresStore(GroupedWrites, StoreReads):
    """
    L{IEventStore} on PostgreSQL, one of several front ends on one database.

    @param url: the database (C{postgresql://user@host:port/db}, or with
        C{?host=/socket/dir}); its schema is created and migrated as needed.
    @param clock: provides C{seconds()} (arrival times).
    @param reactor: runs the threads (default: C{clock}).
    @param policy: the relaying role (see L{lbtwist.store.sqlite.SQLiteStore}).
    @param runner: runs writer work (default: a dedicated thread); tests pass a
        synchronous one, which also answers queries on the writer's connection.
    @param pool_size: reader connections and threads (the C{store-pool} option).
    @param query_cache: parsed statuses each reader keeps (C{query-cache}).
    @param list_scan: most jobs a page of a filtered job list examines (C{list-scan}).
    """

    backend: PostgresBackend

    def __init__(
        self,
        url: str,
        *,
        clock: IReactorTime,
        reactor: IReactorFromThreads | None = None,
        policy: RelayPolicy | None = None,
        runner: Runner | None = None,
        pool_size: int = POOL_SIZE,
        checkpoint_every: int = CHECKPOINT_EVERY,
        refold_slice: int = REFOLD_SLICE,
        max_future_skew: int | None = None,
        query_cache: int = STATUS_CACHE_SIZE,
        list_scan: int = LIST_SCAN,
        jp_register: bool = False,
        notif_changes: int = CHANGES_KEPT,
        relay_lease: float = pglease.RELAY_LEASE,
        holder: str | None = None,
    ) -> None:
        """
        @param notif_changes: registration change rows kept for front ends to catch
            up with (C{store-notif-changes}; L{lbtwist.store.pgnotif}).
        @param jp_register: keep a C{jp_pending} row with every stored RegJob
            (C{--jpreg-dir}), as the SQLite store.
        @param relay_lease: seconds a relay lease lasts unless renewed (a relaying
            store: L{lbtwist.store.pglease}); another front end takes over a
            destination within 4/3 of it.
        @param holder: this front end's name in the lease table (default
            L{pglease.default_holder}).
        @param checkpoint_every: see L{BatchProcessor}.
        @param refold_slice: see L{BatchProcessor}.
        @param max_future_skew: see L{BatchProcessor}.
        @raise ValueError: a tuning value is out of range.
        """
        check_tuning(checkpoint_every, refold_slice, max_future_skew)
        if pool_size < 1 or query_cache < 1 or list_scan < 1 or notif_changes < 1:
            raise ValueError("pool_size, query_cache, list_scan and notif_changes must be positive")
        self._notif_changes = notif_changes
        if not relay_lease > 0:
            raise ValueError(f"relay lease of {relay_lease} s")
        self._relay_lease = relay_lease
        self._holder = holder or pglease.default_holder()
        #: The relay leases of a relaying store, once started (else L{None}).
        self.leases: pglease.RelayLeases | None = None
        self._lost_listeners: list[CommitListener] = []
        self.url = url
        self.policy = policy
        self.relay = policy is not None
        self._clock = clock
        self._thread_reactor = reactor
        self._given_runner = runner
        self._pool_size = pool_size
        self._checkpoint_every = checkpoint_every
        self._refold_slice = refold_slice
        self._max_future_skew = max_future_skew
        self._query_cache = query_cache
        self._list_scan = list_scan
        self._jp_register = jp_register
        self._listeners: list[CommitListener] = []
        self._pools: list[ThreadPool] = []
        self._readers: _ReaderPool | None = None
        self._started = False
        self._closed = False

    def start(self) -> None:
        """
        Connect (creating and migrating the schema as needed) and start the store's
        threads; called by the service after C{twistd} has forked.
        """
        if self._started:
            return
        self._started = True
        conn = connect(self.url)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self.backend = PostgresBackend(conn)
        self.processor = BatchProcessor(
            self.backend,
            policy=self.policy,
            cache_size=1,
            checkpoint_every=self._checkpoint_every,
            refold_slice=self._refold_slice,
            max_future_skew=self._max_future_skew,
        )
        reactor = self._thread_reactor or cast(IReactorFromThreads, self._clock)
        runner = self._given_runner
        handoff = None
        yield_to = None
        if runner is None:
            from lbtwist.store.sqlite import _thread_runner

            writer, pool = _thread_runner(reactor, "lbtwist-store-writer")
            self._pools.append(pool)
            runner = writer
            handoff = reactor.callFromThread

            def yield_to() -> bool:
                return writer.waiting > 0

            self._readers = _ReaderPool(reactor, self.url, self._pool_size, self._queries_on)
            self._reads: Callable[[Callable[[PgQueries], Any]], Deferred[Any]] = self._readers.run
        else:
            shared = self._queries_on(conn)
            given = runner

            def on_writer(work: Callable[[PgQueries], Any]) -> Deferred[Any]:
                return given(lambda: work(shared))

            self._reads = on_writer
        self._runner = runner
        self._commit = GroupCommit(
            self._clock, self._process, runner, self.processor.pending, handoff, yield_to
        )
        self.backend.jp_register = self._jp_register
        # Notifications: in the shared tables, the index kept in step per group.
        threaded = self._readers is not None
        readers = self._readers
        if readers is not None:
            tables = PgNotifTables(
                conn, lambda: readers.queries().conn, changes_kept=self._notif_changes
            )

            def read(work: Callable[[], Any]) -> Deferred[Any]:
                return readers.run(lambda _: work())

            notif_reader: Callable[[Callable[[], Any]], Deferred[Any]] = read
        else:
            tables = PgNotifTables(conn, lambda: conn, changes_kept=self._notif_changes)
            notif_reader = runner
        sync_version = int(conn.execute("SELECT version FROM notif_version").fetchone()[0])
        self.notifications = self.backend.notif = Notifications(
            tables,
            writer=runner,
            reader=notif_reader,
            call_from_thread=reactor.callFromThread if threaded else None,
        )
        self.notif_sync = NotifSync(self.notifications, tables)
        self.notif_sync.known = sync_version
        self.processor.notify = self.notifications.matcher
        if threaded:
            self._listener = NotifListener(
                lambda: _raw_connect(self.url),
                tables.token,
                wake=self._remote_messages,
                changed=lambda: reactor.callFromThread(self._sync_registrations),
                lost=lambda: reactor.callFromThread(self._listen_lost),
            )
            self._listener.start()
        self._notifier = CommitNotifier(self.processor)
        for listener in self._listeners:
            self._notifier.add(listener)
        self._outbox = OutboxWriter(self._clock, runner, self.backend.outbox_done)
        if self.relay:
            self._start_leases(runner)
        self._commit.kick()

    def _start_leases(self, runner: Runner) -> None:
        backend = self.backend
        leases = pglease.RelayLeases(
            self._holder, self._relay_lease, self._clock, runner, lambda: backend.conn
        )
        self.leases = backend.leases = leases
        for listener in self._listeners:
            leases.add_wake_listener(listener)
        for listener in self._lost_listeners:
            leases.add_lost_listener(listener)
        leases.start()

    def _queries_on(self, conn: PgConnection) -> PgQueries:
        return PgQueries(cast(Any, conn), status_cache=self._query_cache, list_scan=self._list_scan)

    def _process(
        self, items: list[tuple[str, Event, int]], offsets: SpoolOffsets | None = None
    ) -> list[Any]:
        # One transaction per group: lock its jobs, forget what this front end
        # knew of them (another may have written since), plan and write.
        backend = self.backend
        try:
            version = backend.begin(ev.jobid for _, ev, _ in items)
        except Exception as e:
            error = translate_error(e) or TryAgain(f"store failure: {e}")
            return [error] * len(items)
        self.processor.drop_cache()
        try:
            try:
                # Registrations another front end changed, before this group's matching.
                self.notif_sync.sync(backend.conn, version)
            except Exception as e:
                failed = translate_error(e) or TryAgain(f"store failure: {e}")
                return [failed] * len(items)
            return self.processor.process(items, offsets)
        finally:
            backend.end()

    def _remote_messages(self, uniques: set[str]) -> None:
        # Listener thread: messages another front end queued (wakes on the reactor).
        self.notifications.committed([NotifRow(u, "", b"") for u in sorted(uniques)])

    def _sync_registrations(self) -> Deferred[Any]:
        # Reactor thread: registrations changed elsewhere; re-read them on the writer.
        if self._closed:
            return succeed(None)
        d = self._runner(lambda: self.notif_sync.sync(self.backend.conn))
        d.addErrback(lambda f: log.failure("notifications: re-reading registrations failed", f))
        return d

    def _listen_lost(self) -> None:
        # Notifications may have been missed: re-read, and every stream reads on.
        self._sync_registrations()
        with self.notifications.lock:
            uniques = sorted(self.notifications.index.by_unique)
        self.notifications.committed([NotifRow(u, "", b"") for u in uniques])

    def __getattr__(self, name: str) -> object:
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
        # A reader of the pool, or the writer's connection under a given runner.
        return self._reads(work)

    def outbox_after(
        self, destination: str, after_id: int, limit: int
    ) -> Deferred[list[OutboxEntry]]:
        """
        The rows of C{destination} after C{after_id}, if this front end holds its
        lease (a relaying store); none otherwise. A lease it takes here is read
        from the first row.
        """
        leases = self.leases
        if leases is None or leases.holds(destination):
            return self._reads(lambda q: q.outbox_after(destination, after_id, limit))
        if destination in leases.tokens or not leases.may_ask(destination):
            return succeed([])

        def taken(ok: bool) -> Deferred[list[OutboxEntry]] | list[OutboxEntry]:
            if not ok:
                return []
            return self._reads(lambda q: q.outbox_after(destination, 0, limit))

        return leases.acquire(destination).addCallback(taken)

    def add_lease_listener(self, listener: CommitListener) -> None:
        """
        Call C{listener(destinations)} when this front end loses the relay lease of
        destinations: it must stop sending them and forget the rows it read (the
        relay's L{lbtwist.service.relay.RelayQueue.restart}). Never called on a
        store that does not relay.
        """
        if self.leases is not None:
            self.leases.add_lost_listener(listener)
        else:
            self._lost_listeners.append(listener)

    def add_commit_listener(self, listener: CommitListener) -> None:
        if self._started:
            self._notifier.add(listener)
            if self.leases is not None:
                self.leases.add_wake_listener(listener)
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
        listener = self.__dict__.get("_listener")
        if listener is not None:
            listener.stop()
            d.addCallback(lambda _: self._runner(listener.join))
        if self.leases is not None:
            # No more rounds; the last acknowledgements still go under the leases,
            # which are given up after them.
            leases = self.leases
            leases.stop()
            d.addCallback(lambda _: self._runner(lambda: self._release(leases)))
        d.addCallback(lambda _: self._runner(self.backend.conn.close))
        d.addCallback(lambda _: self._stop_pools())
        return d

    def _release(self, leases: pglease.RelayLeases) -> None:
        try:
            pglease.release(self.backend.conn, leases.holder)
        except Exception as e:
            log.info("relay: giving the leases up failed ({error}): they expire", error=e)
        leases.forget()

    def _stop_pools(self) -> None:
        for pool in self._pools:
            pool.stop()
        self._pools = []
        if self._readers is not None:
            self._readers.stop()
            self._readers = None

    # -- purge, statistics, trace: the SQLite store's interface (docs/lifecycle.md) --

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
        One bounded chunk of a purge on the writer thread (L{purging.purge_chunk}),
        its jobs locked as a commit group locks them: an event of a job stored
        meanwhile by another front end keeps the job; a job purged here has its
        later events refused at every front end (its zombie row).

        @param may_yield: when a commit group is queued behind the chunk as it
            starts, do nothing (C{yielded}) so that the group goes first.
        """
        if self._closed:
            return fail(TryAgain("store closed"))
        destination = self.processor.relay_destination if self.policy is not None else None
        commit = self._commit

        def work() -> purging.PurgeChunk:
            if may_yield and commit.busy:
                return purging.PurgeChunk((), 0, after, yielded=True)
            started = time.perf_counter()
            conn = self.backend.conn
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            chunk = purging.purge_chunk(
                conn,
                rules=rules,
                now=now,
                after=after,
                limit=limit,
                dry_run=dry_run,
                keep_events=keep_events,
                destination=destination,
                before_commit=before_commit,
                parent_sql=pglifecycle.PARENT_SQL,
                write_zombies=pglifecycle.write_zombies,
                lock=pglifecycle.lock_jobs,
            )
            if not dry_run and chunk.purged:
                self.processor.forget([job.jobid for job in chunk.purged])
                self.backend.transactions += 1
            return attrs.evolve(chunk, seconds=time.perf_counter() - started)

        return self._runner(work)

    def vacuum_step(self, pages: int = purging.VACUUM_PAGES) -> Deferred[int]:
        """
        Nothing to do: PostgreSQL's autovacuum reuses the purged rows' space.

        @return: C{Deferred[int]}: 0 pages left.
        """
        return succeed(0)


#: The tables L{copy_from_sqlite} moves, with their columns (the same on both stores).
COPIED_TABLES: dict[str, str] = {
    "events": "id, jobid, seqno, arrived, type, date, source, host, level, user_dn,"
    " seqcode, priority, line, dupkey, okey",
    "jobs": "jobid, owner, state, jobtype, last_update, machine, nevents, status, uniq,"
    " owner_norm, list_time, refold",
    "cream_map": "cream_key, cream_id, glite_id",
    "checkpoints": "jobid, okey, position, status",
    "outbox": "id, destination, event_id",
    "rejected": "id, outbox_id, destination, event_id, major, minor, reason, rejected_at",
    "spool_offsets": 'name, inode, "offset"',
    "zombies": "uniq, jobid, purged_at, trace",
    "jp_pending": "id, jobid, owner",
    "notif_regs": "uniq, owner, owner_norm, fqans, spec, selector, valid_until, created,"
    " last_seq, acked, queued, size, dropped",
    "notif_jobs": "job, uniq",
    "notif_messages": "id, reg, seq, kind, jobid, size, body",
    "state_entries": "state, entered, jobid, destination, ce_node, owner, vo",
    "trace_jobs": "jobid, owner, owner_norm, fqan, lrms_id, cream_id, worker_node,"
    " running_from, running_to, first, last",
}

#: Rows moved per statement by L{copy_from_sqlite}.
COPY_BATCH = 5000


def copy_from_sqlite(path: str, url: str, batch: int = COPY_BATCH) -> dict[str, int]:
    """
    Copy a SQLite store (its events, statuses, CREAM mappings, checkpoints, outbox,
    rejected events, spool offsets, zombies with their trace records, Job
    Provenance rows, notification registrations with their queued messages and
    read positions, and the state-entry and trace indexes) into the empty
    PostgreSQL store of C{url} (created or migrated first), in one transaction,
    then check that every job's stored status is the same on both and that every
    table holds the rows copied.

    @return: rows copied per table.
    @raise LBError: the SQLite store's schema is not this code's, the target
        holds events already, or a status differs after the copy.
    """
    from lbtwist.store.sqlite import SCHEMA_VERSION as SQLITE_VERSION
    from lbtwist.store.sqlite import connect as sqlite_connect
    from lbtwist.store.sqlite import schema_version as sqlite_schema_version

    source = sqlite_connect(path, readonly=True)
    target = connect(url)
    try:
        found = sqlite_schema_version(source)
        if found != SQLITE_VERSION:
            raise LBError(f"{path}: SQLite schema version {found}, expected {SQLITE_VERSION}")
        migrate(target)
        if target.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()[0]:
            raise LBError("the PostgreSQL store holds events already: copy into an empty one")
        counts: dict[str, int] = {}
        target.execute("BEGIN")
        try:
            for table, columns in COPIED_TABLES.items():
                src_columns = columns.replace('"offset"', "offset")
                marks = ", ".join("?" for _ in columns.split(","))
                rows = source.execute(f"SELECT {src_columns} FROM {table}")
                counts[table] = 0
                while chunk := rows.fetchmany(batch):
                    target.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", chunk)
                    counts[table] += len(chunk)
            for table, sequence in (
                ("events", "events_id_seq"),
                ("outbox", "outbox_id_seq"),
                ("rejected", "rejected_id_seq"),
                ("jp_pending", "jp_pending_id_seq"),
                ("notif_messages", "notif_messages_id_seq"),
            ):
                target.execute(
                    f"SELECT setval('{sequence}', (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}),"
                    " false)"
                )
            # Front ends already running read the copied registrations as a change.
            _announce_registrations(target)
            target.execute("COMMIT")
        except BaseException:
            if target.in_transaction:
                target.execute("ROLLBACK")
            raise
        differ = _compare_statuses(source, target, batch)
        if differ:
            raise LBError(f"{differ} job statuses differ after the copy")
        for table in COPIED_TABLES:
            (found,) = target.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
            if int(found) != counts[table]:
                raise LBError(f"{table}: {found} rows after the copy, {counts[table]} copied")
        return counts
    finally:
        source.close()
        target.close()


def _announce_registrations(conn: PgConnection) -> None:
    uniques = [row[0] for row in conn.execute("SELECT uniq FROM notif_regs ORDER BY uniq")]
    if not uniques:
        return
    (version,) = conn.execute(
        "UPDATE notif_version SET version = version + 1 RETURNING version"
    ).fetchone()
    conn.executemany(
        "INSERT INTO notif_changes (id, uniq) VALUES (?, ?)", [(version, u) for u in uniques]
    )


def _compare_statuses(source: Any, target: PgConnection, batch: int) -> int:
    differ = 0
    rows = source.execute("SELECT jobid, status FROM jobs ORDER BY jobid")
    while chunk := rows.fetchmany(batch):
        stored = dict(
            target.execute(
                "SELECT jobid, status FROM jobs WHERE jobid = ANY(?)", ([j for j, _ in chunk],)
            ).fetchall()
        )
        differ += sum(1 for jobid, status in chunk if stored.get(jobid) != status)
    return differ
