# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
Notifications on PostgreSQL, shared by every front end of one database.

The tables are the SQLite store's (L{lbtwist.store.notif.SQLNotifTables} runs on
them, its statements translated by L{lbtwist.store.postgres}); what several front
ends add:

  - B{message queues}: a commit group locks the registration rows it queues
    messages for (C{SELECT ... FOR UPDATE}, in one order: groups of two front ends
    never wait on each other crosswise) before the shared code reads their
    counters, so the sequence numbers of one registration stay dense and ordered
    whichever front end stored the event;
  - B{registrations}: each front end keeps the in-memory index of the shared code.
    Every transaction that changes registrations bumps the one-row
    C{notif_version} table and records the changed uniques in C{notif_changes}
    under that version. A front end compares its version with the table's at the
    start of every commit group, inside the group's transaction (one one-row read):
    an event stored after a registration committed, at any front end, is matched;
  - B{wake-ups}: the commits send C{NOTIFY lbtwist_notif} (delivered with the
    commit); each threaded front end keeps one C{LISTEN} connection
    (L{NotifListener}) that wakes its own event streams for messages queued by
    another front end and re-reads changed registrations at once. LISTEN rather
    than a poll: nothing is read while nothing happens, and a stream hears of a
    message as soon as its transaction commits.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from lbtwist.core.notif import QueueBounds, Registration
from lbtwist.store.notif import _REG_COLUMNS, Notifications, NotifRow, SQLNotifTables, _reg_state
from lbtwist.store.shared import NOTIF_SCHEMA

log = Logger()

#: The channel of C{NOTIFY}.
CHANNEL = "lbtwist_notif"
#: Registration uniques per C{NOTIFY} payload (payloads are limited to 8000 bytes).
PAYLOAD_UNIQUES = 200
#: Change rows kept in C{notif_changes} by default (the sweep prunes older ones; the
#: C{store-notif-changes} option); a front end further behind reloads every registration.
CHANGES_KEPT = 10_000

SCHEMA = (
    "\n"
    + NOTIF_SCHEMA.format(int="BIGINT", serial="BIGSERIAL", blob="BYTEA", clustered="")
    + """;
CREATE TABLE notif_version (version BIGINT NOT NULL);
INSERT INTO notif_version (version) VALUES (0);
CREATE TABLE notif_changes (
    id BIGINT NOT NULL,
    uniq TEXT NOT NULL,
    PRIMARY KEY (id, uniq)
)
"""
)


def payloads(kind: str, token: str, uniques: Any) -> list[str]:
    """
    The C{NOTIFY} payloads of C{kind} (C{m}: messages, C{r}: registrations) from
    the front end C{token}, for C{uniques}, a few hundred per payload.
    """
    ordered = sorted(uniques)
    return [
        " ".join([kind, token, *ordered[i : i + PAYLOAD_UNIQUES]])
        for i in range(0, max(len(ordered), 1), PAYLOAD_UNIQUES)
    ]


def parse_payload(payload: str) -> tuple[str, str, set[str]] | None:
    """
    @return: C{(kind, token, uniques)} of a payload of L{payloads}, None for another.
    """
    parts = payload.split(" ")
    if len(parts) < 2 or parts[0] not in ("m", "r"):
        return None
    return parts[0], parts[1], set(parts[2:])


