# -*- test-case-name: tests.unit.test_notif_store -*-
"""
Notification registrations and their durable message queues, for both stores.

The tables: C{notif_regs} (one row per registration: owner, conditions and
flags as JSON, validity, queue counters), C{notif_jobs} (the job uniques of a
registration's job id conditions: the index by job) and C{notif_messages}
(C{(registration, seq)} -> kind, job, size, body). An in-memory
L{RegistrationIndex} kept in step with C{notif_regs} (loaded when the store
opens, changed on the writer thread with the table) selects the candidates of
each new status.

Messages are written in the same transaction as the event whose new status
they report: L{NotifMatcher} runs in L{lbtwist.store.batch.BatchProcessor}'s
plan (the C{notify} hook), its rows go into L{BatchPlan.notifications}, and the
backend's C{write} assigns their sequence numbers, trims the queues to their
bounds (a gap marker in place of what was dropped) and stores them with the
events. Read rights are checked per message by the C{rights} function the
service gives (L{Notifications.configure}); the store knows no policy.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from lbtwist.core.dn import normalize_dn, same_dn
from lbtwist.core.jobid import unique_of
from lbtwist.core.notif import (
    QueueBounds,
    Registration,
    RegistrationIndex,
    gap_message,
    matches,
    status_body,
    status_head,
    trim,
)
from lbtwist.core.states.status import JobStatus

log = Logger()

_T = TypeVar("_T")

#: What a registrant may see of a job: all of it, an anonymized status, or nothing.
Rights = Literal["full", "anonymized"] | None
RightsCheck = Callable[[Registration, JobStatus], Rights]

#: Default most jobs a bootstrap (C{-B}) looks at (the most recently updated first).
BOOTSTRAP_MAX_JOBS = 10_000


def owner_rights(reg: Registration, status: JobStatus) -> Rights:
    """
    The rights check without a policy: a registrant reads the jobs it owns.
    """
    return "full" if status.owner and same_dn(status.owner, reg.owner) else None


class NotifRow(NamedTuple):
    """
    A message to queue (its sequence number is given when written).
    """

    reg: str
    jobid: str
    body: bytes


class Matched(NamedTuple):
    """
    A message the matcher found for a new status, its body not made yet: the
    commit makes it (L{resolve}), once per status and view for all the
    registrations it matched.

    @ivar anonymized: the registrant may see only the anonymized status.
    @ivar jdl: the registration has the C{jdl} flag (the body keeps the JDL).
    """

    reg: str
    jobid: str
    status: JobStatus
    anonymized: bool
    jdl: bool = True


def resolve(matched: Iterable[Matched | NotifRow]) -> list[NotifRow]:
    """
    The messages to queue of matched statuses: each status serialised once per
    form (L{JobStatus.to_compact_json}, with the JDL for the registrations with
    the C{jdl} flag, without it for the others), the bodies of its
    registrations made of that text (one object per status and view). A status
    is never changed once its event made it (L{lbtwist.core.states.advance_key}
    makes a new one), so what is serialised at the commit is the job's status
    right after that event.
    """
    heads: dict[tuple[str, bool], bytes] = {}
    # One body object per status and view, shared by its rows (an "all jobs"
    # registration's messages of a commit hold no copies).
    bodies: dict[tuple[int, bool, bool], bytes] = {}
    texts: dict[tuple[int, bool], bytes] = {}
    out = []
    for m in matched:
        if m.__class__ is NotifRow:
            out.append(m)  # type: ignore[arg-type]
            continue
        reg, jobid, status, anonymized, jdl = m  # type: ignore[misc]
        view = (id(status), anonymized, jdl)
        body = bodies.get(view)
        if body is None:
            text = texts.get((id(status), jdl))
            if text is None:
                text = texts[(id(status), jdl)] = status.to_compact_json(jdl)
            head = heads.get((jobid, anonymized))
            if head is None:
                head = heads[(jobid, anonymized)] = status_head(jobid, anonymized)
            body = bodies[view] = status_body(head, status.event_count, text)
        out.append(NotifRow(reg, jobid, body))
    return out


@attrs.frozen
class RegState:
    """
    A registration and its queue's counters.

    @ivar last_seq: the sequence number of the newest message (0: none yet).
    @ivar acked: messages up to this sequence number are acknowledged.
    @ivar queued: status messages waiting; C{size}: their bytes.
    @ivar dropped: messages dropped by the queue bounds since it was made.
    """

    reg: Registration
    last_seq: int = 0
    acked: int = 0
    queued: int = 0
    size: int = 0
    dropped: int = 0


@attrs.frozen
class NotifTotals:
    """
    The store's notification totals (the metrics' gauges).

    @ivar registrations: registrations held.
    @ivar queued: messages waiting, over every registration.
    @ivar size: their bytes.
    @ivar dropped: messages dropped by the queue bounds, over the registrations held.
    @ivar expired: registrations held past their validity (the sweep removes them).
    """

    registrations: int = 0
    queued: int = 0
    size: int = 0
    dropped: int = 0
    expired: int = 0


@attrs.frozen
class Message:
    """
    A queued message: its sequence number, kind (C{status} or C{gap}) and body
    (a JSON object without its C{seq}: L{lbtwist.core.notif.with_seq}).
    """

    seq: int
    kind: str
    body: bytes


# -- SQLite -----------------------------------------------------------------------

#: Most registrations read by one C{IN (...)} query (SQLite allows 32766 parameters).
_IN_CHUNK = 500


def _selector(reg: Registration) -> str:
    if reg.conditions.jobids:
        return "job"
    if reg.conditions.owner is not None:
        return "owner"
    return "all"


_REG_COLUMNS = (
    "uniq, owner, fqans, spec, valid_until, created, last_seq, acked, queued, size, dropped"
)


def _reg_state(row: tuple[Any, ...]) -> RegState:
    uniq, owner, fqans, spec, until, created, last_seq, acked, queued, size, dropped = row
    reg = Registration.from_spec(uniq, owner, json.loads(fqans), spec, until, created)
    return RegState(reg, last_seq, acked, queued, size, dropped)


class SQLNotifTables:
    """
    The notification tables of a SQLite store. C{conn} is the writer's
    connection (writer thread only), C{reader} the reader's.
    """

    def __init__(self, conn: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.conn = conn
        self.reader = reader

    # writer side

    def load(self) -> list[Registration]:
        rows = self.conn.execute(f"SELECT {_REG_COLUMNS} FROM notif_regs").fetchall()
        return [_reg_state(r).reg for r in rows]

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _put(self, conn: sqlite3.Connection, reg: Registration, new: bool) -> None:
        values = (
            reg.owner,
            normalize_dn(reg.owner),
            json.dumps(list(reg.fqans)),
            reg.spec_json(),
            _selector(reg),
            reg.valid_until,
        )
        if new:
            conn.execute(
                "INSERT INTO notif_regs (owner, owner_norm, fqans, spec, selector,"
                " valid_until, created, uniq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, reg.created, reg.unique),
            )
        else:
            conn.execute(
                "UPDATE notif_regs SET owner = ?, owner_norm = ?, fqans = ?, spec = ?,"
                " selector = ?, valid_until = ? WHERE uniq = ?",
                (*values, reg.unique),
            )
            conn.execute("DELETE FROM notif_jobs WHERE uniq = ?", (reg.unique,))
        conn.executemany(
            "INSERT OR IGNORE INTO notif_jobs (job, uniq) VALUES (?, ?)",
            [(unique_of(j), reg.unique) for j in reg.conditions.jobids],
        )

    def create(self, reg: Registration, rows: list[NotifRow], bounds: QueueBounds) -> None:
        def work(conn: sqlite3.Connection) -> None:
            self._put(conn, reg, True)
            self.write_messages(rows, bounds)

        self._transaction(work)

    def update(self, reg: Registration) -> None:
        self._transaction(lambda conn: self._put(conn, reg, False))

    def drop(self, uniques: list[str]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            keys = [(u,) for u in uniques]
            conn.executemany("DELETE FROM notif_messages WHERE reg = ?", keys)
            conn.executemany("DELETE FROM notif_jobs WHERE uniq = ?", keys)
            conn.executemany("DELETE FROM notif_regs WHERE uniq = ?", keys)

        self._transaction(work)

    def ack(self, unique: str, upto: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM notif_messages"
                " WHERE reg = ? AND seq <= ? AND kind = 'status'",
                (unique, upto),
            ).fetchone()
            conn.execute("DELETE FROM notif_messages WHERE reg = ? AND seq <= ?", (unique, upto))
            conn.execute(
                "UPDATE notif_regs SET acked = MAX(acked, ?), queued = MAX(queued - ?, 0),"
                " size = MAX(size - ?, 0) WHERE uniq = ?",
                (upto, row[0], row[1], unique),
            )

        self._transaction(work)

    def expired(self, now: int, limit: int) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT uniq FROM notif_regs WHERE valid_until <= ? LIMIT ?", (now, limit)
            )
        ]

    def bootstrap_jobs(self, reg: Registration, limit: int) -> Iterator[tuple[str, JobStatus]]:
        conn = self.conn
        if reg.conditions.jobids:
            rows: Iterable[tuple[str, str]] = [
                row
                for j in reg.conditions.jobids
                for row in conn.execute(
                    "SELECT jobid, status FROM jobs WHERE uniq = ?", (unique_of(j),)
                )
            ][:limit]
        elif reg.conditions.owner is not None:
            rows = conn.execute(
                "SELECT jobid, status FROM jobs WHERE owner_norm = ?"
                " ORDER BY list_time DESC LIMIT ?",
                (normalize_dn(reg.conditions.owner), limit),
            )
        else:
            rows = conn.execute(
                "SELECT jobid, status FROM jobs ORDER BY list_time DESC LIMIT ?", (limit,)
            )
        for jobid, text in rows:
            yield jobid, JobStatus.from_json_dict(json.loads(text))

    def write_messages(self, rows: list[NotifRow], bounds: QueueBounds) -> None:
        """
        Queue messages (in the caller's transaction): sequence numbers after the
        registration's last, then the queue trimmed to its bounds, the dropped
        messages replaced by one gap marker at the place of the last of them.
        The counters of all the registrations are read in one query per 500,
        the messages inserted and the counters written in one statement each.
        """
        if not rows:
            return
        conn = self.conn
        grouped: dict[str, list[NotifRow]] = {}
        for row in rows:
            group = grouped.get(row.reg)
            if group is None:
                grouped[row.reg] = [row]
            else:
                group.append(row)
        states: dict[str, tuple[int, int, int, int]] = {}
        uniques = list(grouped)
        for at in range(0, len(uniques), _IN_CHUNK):
            chunk = uniques[at : at + _IN_CHUNK]
            for uniq, *state in conn.execute(
                "SELECT uniq, last_seq, queued, size, dropped FROM notif_regs"
                f" WHERE uniq IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                states[uniq] = tuple(state)  # type: ignore[assignment]
        inserts = []
        updates = []
        over = []
        max_messages, max_bytes = bounds.max_messages, bounds.max_bytes
        for reg, group in grouped.items():
            state = states.get(reg)
            if state is None:
                continue  # dropped meanwhile
            last_seq, queued, size, dropped = state
            for row in group:
                last_seq += 1
                length = len(row.body)
                inserts.append((reg, last_seq, row.jobid, length, row.body))
                size += length
            queued += len(group)
            if queued > max_messages or size > max_bytes:
                over.append((reg, last_seq, queued, size, dropped))
            else:
                updates.append((last_seq, queued, size, dropped, reg))
        conn.executemany(
            "INSERT INTO notif_messages (reg, seq, kind, jobid, size, body)"
            " VALUES (?, ?, 'status', ?, ?, ?)",
            inserts,
        )
        for reg, last_seq, queued, size, dropped in over:
            cut = trim(queued, size, self._oldest(reg), bounds)
            if cut is not None:
                queued -= cut.count
                size -= cut.size
                dropped += cut.count
                self._drop_head(reg, cut.upto, cut.count)
            updates.append((last_seq, queued, size, dropped, reg))
        conn.executemany(
            "UPDATE notif_regs SET last_seq = ?, queued = ?, size = ?, dropped = ? WHERE uniq = ?",
            updates,
        )

    def _oldest(self, reg: str) -> Iterator[tuple[int, int]]:
        # Pages, so that no cursor stays open while the head is deleted.
        after = -1
        while True:
            page = self.conn.execute(
                "SELECT seq, size FROM notif_messages WHERE reg = ? AND kind = 'status'"
                " AND seq > ? ORDER BY seq LIMIT 64",
                (reg, after),
            ).fetchall()
            if not page:
                return
            yield from page
            after = page[-1][0]

    def _drop_head(self, reg: str, upto: int, count: int) -> None:
        conn = self.conn
        gaps = conn.execute(
            "SELECT seq, body FROM notif_messages WHERE reg = ? AND seq <= ? AND kind = 'gap'",
            (reg, upto),
        ).fetchall()
        for _, body in gaps:
            count += int(json.loads(body)["dropped"])
        conn.execute("DELETE FROM notif_messages WHERE reg = ? AND seq <= ?", (reg, upto))
        body = gap_message(count)
        conn.execute(
            "INSERT INTO notif_messages (reg, seq, kind, jobid, size, body)"
            " VALUES (?, ?, 'gap', '', ?, ?)",
            (reg, upto, len(body), body),
        )

    # reader side

    def get(self, unique: str) -> RegState | None:
        row = self.reader.execute(
            f"SELECT {_REG_COLUMNS} FROM notif_regs WHERE uniq = ?", (unique,)
        ).fetchone()
        return None if row is None else _reg_state(row)

    def of_owner(self, owner: str) -> list[RegState]:
        rows = self.reader.execute(
            f"SELECT {_REG_COLUMNS} FROM notif_regs WHERE owner_norm = ? ORDER BY created, uniq",
            (normalize_dn(owner),),
        ).fetchall()
        return [_reg_state(r) for r in rows]

    def totals(self, now: int) -> NotifTotals:
        """
        One aggregate over the registrations (the metrics, once per refresh).
        """
        row = self.reader.execute(
            "SELECT COUNT(*), COALESCE(SUM(queued), 0), COALESCE(SUM(size), 0),"
            " COALESCE(SUM(dropped), 0),"
            # CASE, not a boolean sum: the PostgreSQL tables share this code.
            " COALESCE(SUM(CASE WHEN valid_until <= ? THEN 1 ELSE 0 END), 0) FROM notif_regs",
            (now,),
        ).fetchone()
        return NotifTotals(*(int(v) for v in row))

    def messages(self, unique: str, after: int, limit: int) -> list[Message]:
        rows = self.reader.execute(
            "SELECT seq, kind, body FROM notif_messages WHERE reg = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (unique, after, limit),
        ).fetchall()
        return [Message(seq, kind, bytes(body)) for seq, kind, body in rows]


# -- memory -----------------------------------------------------------------------


@attrs.define
class _MemQueue:
    state: RegState
    messages: deque[tuple[int, str, str, bytes]] = attrs.Factory(deque)


class MemoryNotifTables:
    """
    The notification tables of the memory store (L{lbtwist.testing.MemoryStore}).
    """

    def __init__(self) -> None:
        self.regs: dict[str, _MemQueue] = {}

    def load(self) -> list[Registration]:
        return [q.state.reg for q in self.regs.values()]

    def create(self, reg: Registration, rows: list[NotifRow], bounds: QueueBounds) -> None:
        self.regs[reg.unique] = _MemQueue(RegState(reg))
        self.write_messages(rows, bounds)

    def update(self, reg: Registration) -> None:
        queue = self.regs.get(reg.unique)
        if queue is not None:
            queue.state = attrs.evolve(queue.state, reg=reg)

    def drop(self, uniques: list[str]) -> None:
        for unique in uniques:
            self.regs.pop(unique, None)

    def ack(self, unique: str, upto: int) -> None:
        queue = self.regs.get(unique)
        if queue is None:
            return
        state = queue.state
        count = size = 0
        while queue.messages and queue.messages[0][0] <= upto:
            _, kind, _, body = queue.messages.popleft()
            if kind == "status":
                count += 1
                size += len(body)
        queue.state = attrs.evolve(
            state,
            acked=max(state.acked, upto),
            queued=state.queued - count,
            size=state.size - size,
        )

    def expired(self, now: int, limit: int) -> list[str]:
        return [u for u, q in self.regs.items() if q.state.reg.valid_until <= now][:limit]

    def write_messages(self, rows: list[NotifRow], bounds: QueueBounds) -> None:
        for row in rows:
            queue = self.regs.get(row.reg)
            if queue is None:
                continue
            state = queue.state
            seq = state.last_seq + 1
            queue.messages.append((seq, "status", row.jobid, row.body))
            queued, size, dropped = state.queued + 1, state.size + len(row.body), state.dropped
            oldest = ((m[0], len(m[3])) for m in queue.messages if m[1] == "status")
            cut = trim(queued, size, oldest, bounds)
            if cut is not None:
                queued -= cut.count
                size -= cut.size
                dropped += cut.count
                gap = cut.count
                while queue.messages and queue.messages[0][0] <= cut.upto:
                    old = queue.messages.popleft()
                    if old[1] == "gap":
                        gap += int(json.loads(old[3])["dropped"])
                queue.messages.appendleft((cut.upto, "gap", "", gap_message(gap)))
            queue.state = attrs.evolve(
                state, last_seq=seq, queued=queued, size=size, dropped=dropped
            )

    def get(self, unique: str) -> RegState | None:
        queue = self.regs.get(unique)
        return None if queue is None else queue.state

    def of_owner(self, owner: str) -> list[RegState]:
        return sorted(
            (q.state for q in self.regs.values() if same_dn(q.state.reg.owner, owner)),
            key=lambda s: (s.reg.created, s.reg.unique),
        )

    def totals(self, now: int) -> NotifTotals:
        states = [q.state for q in self.regs.values()]
        return NotifTotals(
            len(states),
            sum(st.queued for st in states),
            sum(st.size for st in states),
            sum(st.dropped for st in states),
            sum(1 for st in states if st.reg.expired(now)),
        )

    def messages(self, unique: str, after: int, limit: int) -> list[Message]:
        queue = self.regs.get(unique)
        if queue is None:
            return []
        out = []
        for seq, kind, _, body in queue.messages:
            if seq > after:
                out.append(Message(seq, kind, body))
                if len(out) >= limit:
                    break
        return out

    def bootstrap_jobs(self, reg: Registration, limit: int) -> Iterator[tuple[str, JobStatus]]:
        raise NotImplementedError  # the memory store gives its own (see Notifications)


# -- matching and the facade ------------------------------------------------------


class NotifMatcher:
    """
    The C{notify} hook of L{lbtwist.store.batch.BatchProcessor}: the messages a
    job's new status gives (writer thread).

    @ivar matched: messages made since the store opened.
    """

    def __init__(self, index: RegistrationIndex, lock: threading.Lock) -> None:
        self.index = index
        self.lock = lock
        self.rights: RightsCheck = owner_rights
        self.matched = 0

    def __call__(
        self, jobid: str, before: JobStatus | None, after: JobStatus, arrived: int
    ) -> list[Matched]:
        index = self.index
        if not index.by_job and not index.by_owner and not index.all_jobs:
            return []
        with self.lock:
            candidates = index.candidates(jobid, after.owner)
        if not candidates:
            return []
        return self.match(candidates, jobid, before, after, arrived / 1_000_000)

    def match(
        self,
        candidates: Iterable[Registration],
        jobid: str,
        before: JobStatus | None,
        after: JobStatus,
        now: float,
    ) -> list[Matched]:
        """
        The registrations a new status is notified to (conditions, flags and
        the registrant's read rights), its message bodies not made yet (L{resolve}).
        """
        found = []
        rights_of = self.rights
        for reg in candidates:
            try:
                if not matches(reg, before, after, jobid, now):
                    continue
                rights = rights_of(reg, after)
                if rights is None:
                    continue
                found.append(
                    Matched(reg.unique, jobid, after, rights == "anonymized", reg.flags.jdl)
                )
            except Exception:
                log.failure("notification {reg} of {jobid} failed", reg=reg.unique, jobid=jobid)
        self.matched += len(found)
        return found

    def messages(
        self,
        candidates: Iterable[Registration],
        jobid: str,
        before: JobStatus | None,
        after: JobStatus,
        now: float,
    ) -> list[NotifRow]:
        """
        L{match} with the bodies made (a bootstrap's messages).
        """
        return resolve(self.match(candidates, jobid, before, after, now))


Tables = SQLNotifTables | MemoryNotifTables
Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]


class Notifications:
    """
    A store's notification side, on the reactor thread: every method returns a
    Deferred. Writes run on the store's writer (so they are ordered with the
    commit groups, and the index changes with the table), reads on its reader.

    @param tables: L{SQLNotifTables} or L{MemoryNotifTables}.
    @param wake: called on the reactor thread with the registrations that got
        messages, after their commit (L{add_listener}).
    """

    def __init__(
        self,
        tables: Tables,
        *,
        writer: Runner,
        reader: Runner,
        call_from_thread: Callable[..., object] | None = None,
        jobs: Callable[[Registration, int], Iterable[tuple[str, JobStatus]]] | None = None,
    ) -> None:
        self.tables = tables
        self._writer = writer
        self._reader = reader
        self._call_from_thread = call_from_thread
        self._jobs = jobs or tables.bootstrap_jobs
        self.lock = threading.Lock()
        self.index = RegistrationIndex()
        self.matcher = NotifMatcher(self.index, self.lock)
        self.bounds = QueueBounds()
        self.bootstrap_max = BOOTSTRAP_MAX_JOBS
        self._listeners: list[Callable[[set[str]], object]] = []
        for reg in tables.load():
            self.index.add(reg)

    def configure(
        self,
        *,
        rights: RightsCheck | None = None,
        bounds: QueueBounds | None = None,
        bootstrap_max: int | None = None,
    ) -> None:
        """
        Set the read-rights check (default: owners only), the queue bounds and
        the most jobs a bootstrap looks at.
        """
        if rights is not None:
            self.matcher.rights = rights
        if bounds is not None:
            self.bounds = bounds
        if bootstrap_max is not None:
            if bootstrap_max < 1:
                raise ValueError("bootstrap_max must be positive")
            self.bootstrap_max = bootstrap_max

    def add_listener(self, listener: Callable[[set[str]], object]) -> None:
        """
        Call C{listener(registration uniques)} after each commit that queued messages.
        """
        self._listeners.append(listener)

    # called by the backends, on the writer thread

    def write_messages(self, rows: list[Matched | NotifRow]) -> None:
        """
        Queue the messages of a commit (in its transaction): the matcher's
        (L{BatchPlan.notifications}), their bodies made now (L{resolve}).
        """
        self.tables.write_messages(resolve(rows), self.bounds)

    def committed(self, rows: list[Matched | NotifRow]) -> None:
        """
        Messages were committed: wake their listeners (on the reactor thread).
        """
        if not rows or not self._listeners:
            return
        regs = {r.reg for r in rows}
        if self._call_from_thread is not None:
            self._call_from_thread(self._wake, regs)
        else:
            self._wake(regs)

    def _wake(self, regs: set[str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(regs)
            except Exception:
                log.failure("notification listener failed")

    # the interface

    def count_of(self, owner: str) -> int:
        """
        @return: how many registrations C{owner} holds.
        """
        with self.lock:
            return self.index.count_of(owner)

    def registration(self, unique: str) -> Registration | None:
        """
        @return: a registration as the index has it (no store trip).
        """
        with self.lock:
            return self.index.get(unique)

    def create(self, reg: Registration, now: float) -> Deferred[RegState | None]:
        """
        Add a registration; with its C{bootstrap} flag the current state of every
        matching job (at most L{bootstrap_max} jobs looked at, the most recently
        updated first) is queued at once.
        """

        def work() -> None:
            rows: list[NotifRow] = []
            if reg.flags.bootstrap:
                for jobid, status in self._jobs(reg, self.bootstrap_max):
                    rows.extend(self.matcher.messages([reg], jobid, None, status, now))
            self.tables.create(reg, rows, self.bounds)
            with self.lock:
                self.index.add(reg)

        return self._writer(work).addCallback(lambda _: self.get(reg.unique))

    def update(self, reg: Registration) -> Deferred[RegState | None]:
        """
        Change a registration's conditions, flags, owner or validity.
        """

        def work() -> None:
            with self.lock:
                if reg.unique not in self.index:
                    return
            self.tables.update(reg)
            with self.lock:
                self.index.add(reg)

        return self._writer(work).addCallback(lambda _: self.get(reg.unique))

    def drop(self, uniques: list[str]) -> Deferred[None]:
        """
        Remove registrations and their messages.
        """

        def work() -> None:
            self.tables.drop(uniques)
            with self.lock:
                for unique in uniques:
                    self.index.remove(unique)

        return self._writer(work)

    def ack(self, unique: str, upto: int) -> Deferred[None]:
        """
        Messages up to C{upto} were read: delete them.
        """
        return self._writer(lambda: self.tables.ack(unique, upto))

    def sweep(self, now: float, limit: int) -> Deferred[list[str]]:
        """
        Remove at most C{limit} registrations expired at C{now}, with their messages.

        @return: the uniques removed.
        """

        def work() -> list[str]:
            gone = self.tables.expired(int(now), limit)
            if gone:
                self.tables.drop(gone)
                with self.lock:
                    for unique in gone:
                        self.index.remove(unique)
            return gone

        return self._writer(work)

    def get(self, unique: str) -> Deferred[RegState | None]:
        return self._reader(lambda: self.tables.get(unique))

    def of_owner(self, owner: str) -> Deferred[list[RegState]]:
        return self._reader(lambda: self.tables.of_owner(owner))

    def messages(self, unique: str, after: int, limit: int) -> Deferred[list[Message]]:
        return self._reader(lambda: self.tables.messages(unique, after, limit))

    def totals(self, now: float) -> Deferred[NotifTotals]:
        """
        The registrations and queued messages (L{NotifTotals}) at C{now}, on the reader.
        """
        return self._reader(lambda: self.tables.totals(int(now)))


def memory_reader(work: Callable[[], _T]) -> Deferred[_T]:
    """
    The memory store's reader: at once.
    """
    return succeed(work())
