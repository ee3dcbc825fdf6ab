# -*- test-case-name: tests.unit.test_store -*-
"""
The commit-group logic every store backend shares.

L{BatchProcessor} turns a group of incoming events into one L{BatchPlan} (new event
rows, job rows, CREAM id mappings, outbox rows) applying the duplicate rule, the
incremental-or-recompute status rule and the generation of gLite events for WMS jobs;
a backend writes the plan in one transaction. L{GroupCommit} queues C{store()} calls
while a commit runs, so that they all share the next transaction.

Nothing here touches the reactor or the clock: arrival times come in with the items.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist.core.errors import AlreadyExists, LBError, TryAgain
from lbtwist.core.events import (
    PRIO_DIRECT,
    PRIO_EXCL,
    PRIO_INTERNAL,
    Event,
    format_event,
    parse_event,
)
from lbtwist.core.states import advance, compute_status
from lbtwist.core.states.status import JobStatus, format_iso
from lbtwist.core.translate import generate_events
from lbtwist.security.identity import same_dn
from lbtwist.store.interface import OutboxEntry, StoreResult

log = Logger()

#: Priority flags of events never relayed.
NO_RELAY = PRIO_DIRECT | PRIO_INTERNAL

#: Default port of a gLite job id without one.
DEFAULT_PORT = 9000

#: Limits used when re-parsing stored lines: they were accepted once, accept them again.
_REPARSE_LIMITS: dict[str, int] = {"max_fields": 1_000_000, "max_size": 1 << 31}

Identity = tuple[str, str, str, int, str, str, str]

#: Relay destinations remembered by L{BatchProcessor.relay_destination}.
_DESTINATIONS_SIZE = 1 << 16
_UNKNOWN = "\0unknown"


def identity(ev: Event) -> Identity:
    """
    The fields that make two events of one job duplicates (design section 4).
    """
    return (ev.type, ev.source, ev.host, ev.date, ev.level, ev.user, ev.seqcode)


def dupkey(ident: Identity) -> int:
    """
    A stable signed 64-bit hash of an event identity, for the duplicate index.
    """
    digest = hashlib.blake2b(repr(ident).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def split_jobid(jobid: str) -> tuple[str, int, str] | None:
    """
    @return: C{(host, port, unique)} of a job id URL, or C{None} if it is not one.
    """
    try:
        parts = urlsplit(jobid)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port, parts.path.lstrip("/")


def cream_key(jobid: str) -> str:
    """
    The mapping key of a CREAM id: its C{CREAM<digits>} part, so that the id as CREAM
    hands it out and the proxy's own form of it both resolve.
    """
    parts = split_jobid(jobid)
    return parts[2] if parts is not None else jobid


def status_from_json(data: dict[str, Any]) -> JobStatus:
    """
    Rebuild a stored status.
    """
    return JobStatus.from_json_dict(data)


def reparse(line: str) -> Event:
    """
    Parse a stored line again.
    """
    return parse_event(line, **_REPARSE_LIMITS)  # type: ignore[arg-type]


@attrs.frozen
class NewEvent:
    """
    An event row to insert.
    """

    event_id: int
    jobid: str
    seqno: int
    arrived: int
    line: str
    event: Event
    dupkey: int


@attrs.frozen
class JobRow:
    """
    A job row to insert or replace: indexed columns plus the status as JSON.
    """

    jobid: str
    owner: str | None
    state: str | None
    jobtype: str | None
    last_update: str | None
    machine: str | None
    nevents: int
    status_json: str


@attrs.frozen
class MappingRow:
    """
    A CREAM id <-> gLite id mapping.
    """

    cream_key: str
    cream_id: str
    glite_id: str


@attrs.frozen
class OutboxRow:
    """
    An event to relay to C{destination} (C{"host:port"}).
    """

    destination: str
    event_id: int


@attrs.define
class BatchPlan:
    """
    Everything one commit group writes, in one transaction.
    """

    events: list[NewEvent] = attrs.Factory(list)
    jobs: list[JobRow] = attrs.Factory(list)
    mappings: list[MappingRow] = attrs.Factory(list)
    outbox: list[OutboxRow] = attrs.Factory(list)


class StoreBackend(Protocol):
    """
    What L{BatchProcessor} needs from a storage backend (called on the writer's thread).
    """

    def max_event_id(self) -> int:
        """
        @return: the largest stored event id, 0 if none.
        """

    def load_job(self, jobid: str) -> tuple[dict[str, Any], int] | None:
        """
        @return: the stored status (JSON dict) and event count of a job, or C{None}.
        """

    def load_lines(self, jobid: str) -> list[tuple[int, str]]:
        """
        @return: C{(seqno, line)} of every stored event of a job.
        """

    def find_identities(self, jobid: str, key: int) -> list[Identity]:
        """
        @return: the identities of the job's stored events with this duplicate key.
        """

    # Optional: C{load_dupkeys(jobid) -> list[int]}, the duplicate keys of every
    # stored event of a job. A backend that has it spares a duplicate lookup per
    # event for jobs loaded from storage.

    def write(self, plan: BatchPlan) -> None:
        """
        Write the plan in one durable transaction, or nothing (raise).
        """

    def translate_error(self, error: Exception) -> LBError | None:
        """
        @return: the L&B error for a backend failure, C{None} if it is unexpected.
        """


@attrs.define
class _JobWork:
    """
    A job touched by the current commit group.
    """

    status: JobStatus
    nevents: int
    committed: int
    new: list[NewEvent] = attrs.Factory(list)
    seen: set[Identity] = attrs.Factory(set)
    #: Duplicate keys of all the job's events (8 bytes each, see L{_key_bytes}),
    #: C{None} when not known: then every event needs a lookup in the backend.
    keys: bytes | None = None
    #: Relay destination, C{""} for a local job, C{None} until computed.
    destination: str | None = None


class BatchProcessor:
    """
    Turns commit groups into plans and keeps a bounded cache of job statuses.

    Statuses are cached only once written: a failed write evicts the touched jobs.

    @ivar reparsed: number of stored lines parsed again to recompute a status.
    @ivar recomputes: number of full status recomputations.
    @ivar lookups: number of duplicate lookups in the backend (the duplicate keys
        of cached jobs' events are known, so most events need none).
    """

    def __init__(
        self,
        backend: StoreBackend,
        *,
        relay: bool,
        local_endpoints: Iterable[tuple[str, int]],
        proxy_host: str,
        cache_size: int = 100_000,
    ) -> None:
        self._backend = backend
        self.relay = relay
        self.local_endpoints = frozenset(local_endpoints)
        self.proxy_host = proxy_host
        # jobid -> (status, event count, duplicate keys of its events or None)
        self._cache: OrderedDict[str, tuple[JobStatus, int, bytes | None]] = OrderedDict()
        self._cache_size = cache_size
        self._next_id = backend.max_event_id() + 1
        self.reparsed = 0
        self.recomputes = 0
        self.lookups = 0
        self._destinations: dict[str, str | None] = {}
        self._destinations_for: frozenset[tuple[str, int]] | None = None

    def relay_destination(self, jobid: str) -> str | None:
        """
        @return: C{"host:port"} to relay a job's events to, or C{None} if it is local.
        """
        if not self.relay:
            return None
        # Asked for every event and every commit notice: remember the answers
        # (bounded), as long as the settings they depend on stay the same.
        if self._destinations_for is not self.local_endpoints:
            self._destinations = {}
            self._destinations_for = self.local_endpoints
        known = self._destinations.get(jobid, _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        destination = self._destination(jobid)
        if len(self._destinations) >= _DESTINATIONS_SIZE:
            self._destinations = {}
        self._destinations[jobid] = destination
        return destination

    def _destination(self, jobid: str) -> str | None:
        parts = split_jobid(jobid)
        if parts is None:
            return None
        host, port, unique = parts
        if unique.startswith("CREAM") or (host, port) in self.local_endpoints:
            return None
        return f"{host}:{port + 1}"

    def process(self, items: list[tuple[str, Event, int]]) -> list[StoreResult | LBError]:
        """
        Store one commit group: C{(line, event, arrived)} items.
        """
        touched: dict[str, _JobWork] = {}
        try:
            plan = BatchPlan()
            outcome: list[tuple[str, int | LBError | None]] = []
            for line, ev, arrived in items:
                work = touched.get(ev.jobid)
                if work is None:
                    work = touched[ev.jobid] = self._load(ev.jobid)
                ident = identity(ev)
                key = dupkey(ident)
                if self._is_duplicate(ev.jobid, work, ident, key):
                    outcome.append((ev.jobid, None))
                    continue
                refused = registration_conflict(work.status, ev)
                if refused is not None:
                    outcome.append((ev.jobid, refused))
                    continue
                seqno = self._add(plan, work, line, ev, arrived, ident, key)
                outcome.append((ev.jobid, seqno))
            for jobid, work in touched.items():
                if work.new:
                    plan.jobs.append(_job_row(jobid, work))
            if plan.events:
                self._backend.write(plan)
        except Exception as e:
            for jobid in touched:
                self._cache.pop(jobid, None)
            error = e if isinstance(e, LBError) else self._backend.translate_error(e)
            if error is None:
                log.failure("unexpected store failure", Failure(e))
                error = TryAgain(f"store failure: {e}")
            return [error] * len(items)
        for jobid, work in touched.items():
            self._remember(jobid, work.status, work.nevents, work.keys)
        # advance() and compute_status() always make new statuses, so the cached
        # one is never changed and can be handed out as is (callers must not change it).
        return [
            seqno
            if isinstance(seqno, LBError)
            else StoreResult(
                duplicate=seqno is None, jobid=jobid, seqno=seqno, status=touched[jobid].status
            )
            for jobid, seqno in outcome
        ]

    def cached(self, jobid: str) -> JobStatus | None:
        """
        @return: the cached status of a job (for tests and the writer thread only).
        """
        entry = self._cache.get(jobid)
        return entry[0] if entry is not None else None

    def _remember(
        self, jobid: str, status: JobStatus, nevents: int, keys: bytes | None = None
    ) -> None:
        self._cache[jobid] = (status, nevents, keys)
        self._cache.move_to_end(jobid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _load(self, jobid: str) -> _JobWork:
        entry = self._cache.get(jobid)
        if entry is not None:
            self._cache.move_to_end(jobid)
            return _JobWork(status=entry[0], nevents=entry[1], committed=entry[1], keys=entry[2])
        stored = self._backend.load_job(jobid)
        if stored is None:
            return _JobWork(status=JobStatus(), nevents=0, committed=0, keys=b"")
        data, nevents = stored
        keys: bytes | None = None
        load_dupkeys = getattr(self._backend, "load_dupkeys", None)
        if load_dupkeys is not None:
            keys = b"".join(_key_bytes(k) for k in load_dupkeys(jobid))
        return _JobWork(
            status=status_from_json(data), nevents=nevents, committed=nevents, keys=keys
        )

    def _is_duplicate(self, jobid: str, work: _JobWork, ident: Identity, key: int) -> bool:
        if ident in work.seen:
            return True
        if work.committed == 0:
            return False
        if work.keys is not None and not _has_key(work.keys, _key_bytes(key)):
            return False
        self.lookups += 1
        return ident in self._backend.find_identities(jobid, key)

    def _add(
        self,
        plan: BatchPlan,
        work: _JobWork,
        line: str,
        ev: Event,
        arrived: int,
        ident: Identity,
        key: int,
    ) -> int:
        work.nevents += 1
        seqno = work.nevents
        new = NewEvent(
            event_id=self._next_id,
            jobid=ev.jobid,
            seqno=seqno,
            arrived=arrived,
            line=line,
            event=ev,
            dupkey=key,
        )
        self._next_id += 1
        plan.events.append(new)
        work.new.append(new)
        work.seen.add(ident)
        if work.keys is not None:
            work.keys += _key_bytes(key)
        if work.destination is None:
            work.destination = self.relay_destination(ev.jobid) or ""
        if work.destination and not ev.priority & NO_RELAY:
            plan.outbox.append(OutboxRow(work.destination, new.event_id))
        if ev.type == "CREAMAccepted" and not ev.generated:
            self._map(plan, ev)
        self._apply(plan, work, ev, seqno, arrived)
        return seqno

    def _map(self, plan: BatchPlan, ev: Event) -> None:
        parts = split_jobid(ev.jobid)
        local = ev.get("local_jobid")
        if parts is None or parts[2].startswith("CREAM") or not local:
            return
        plan.mappings.append(MappingRow(cream_key(local), local, ev.jobid))

    def _apply(self, plan: BatchPlan, work: _JobWork, ev: Event, seqno: int, arrived: int) -> None:
        # Only a proxy (the relaying role) generates gLite events: a server receives
        # the proxy's, and must not add its own.
        trigger = self.relay and not ev.generated and ev.type.startswith("CREAM")
        generated: list[Event] = []
        try:
            before = work.status
            after = advance(work.status, ev, seqno)
            if after is None:
                after = self._recompute(ev.jobid, work)
            work.status = after
            if trigger:
                generated = generate_events(ev, before, after, proxy_host=self.proxy_host)
        except Exception:
            # The event is kept whatever the state machines make of it: CREAM's
            # events must not be lost.
            log.failure("status of {jobid} not updated by {type}", jobid=ev.jobid, type=ev.type)
        for gen in generated:
            ident = identity(gen)
            if ident not in work.seen:
                self._add(plan, work, format_event(gen), gen, arrived, ident, dupkey(ident))

    def _recompute(self, jobid: str, work: _JobWork) -> JobStatus:
        self.recomputes += 1
        pairs: list[tuple[Event, int]] = []
        if work.committed:
            for seqno, line in self._backend.load_lines(jobid):
                if seqno > work.committed:
                    continue
                self.reparsed += 1
                try:
                    pairs.append((reparse(line), seqno))
                except LBError:
                    log.warn("stored event {seqno} of {jobid} unreadable", seqno=seqno, jobid=jobid)
        pairs.extend((new.event, new.seqno) for new in work.new)
        return compute_status(pairs)


def registration_conflict(status: JobStatus, ev: Event) -> AlreadyExists | None:
    """
    A RegJob that a registered job (one with an owner) refuses, after the
    duplicate check: one with the EXCL priority flag, or one naming another
    owner (a later RegJob never changes the owner). C{None}: go ahead.
    """
    if ev.type != "RegJob" or not status.owner:
        return None
    if ev.priority & PRIO_EXCL:
        return AlreadyExists(f"job {ev.jobid} is already registered (exclusive registration)")
    if not ev.user or not same_dn(status.owner, ev.user):
        return AlreadyExists(f"job {ev.jobid} is already registered to another owner")
    return None


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(8, "big", signed=True)


def _has_key(keys: bytes, key: bytes) -> bool:
    """
    Whether C{keys}, a concatenation of 8-byte keys, holds C{key}.
    """
    at = keys.find(key)
    while at >= 0:
        if at % 8 == 0:
            return True
        at = keys.find(key, at + 1)
    return False


def _job_row(jobid: str, work: _JobWork) -> JobRow:
    status = work.status
    updated = status.lastUpdateTime
    return JobRow(
        jobid=jobid,
        owner=_text(status.owner),
        state=_text(status.state),
        jobtype=_text(status.jobtype),
        last_update=None if updated is None else format_iso(updated),
        machine=_text(status.machine),
        nevents=work.nevents,
        status_json=status.to_json(),
    )


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]


def run_now(work: Callable[[], Any]) -> Deferred[Any]:
    """
    A synchronous runner: calls C{work} at once (memory store, tests).
    """
    return maybeDeferred(work)


class GroupCommit:
    """
    Commit groups without timers: a commit starts at once when none is running;
    items submitted while one runs all go into the next one.

    @ivar commits: number of commit groups started.
    """

    def __init__(
        self,
        clock: Any,
        process: Callable[[list[tuple[str, Event, int]]], list[StoreResult | LBError]],
        runner: Runner,
    ) -> None:
        self._clock = clock
        self._process = process
        self._runner = runner
        self._queue: list[tuple[list[tuple[str, Event, int]], Deferred[list[Any]]]] = []
        self._running = False
        self._idle: list[Deferred[None]] = []
        self.commits = 0

    def submit(self, items: list[tuple[str, Event]]) -> Deferred[list[StoreResult | LBError]]:
        """
        Queue items, stamped with their arrival time, for the next commit group.
        """
        now = int(self._clock.seconds() * 1_000_000)
        d: Deferred[list[Any]] = Deferred()
        if not items:
            d.callback([])
            return d
        self._queue.append(([(line, ev, now) for line, ev in items], d))
        if not self._running:
            self._next()
        return d

    def when_idle(self) -> Deferred[None]:
        """
        @return: a Deferred fired once no commit is running or queued.
        """
        d: Deferred[None] = Deferred()
        if self._running or self._queue:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def _next(self) -> None:
        if not self._queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        group, self._queue = self._queue, []
        items = [item for part, _ in group for item in part]
        self._running = True
        self.commits += 1
        result = self._runner(lambda: self._process(items))

        def done(results: list[Any]) -> None:
            start = 0
            for part, d in group:
                d.callback(results[start : start + len(part)])
                start += len(part)

        def failed(failure: Failure) -> None:
            log.failure("commit group failed", failure)
            for _, d in group:
                d.errback(TryAgain("store failure"))

        def finished(_: object) -> None:
            self._running = False
            self._next()

        result.addCallbacks(done, failed)
        result.addBoth(finished)


# -- relay support: commit notifications and outbox bookkeeping ------------------

CommitListener = Callable[[set[str]], object]


class CommitNotifier:
    """
    Tells the relay which destinations a commit may have given new outbox rows.
    """

    def __init__(self, processor: BatchProcessor) -> None:
        self._processor = processor
        self._listeners: list[CommitListener] = []

    def add(self, listener: CommitListener) -> None:
        """
        Call C{listener(destinations)} after every commit with relayed events.
        """
        self._listeners.append(listener)

    def notify(self, results: list[Any]) -> list[Any]:
        """
        A callback on C{store()}'s Deferred: passes C{results} through.
        """
        if not self._listeners:
            return results
        destinations: set[str] = set()
        seen: set[str] = set()
        for result in results:
            if isinstance(result, StoreResult) and not result.duplicate:
                if result.jobid in seen:
                    continue
                seen.add(result.jobid)
                dest = self._processor.relay_destination(result.jobid)
                if dest:
                    destinations.add(dest)
        if destinations:
            for listener in list(self._listeners):
                try:
                    listener(destinations)
                except Exception:
                    log.failure("commit listener failed")
        return results


@attrs.frozen
class RejectRow:
    """
    An outbox row to move to the rejected table.
    """

    entry: OutboxEntry
    major: int
    minor: int
    reason: str
    rejected_at: int


class OutboxWriter:
    """
    Group commit of outbox acknowledgements and rejections: one transaction runs
    at a time; everything asked for while it runs goes into the next one.

    @ivar transactions: number of transactions started.
    """

    def __init__(
        self,
        clock: Any,
        runner: Runner,
        apply: Callable[[list[int], list[RejectRow]], None],
    ) -> None:
        self._clock = clock
        self._runner = runner
        self._apply = apply
        self._acks: list[int] = []
        self._rejects: list[RejectRow] = []
        self._waiting: list[Deferred[None]] = []
        self._idle: list[Deferred[None]] = []
        self._running = False
        self.transactions = 0

    def ack(self, ids: Iterable[int]) -> Deferred[None]:
        """
        Remove rows (delivered).
        """
        self._acks.extend(ids)
        return self._enqueue()

    def reject(self, entry: OutboxEntry, major: int, minor: int, reason: str) -> Deferred[None]:
        """
        Move a row to the rejected table, stamped with the current time.
        """
        now = int(self._clock.seconds() * 1_000_000)
        self._rejects.append(RejectRow(entry, major, minor, reason, now))
        return self._enqueue()

    def when_idle(self) -> Deferred[None]:
        """
        @return: a Deferred fired once no update is running or queued.
        """
        d: Deferred[None] = Deferred()
        if self._running or self._waiting:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def _enqueue(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if not self._running:
            self._next()
        return d

    def _next(self) -> None:
        if not self._waiting:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        acks, self._acks = self._acks, []
        rejects, self._rejects = self._rejects, []
        waiting, self._waiting = self._waiting, []
        self._running = True
        self.transactions += 1
        result = self._runner(lambda: self._apply(acks, rejects))

        def done(_: object) -> None:
            for d in waiting:
                d.callback(None)

        def failed(failure: Failure) -> None:
            log.failure("outbox update failed", failure)
            for d in waiting:
                d.errback(TryAgain("outbox update failed"))

        def finished(_: object) -> None:
            self._running = False
            self._next()

        result.addCallbacks(done, failed)
        result.addBoth(finished)


class GroupedWrites:
    """
    The write side that both stores share: events through L{GroupCommit} (then the commit
    listeners), outbox acknowledgements and rejections through L{OutboxWriter}; nothing once
    the store is closed.

    Classes using it provide C{_closed}, C{_commit}, C{_notifier} and C{_outbox}.
    """

    _closed: bool
    _commit: GroupCommit
    _notifier: CommitNotifier
    _outbox: OutboxWriter

    def store(self, items: list[tuple[str, Event]]) -> Deferred[list[StoreResult | LBError]]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._commit.submit(items).addCallback(self._notifier.notify)

    def outbox_ack(self, ids: list[int]) -> Deferred[None]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._outbox.ack(ids)

    def reject(self, entry: OutboxEntry, major: int, minor: int, reason: str) -> Deferred[None]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._outbox.reject(entry, major, minor, reason)