class PgNotifTables(SQLNotifTables):
    """
    The notification tables on PostgreSQL: the SQLite store's code, plus the
    registration row locks of the message writes, the change log of the
    registrations and the C{NOTIFY}s.

    @param conn: the writer's connection (a L{lbtwist.store.postgres.PgConnection}).
    @param reader: the connection of the calling reader thread.
    @param changes_kept: registration change rows kept (C{store-notif-changes}).
    @ivar token: this front end's name in the payloads (its own are not acted on).
    """

    def __init__(
        self, conn: Any, reader: Callable[[], Any], *, changes_kept: int = CHANGES_KEPT
    ) -> None:
        super().__init__(conn, conn)
        if changes_kept < 1:
            raise ValueError("at least one registration change must be kept")
        self.changes_kept = changes_kept
        self._reader_of = reader
        self.token = uuid.uuid4().hex[:12]
        self._changed: set[str] = set()
        self._lock_first: list[str] = []
        #: Called with the version a change of this front end committed.
        self.on_change: Callable[[int], None] = lambda version: None

    @property  # type: ignore[override]
    def reader(self) -> Any:
        return self._reader_of()

    @reader.setter
    def reader(self, value: Any) -> None:
        pass  # the base class sets it; the calling thread's connection is used

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        conn = self.conn
        self._changed = set()
        locks, self._lock_first = self._lock_first, []
        conn.execute("BEGIN")
        try:
            if locks:
                conn.execute(
                    "SELECT 1 FROM notif_regs WHERE uniq = ANY(?) ORDER BY uniq FOR UPDATE",
                    (sorted(locks),),
                )
            result = work(conn)
            version = self._record_changes(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._changed = set()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version is not None:
            self.on_change(version)
        return result

    def ack(self, unique: str, upto: int) -> None:
        # The counters change under the registration's row lock, as in write_messages:
        # a commit group of another front end trimming the queue waits, or goes first.
        self._lock_first = [unique]
        super().ack(unique, upto)

    def _record_changes(self, conn: Any) -> int | None:
        changed, self._changed = self._changed, set()
        if not changed:
            return None
        # The version row serializes the changing transactions: versions commit in order.
        (version,) = conn.execute(
            "UPDATE notif_version SET version = version + 1 RETURNING version"
        ).fetchone()
        conn.executemany(
            "INSERT INTO notif_changes (id, uniq) VALUES (?, ?)",
            [(version, u) for u in sorted(changed)],
        )
        for payload in payloads("r", self.token, changed):
            conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))
        return int(version)

    def _put(self, conn: Any, reg: Registration, new: bool) -> None:
        self._changed.add(reg.unique)
        super()._put(conn, reg, new)

    def drop(self, uniques: list[str]) -> None:
        def work(conn: Any) -> None:
            keys = [(u,) for u in sorted(uniques)]
            self._changed.update(uniques)
            # The registration rows first, in one order: a commit group writing
            # messages waits for them, then finds the registration gone.
            conn.executemany("DELETE FROM notif_regs WHERE uniq = ?", keys)
            conn.executemany("DELETE FROM notif_messages WHERE reg = ?", keys)
            conn.executemany("DELETE FROM notif_jobs WHERE uniq = ?", keys)

        self._transaction(work)

    def write_messages(self, rows: list[NotifRow], bounds: QueueBounds) -> None:
        if not rows:
            return
        regs = sorted({r.reg for r in rows})
        # The counters are read and written under the registrations' row locks,
        # taken by the statement that also sends the wake-up (delivered at commit).
        first, *more = payloads("m", self.token, regs)
        self.conn.execute(
            "SELECT pg_notify(?, ?), (SELECT COUNT(*) FROM (SELECT 1 FROM notif_regs"
            " WHERE uniq = ANY(?) ORDER BY uniq FOR UPDATE) AS locked)",
            (CHANNEL, first, regs),
        )
        super().write_messages(rows, bounds)
        for payload in more:
            self.conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def expired(self, now: int, limit: int) -> list[str]:
        # The sweep's turn (every front end's): change rows older than the last
        # changes_kept versions go too.
        self.conn.execute(
            "DELETE FROM notif_changes WHERE id <= (SELECT version FROM notif_version) - ?",
            (self.changes_kept,),
        )
        return super().expired(now, limit)


class NotifSync:
    """
    Keeps a front end's registration index in step with the shared tables.

    @ivar known: the C{notif_version} the index reflects.
    @ivar reloads: full reloads done (the change log did not reach back far enough).
    """

    def __init__(self, notifications: Notifications, tables: PgNotifTables) -> None:
        self.notifications = notifications
        self.tables = tables
        self._lock = threading.Lock()
        self.known = 0
        self.reloads = 0
        tables.on_change = self._own_change

    def start(self, conn: Any) -> None:
        """
        Read the version (the index was just loaded from the table: the changes
        after this version are read again, which is harmless).
        """
        self.known = int(conn.execute("SELECT version FROM notif_version").fetchone()[0])

    def _own_change(self, version: int) -> None:
        # A change this front end made (its index has it already).
        with self._lock:
            if version == self.known + 1:
                self.known = version

    def sync(self, conn: Any, version: int | None = None) -> set[str]:
        """
        Apply the registration changes committed since L{known} to the index (on
        C{conn}, inside or outside a transaction), and wake their streams.

        @param version: C{notif_version} as the caller just read it (a commit
            group's first statement reads it), L{None}: read it here.
        @return: the uniques that changed.
        """
        with self._lock:
            if version is None:
                (version,) = conn.execute("SELECT version FROM notif_version").fetchone()
            version = int(version)
            known = self.known
            if version == known:
                return set()
            rows = conn.execute(
                "SELECT id, uniq FROM notif_changes WHERE id > ? AND id <= ?", (known, version)
            ).fetchall()
            n = self.notifications
            if {int(r[0]) for r in rows} != set(range(known + 1, version + 1)):
                # Pruned meanwhile: everything again.
                self.reloads += 1
                states = [
                    _reg_state(r)
                    for r in conn.execute(f"SELECT {_REG_COLUMNS} FROM notif_regs").fetchall()
                ]
                with n.lock:
                    changed = set(n.index.by_unique) | {s.reg.unique for s in states}
                    for unique in list(n.index.by_unique):
                        n.index.remove(unique)
                    for state in states:
                        n.index.add(state.reg)
            else:
                changed = {str(r[1]) for r in rows}
                states = [
                    _reg_state(r)
                    for r in conn.execute(
                        f"SELECT {_REG_COLUMNS} FROM notif_regs WHERE uniq = ANY(?)",
                        (sorted(changed),),
                    ).fetchall()
                ]
                with n.lock:
                    for unique in changed:
                        n.index.remove(unique)
                    for state in states:
                        n.index.add(state.reg)
            self.known = version
        # Streams of dropped or changed registrations read on (and may end).
        n.committed([NotifRow(u, "", b"") for u in sorted(changed)])
        return changed


class NotifListener:
    """
    The C{LISTEN} connection of a threaded front end, on a thread of its own:
    messages queued by other front ends wake this front end's streams;
    registration changes are applied at once (L{NotifSync}, on the writer).

    @param connect: opens a raw psycopg connection (autocommit).
    @param wake: called (from this thread) with the uniques that got messages.
    @param changed: called (from this thread) when registrations changed elsewhere.
    @param lost: called (from this thread) after the connection was lost and made
        again: notifications may have been missed meanwhile.
    """

    #: Seconds between checks of the stop flag.
    tick = 0.5
    #: Most seconds between reconnection attempts.
    max_retry = 30.0

    def __init__(
        self,
        connect: Callable[[], Any],
        token: str,
        *,
        wake: Callable[[set[str]], object],
        changed: Callable[[], object],
        lost: Callable[[], object],
    ) -> None:
        self._connect = connect
        self.token = token
        self._wake = wake
        self._changed = changed
        self._lost = lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lbtwist-store-listen", daemon=True)
        self.received = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def handle(self, payload: str) -> None:
        """
        Act on one payload (messages: wake; registrations: re-read).
        """
        parsed = parse_payload(payload)
        if parsed is None or parsed[1] == self.token:
            return
        self.received += 1
        kind, _, uniques = parsed
        if kind == "m":
            self._wake(uniques)
        else:
            self._changed()

    def _run(self) -> None:
        retry = 0.5
        first = True
        while not self._stop.is_set():
            try:
                raw = self._connect()
            except Exception as e:
                log.warn("notifications: cannot LISTEN ({error}); again in {s} s", error=e, s=retry)
                self._stop.wait(retry)
                retry = min(retry * 2, self.max_retry)
                continue
            try:
                raw.execute(f"LISTEN {CHANNEL}")
                retry = 0.5
                if not first:
                    self._lost()
                first = False
                while not self._stop.is_set():
                    # (psycopg 3.2: notifies() returns after the timeout.)
                    for note in raw.notifies(timeout=self.tick):
                        self.handle(note.payload)
            except Exception as e:
                if not self._stop.is_set():
                    log.warn("notifications: LISTEN connection lost ({error})", error=e)
                    self._stop.wait(retry)
            finally:
                try:
                    raw.close()
                except Exception:  # noqa: S110 - closing a lost connection
                    pass
