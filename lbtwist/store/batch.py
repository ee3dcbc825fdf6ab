# -*- test-case-name: tests.unit.test_store,tests.unit.test_groupcommit -*-
"""
The commit-group logic every store backend shares.

L{BatchProcessor} turns a group of incoming events into one L{BatchPlan} (new event
rows, job rows, CREAM id mappings, outbox rows) applying the duplicate rule and the
incremental-or-recompute status rule; a backend writes the plan in one transaction
(a new kind of row written with a group's events is one more L{BatchPlan} list that
each backend's C{write} handles). The store knows no role: which events are relayed
where, and which events a state change generates, is the L{RelayPolicy} it is given
(a proxy's; a server's store has none). L{GroupCommit} queues C{store()} calls
while a commit runs, so that they all share the next transaction.

Late events (sorting before the last one folded into a job's status) do not make the
job's status a fold of all its events: every L{CHECKPOINT_EVERY} events in ordering-key
order the status is kept as a checkpoint (stored with the job), and a late event refolds
from the nearest checkpoint before it, reading only the events after that checkpoint in
key order (the stores keep each event's encoded key, L{encode_key}, indexed). A refold
folds at most C{refold_slice} events per commit group; one that needs more goes on in
the next groups (L{GroupCommit} runs empty ones while refolds are pending), the job's
stored status staying the one it had until the refold completes. An event dated more
than C{max_future_skew} ahead of its arrival is ordered as if dated at its arrival.

Nothing here touches the reactor or the clock: arrival times come in with the items.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist.core.dn import same_dn
from lbtwist.core.errors import AlreadyExists, JobIdFormat, LBError, TryAgain
from lbtwist.core.events import (
    PRIO_DIRECT,
    PRIO_EXCL,
    PRIO_INTERNAL,
    Event,
    format_event,
    parse_event,
)
from lbtwist.core.jobid import JobId, unique_of
from lbtwist.core.seqcode import ordering_key
from lbtwist.core.states import advance_key, fold, machine_for
from lbtwist.core.states.status import MACHINE_GLITE, JobStatus, format_iso
from lbtwist.core.stats import EntryRow
from lbtwist.core.stats import entries as stat_entries
from lbtwist.core.trace import TraceRow
from lbtwist.core.trace import changed_row as changed_trace
from lbtwist.store.interface import OutboxEntry, StoreResult

if TYPE_CHECKING:
    from lbtwist.core.relaypolicy import RelayPolicy

log = Logger()

#: Priority flags of events never relayed.
NO_RELAY = PRIO_DIRECT | PRIO_INTERNAL

#: Limits used when re-parsing stored lines: they were accepted once, accept them again.
_REPARSE_LIMITS: dict[str, int] = {"max_fields": 1_000_000, "max_size": 1 << 31}

Identity = tuple[str, str, str, int, str, str, str]
#: Spool file offsets committed with a group: file name -> C{(inode, offset)}, or
#: L{None} to forget the file (it was removed).
SpoolOffsets = dict[str, "tuple[int, int] | None"]

#: Default: a status checkpoint every this many events of a job (in key order).
CHECKPOINT_EVERY = 256

#: Default most events one commit group folds for late events (all jobs together).
REFOLD_SLICE = 100

#: Default of the service's C{--max-future-skew}: most microseconds an event's DATE
#: may lie ahead of its arrival and still order it (one day).
MAX_FUTURE_SKEW = 86_400 * 1_000_000

#: Jobs remembered as already logged for a future-dated event.
_FUTURE_LOGGED_SIZE = 4096

#: Microseconds (of arrival time) between two log lines about future-dated events.
_FUTURE_LOG_INTERVAL = 1_000_000

#: Above this many events a job's duplicate keys are kept as a set, not as bytes.
_KEYS_AS_SET = 64

_KEY_PART = struct.Struct(">HQ")
_U64 = 1 << 64


def encode_key(key: Sequence[int]) -> bytes:
    """
    An ordering key as bytes that compare as the key does (the stores index it).

    Each int is a 2-byte tag then its magnitude: 8 bytes for C{-2**64 < n < 2**64},
    more (and a tag that sorts accordingly) beyond; negative ints are complemented.
    """
    out = []
    pack = _KEY_PART.pack
    for n in key:
        if 0 <= n < _U64:
            out.append(pack(0x8008, n))
        elif -_U64 < n < 0:
            out.append(pack(0x7FF8, _U64 - 1 + n))
        else:
            size = max(8, ((-n if n < 0 else n).bit_length() + 7) // 8)
            if n >= 0:
                out.append((0x8000 + size).to_bytes(2, "big") + n.to_bytes(size, "big"))
            else:
                body = (1 << (8 * size)) - 1 + n
                out.append((0x8000 - size).to_bytes(2, "big") + body.to_bytes(size, "big"))
    return b"".join(out)


@functools.lru_cache(maxsize=64)
def _key_format(count: int) -> struct.Struct:
    return struct.Struct(">" + "HQ" * count)


def decode_key(data: bytes) -> list[int]:
    """
    The inverse of L{encode_key}.
    """
    count, rest = divmod(len(data), 10)
    if not rest:
        parts = _key_format(count).unpack(data)
        tags = parts[0::2]
        if tags.count(0x8008) == count:
            return list(parts[1::2])
    key = []
    at = 0
    while at < len(data):
        tag = int.from_bytes(data[at : at + 2], "big")
        size = tag - 0x8000 if tag >= 0x8000 else 0x8000 - tag
        body = int.from_bytes(data[at + 2 : at + 2 + size], "big")
        key.append(body if tag >= 0x8000 else body - (1 << (8 * size)) + 1)
        at += 2 + size
    return key


def identity(ev: Event) -> Identity:
    """
    The fields that make two events of one job duplicates (docs/reference.md, Duplicates).
    """
    return (ev.type, ev.source, ev.host, ev.date, ev.level, ev.user, ev.seqcode)


def dupkey(ident: Identity) -> int:
    """
    A stable signed 64-bit hash of an event identity, for the duplicate index.
    """
    digest = hashlib.blake2b(repr(ident).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def cream_key(jobid: str) -> str:
    """
    The mapping key of a CREAM id: its C{CREAM<digits>} part (L{unique_of}), so that
    the id as CREAM hands it out and the proxy's own form of it both resolve.
    """
    return unique_of(jobid)


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
    #: The event's ordering key, L{encode_key}d.
    okey: bytes = b""


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
    #: A refold of the job's status is pending (the status is not yet a fold of all
    #: its events); it resumes from the job's last checkpoint after a restart.
    refold: bool = False


@attrs.frozen
class CheckpointRow:
    """
    A job's status after its events up to C{okey} (ordering-key order), C{position} of them.
    """

    jobid: str
    okey: bytes
    position: int
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
    #: C{(jobid, okey)}: drop the job's checkpoints after C{okey} (before adding
    #: L{checkpoints}).
    cuts: list[tuple[str, bytes]] = attrs.Factory(list)
    checkpoints: list[CheckpointRow] = attrs.Factory(list)
    #: Spool file offsets committed with these events (L{SpoolOffsets}).
    offsets: SpoolOffsets = attrs.Factory(dict)
    #: Notification messages of the new statuses (L{lbtwist.store.notif.NotifRow}s).
    notifications: list[Any] = attrs.Factory(list)
    #: State entries and trace rows of the new statuses (L{lbtwist.store.lifecycle}).
    entries: list[EntryRow] = attrs.Factory(list)
    traces: list[TraceRow] = attrs.Factory(list)


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
    #
    # Optional: C{find_dated(jobid, date, key) -> list[Identity]}, L{find_identities}
    # of the events with that DATE too (the SQLite store indexes DATE, not the key).
    #
    # Optional (late events; without them a late event reads all the job's events):
    # C{load_after(jobid, okey, limit) -> list[tuple[bytes, str]]}: C{(okey, line)} of
    # at most C{limit} of the job's events with a key above C{okey}, in key order;
    # C{checkpoint_before(jobid, before, upto) -> tuple[bytes, dict] | None}: the
    # job's last checkpoint with a key below C{before} (C{None}: any) and not above
    # C{upto} (C{None}: any), as its key and status (JSON dict);
    # C{first_regjob(jobid) -> tuple[bytes, str] | None}: key and line of the job's
    # RegJob with the lowest key; C{refold_jobs() -> list[str]}: jobs whose refold
    # is pending.
    #
    # Optional (purge): C{is_zombie(jobid) -> bool}, asked for a job without a row:
    # whether it was purged (its events are then refused, L{zombie_refusal}).

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
    #: Duplicate keys of all the job's events: 8 bytes each (see L{_key_bytes}) for
    #: small jobs, a set past L{_KEYS_AS_SET}; C{None} when not known: then every
    #: event needs a lookup in the backend.
    keys: bytes | set[int] | None = None
    #: Relay destination, C{""} for a local job, C{None} until computed.
    destination: str | None = None
    #: Stored checkpoints after this key are dropped by this group (C{None}: none are).
    cut: bytes | None = None
    #: Checkpoints made in this group, in key order (all after L{cut}).
    checkpoints: list[tuple[bytes, int, JobStatus]] = attrs.Factory(list)
    #: The status changed without a new event (a refold went on or completed).
    changed: bool = False
    #: Events its refold may still fold in this group (C{None}: the processor's slice).
    budget: int | None = None
    #: The job was purged: its events are refused (L{zombie_refusal}).
    zombie: bool = False


@attrs.define
class _Refold:
    """
    A refold in progress: C{status} is the fold of the job's events up to C{okey};
    C{status} C{None} resumes from the job's last checkpoint.
    """

    status: JobStatus | None
    okey: bytes = b""


def check_tuning(checkpoint_every: int, refold_slice: int, max_future_skew: int | None) -> None:
    """
    @raise ValueError: the fold tuning of a L{BatchProcessor} is out of range.
    """
    if checkpoint_every < 1 or refold_slice < 1:
        raise ValueError("checkpoint_every and refold_slice must be positive")
    if max_future_skew is not None and max_future_skew < 0:
        raise ValueError("max_future_skew must not be negative")


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
        policy: RelayPolicy | None = None,
        cache_size: int = 100_000,
        checkpoint_every: int = CHECKPOINT_EVERY,
        refold_slice: int = REFOLD_SLICE,
        max_future_skew: int | None = None,
    ) -> None:
        """
        @param policy: the relaying role (a proxy's store): outbox rows for the
            events of jobs it gives a destination, and the events it generates.
            C{None} (a server's store): nothing is relayed or generated.
        @param checkpoint_every: a status checkpoint every this many events of a job.
        @param refold_slice: most events one commit group folds for late events.
        @param max_future_skew: microseconds an event's DATE may lie ahead of its
            arrival and still order it; later ones are ordered as dated at arrival.
            C{None} (tests whose clocks start at 0): no limit. The service passes
            its C{--max-future-skew} (default L{MAX_FUTURE_SKEW}).
        """
        check_tuning(checkpoint_every, refold_slice, max_future_skew)
        self._backend = backend
        self.policy = policy
        # jobid -> (status, event count, duplicate keys of its events or None)
        self._cache: OrderedDict[str, tuple[JobStatus, int, bytes | set[int] | None]] = (
            OrderedDict()
        )
        self._cache_size = cache_size
        self._next_id = backend.max_event_id() + 1
        self.checkpoint_every = checkpoint_every
        self.refold_slice = refold_slice
        self.max_future_skew = max_future_skew
        # Jobs whose status is being refolded (persisted: the jobs' refold flag).
        self._refolds: dict[str, _Refold] = {
            jobid: _Refold(None) for jobid in getattr(backend, "refold_jobs", list)()
        }
        self._budget = 0
        # The last group failed: no background groups until one succeeds.
        self._stalled = False
        self._future_logged: OrderedDict[str, None] = OrderedDict()
        self._future_log_at = -_FUTURE_LOG_INTERVAL
        self._future_suppressed = 0
        self.reparsed = 0
        self.recomputes = 0
        self.lookups = 0
        #: Events folded by refolds.
        self.refolded = 0
        #: The notification hook: C{notify(jobid, before, after, arrived)} gives the
        #: messages of a job's new status, written with it (L{lbtwist.store.notif}).
        self.notify: Callable[[str, JobStatus, JobStatus, int], list[Any]] | None = None
        #: Keep the state-entry and trace rows of statuses (L{lbtwist.store.lifecycle}).
        self.lifecycle = True

    @property
    def relay(self) -> bool:
        """
        Whether the store relays (it has a L{RelayPolicy}).
        """
        return self.policy is not None

    def relay_destination(self, jobid: str) -> str | None:
        """
        @return: C{"host:port"} to relay a job's events to, or C{None} if it is local.
        """
        policy = self.policy
        return None if policy is None else policy.destination(jobid)

    def process(
        self, items: list[tuple[str, Event, int]], offsets: SpoolOffsets | None = None
    ) -> list[StoreResult | LBError]:
        """
        Store one commit group: C{(line, event, arrived)} items, and the spool file
        offsets read with them (written in the same transaction).
        """
        touched: dict[str, _JobWork] = {}
        self._budget = self.refold_slice
        try:
            plan = BatchPlan()
            if offsets:
                plan.offsets = offsets
            outcome: list[tuple[str, int | LBError | None]] = []
            starts: dict[str, JobStatus] = {}
            for line, ev, arrived in items:
                work = touched.get(ev.jobid)
                if work is None:
                    work = touched[ev.jobid] = self._load(ev.jobid)
                    starts[ev.jobid] = work.status
                if work.zombie:
                    outcome.append((ev.jobid, zombie_refusal(ev)))
                    continue
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
            self._refold_pending(touched)
            for jobid, work in touched.items():
                if work.new or work.changed:
                    plan.jobs.append(_job_row(jobid, work, jobid in self._refolds))
                    if self.lifecycle:
                        before = starts.get(jobid)
                        plan.entries.extend(stat_entries(jobid, before, work.status))
                        trace = changed_trace(jobid, before, work.status)
                        if trace is not None:
                            plan.traces.append(trace)
                    self._plan_checkpoints(plan, jobid, work)
            if plan.jobs or plan.offsets:
                self._backend.write(plan)
        except Exception as e:
            for jobid in touched:
                self._cache.pop(jobid, None)
                if jobid in self._refolds:
                    # Its fold may hold events not written: resume from what is stored.
                    self._refolds[jobid] = _Refold(None)
            self._stalled = True
            error = e if isinstance(e, LBError) else self._backend.translate_error(e)
            if error is None:
                log.failure("unexpected store failure", Failure(e))
                error = TryAgain(f"store failure: {e}")
            return [error] * len(items)
        self._stalled = False
        for jobid, work in touched.items():
            if not work.zombie:
                self._remember(jobid, work.status, work.nevents, work.keys)
        # advance_key() and refolds always make new statuses, so the cached
        # one is never changed and can be handed out as is (callers must not change it).
        return [
            seqno
            if isinstance(seqno, LBError)
            else StoreResult(
                duplicate=seqno is None, jobid=jobid, seqno=seqno, status=touched[jobid].status
            )
            for jobid, seqno in outcome
        ]

    def pending(self) -> bool:
        """
        Whether refolds are pending (then an empty commit group makes progress), and
        the last group did not fail (a failing store is not retried in a loop: the
        next events or a restart resume the refolds).
        """
        return bool(self._refolds) and not self._stalled

    def drop_cache(self) -> None:
        """
        Drop every cached status: a store whose jobs other writers change too (the
        PostgreSQL store's front ends) reads them again, under its lock, per group.
        """
        self._cache.clear()

    def forget(self, jobids: Iterable[str]) -> None:
        """
        Drop purged jobs from the status cache and the pending refolds (writer thread).
        """
        for jobid in jobids:
            self._cache.pop(jobid, None)
            self._refolds.pop(jobid, None)

    def cached(self, jobid: str) -> JobStatus | None:
        """
        @return: the cached status of a job (for tests and the writer thread only).
        """
        entry = self._cache.get(jobid)
        return entry[0] if entry is not None else None

    def _remember(
        self, jobid: str, status: JobStatus, nevents: int, keys: bytes | set[int] | None = None
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
            is_zombie = getattr(self._backend, "is_zombie", None)
            zombie = is_zombie is not None and bool(is_zombie(jobid))
            return _JobWork(status=JobStatus(), nevents=0, committed=0, keys=b"", zombie=zombie)
        data, nevents = stored
        keys: bytes | set[int] | None = None
        load_dupkeys = getattr(self._backend, "load_dupkeys", None)
        if load_dupkeys is not None:
            stored_keys = load_dupkeys(jobid)
            if len(stored_keys) > _KEYS_AS_SET:
                keys = set(stored_keys)
            else:
                keys = b"".join(_key_bytes(k) for k in stored_keys)
        return _JobWork(
            status=status_from_json(data), nevents=nevents, committed=nevents, keys=keys
        )

    def _is_duplicate(self, jobid: str, work: _JobWork, ident: Identity, key: int) -> bool:
        if ident in work.seen:
            return True
        if work.committed == 0:
            return False
        keys = work.keys
        if keys is not None and not (
            key in keys if keys.__class__ is set else _has_key(keys, _key_bytes(key))  # type: ignore[arg-type,operator]
        ):
            return False
        self.lookups += 1
        find_dated = getattr(self._backend, "find_dated", None)
        if find_dated is not None:
            return ident in find_dated(jobid, ident[3], key)
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
        okey = self._ordering_key(ev, seqno, arrived)
        new = NewEvent(
            event_id=self._next_id,
            jobid=ev.jobid,
            seqno=seqno,
            arrived=arrived,
            line=line,
            event=ev,
            dupkey=key,
            okey=encode_key(okey),
        )
        self._next_id += 1
        plan.events.append(new)
        work.new.append(new)
        work.seen.add(ident)
        keys = work.keys
        if keys is not None:
            if keys.__class__ is set:
                keys.add(key)  # type: ignore[union-attr]
            elif len(keys) < 8 * _KEYS_AS_SET:
                work.keys = keys + _key_bytes(key)  # type: ignore[operator]
            else:
                work.keys = {*_split_keys(keys), key}  # type: ignore[arg-type]
        if work.destination is None:
            work.destination = self.relay_destination(ev.jobid) or ""
        if work.destination and not ev.priority & NO_RELAY:
            plan.outbox.append(OutboxRow(work.destination, new.event_id))
        if ev.type == "CREAMAccepted" and not ev.generated:
            self._map(plan, ev)
        self._apply(plan, work, ev, okey, new.okey, arrived)
        return seqno

    def _ordering_key(self, ev: Event, seqno: int, arrived: int) -> list[int]:
        """
        The event's ordering key; one dated more than the skew after its arrival
        is ordered as if dated at its arrival (logged once per job).
        """
        skew = self.max_future_skew
        if skew is None or ev.date - arrived <= skew:
            return list(ordering_key(ev, seqno))
        if ev.jobid not in self._future_logged:
            if len(self._future_logged) >= _FUTURE_LOGGED_SIZE:
                self._future_logged.popitem(last=False)
            self._future_logged[ev.jobid] = None
            # Once per job, and at most one line a second (by arrival time) for all jobs.
            if arrived - self._future_log_at < _FUTURE_LOG_INTERVAL:
                self._future_suppressed += 1
            else:
                self._future_log_at = arrived
                suppressed, self._future_suppressed = self._future_suppressed, 0
                log.warn(
                    "event {type} of {jobid} dated {ahead} s ahead of its arrival: ordered"
                    " as dated at arrival (further ones of this job not logged; other jobs'"
                    " not logged since the last such line: {suppressed})",
                    type=ev.type,
                    jobid=ev.jobid,
                    ahead=(ev.date - arrived) // 1_000_000,
                    suppressed=suppressed,
                )
        at = SimpleNamespace(jobid=ev.jobid, seqcode=ev.seqcode, date=arrived)
        return list(ordering_key(at, seqno))

    def _map(self, plan: BatchPlan, ev: Event) -> None:
        local = ev.get("local_jobid")
        if not local:
            return
        try:
            if JobId.parse(ev.jobid).is_cream:
                return
        except JobIdFormat:
            return
        plan.mappings.append(MappingRow(cream_key(local), local, ev.jobid))

    def _apply(
        self,
        plan: BatchPlan,
        work: _JobWork,
        ev: Event,
        key: list[int],
        okey: bytes,
        arrived: int,
    ) -> None:
        # Only a relaying store (a proxy's) generates events: a server receives the
        # proxy's, and must not add its own.
        policy = self.policy
        trigger = policy is not None and policy.triggers(ev)
        generated: list[Event] = []
        jobid = ev.jobid
        try:
            before = work.status
            refold = self._refolds.get(jobid)
            after = None if refold is not None else advance_key(before, ev, key)
            if after is not None:
                work.status = after
                if after.event_count % self.checkpoint_every == 0:
                    work.checkpoints.append((okey, after.event_count, after))
                if self.notify is not None:
                    plan.notifications.extend(self.notify(jobid, before, after, arrived))
            else:
                self._late(jobid, work, ev, okey, refold)
                # The refold runs once the group's events are in (_refold_pending),
                # unless gLite events may be generated from its result (jobs on the
                # gLite machine, or becoming so by this RegJob).
                glite = before.machine == MACHINE_GLITE or (
                    before.machine is None
                    and ev.type == "RegJob"
                    and machine_for(ev) == MACHINE_GLITE
                )
                if trigger and glite and refold is None and self._run_refold(jobid, work):
                    after = work.status
            if policy is not None and trigger and after is not None:
                generated = policy.generate(ev, before, after)
        except Exception:
            # The event is kept whatever the state machines make of it: CREAM's
            # events must not be lost.
            log.failure("status of {jobid} not updated by {type}", jobid=jobid, type=ev.type)
        for gen in generated:
            ident = identity(gen)
            if ident not in work.seen:
                self._add(plan, work, format_event(gen), gen, arrived, ident, dupkey(ident))

    def _late(
        self, jobid: str, work: _JobWork, ev: Event, okey: bytes, refold: _Refold | None
    ) -> None:
        """
        Start (or move back) the job's refold for an event that cannot be folded in
        at the end: from the nearest checkpoint before it, or from the start when it
        is a RegJob that may change the job's machine.
        """
        if (
            refold is not None
            and refold.status is not None
            and okey > refold.okey
            and (ev.type != "RegJob" or refold.status.machine == machine_for(ev))
        ):
            return  # the refold in progress reaches it
        self.recomputes += 1
        if refold is not None and refold.status is None:
            current = None
        else:
            current = refold.status if refold is not None else work.status
        if ev.type == "RegJob" and (current is None or current.machine != machine_for(ev)):
            found = None
        else:
            found = self._checkpoint_before(jobid, work, okey)
        start = b"" if found is None else found[0]
        if work.cut is None or start < work.cut:
            work.cut = start
        work.checkpoints = [cp for cp in work.checkpoints if cp[0] <= start]
        if found is None:
            status = JobStatus()
            status.machine = self._first_machine(jobid, work)
        else:
            status = found[1].copy()
        self._refolds[jobid] = _Refold(status, start)

    def _checkpoint_before(
        self, jobid: str, work: _JobWork, before: bytes | None
    ) -> tuple[bytes, JobStatus] | None:
        """
        The job's last valid checkpoint with a key below C{before} (C{None}: any).
        """
        for okey, _, status in reversed(work.checkpoints):
            if before is None or okey < before:
                return okey, status
        find = getattr(self._backend, "checkpoint_before", None)
        if find is None:
            return None
        stored = find(jobid, before, work.cut)
        if stored is None:
            return None
        return stored[0], status_from_json(stored[1])

    def _first_machine(self, jobid: str, work: _JobWork) -> str | None:
        """
        The machine the job's RegJob with the lowest key picks.
        """
        best: tuple[bytes, Event] | None = None
        first = getattr(self._backend, "first_regjob", None)
        if first is not None and work.committed:
            stored = first(jobid)
            if stored is not None:
                try:
                    best = (stored[0], reparse(stored[1]))
                except LBError:
                    log.warn("stored RegJob of {jobid} unreadable", jobid=jobid)
        elif work.committed:
            for okey, line in self._load_after(jobid, b"", None):
                ev = self._reparse(jobid, line)
                if ev is not None and ev.type == "RegJob":
                    best = (okey, ev)
                    break
        for new in work.new:
            if new.event.type == "RegJob" and (best is None or new.okey < best[0]):
                best = (new.okey, new.event)
        return None if best is None else machine_for(best[1])

    def _run_refold(self, jobid: str, work: _JobWork) -> bool:
        """
        Go on with the job's refold for at most the job's remaining budget in this group.

        @return: whether it completed (the job's status is then a fold of all its events).
        """
        refold = self._refolds[jobid]
        if refold.status is None:
            found = self._checkpoint_before(jobid, work, None)
            if found is None:
                refold.status = JobStatus()
                refold.status.machine = self._first_machine(jobid, work)
                refold.okey = b""
            else:
                refold.okey, status = found
                refold.status = status.copy()
        if work.budget is None:
            work.budget = self.refold_slice
        limit = work.budget
        if limit <= 0:
            return False
        status, after = refold.status, refold.okey
        stored = self._load_after(jobid, after, limit + 1) if work.committed else []
        new = sorted((n.okey, n.seqno, n.event) for n in work.new if n.okey > after)
        folded = 0
        i = j = 0
        every = self.checkpoint_every
        try:
            while folded < limit and (i < len(stored) or j < len(new)):
                if j >= len(new) or (i < len(stored) and stored[i][0] < new[j][0]):
                    okey, line = stored[i]
                    i += 1
                    after = okey
                    event = self._reparse(jobid, line)
                    if event is None:
                        continue
                else:
                    okey, _, event = new[j]
                    j += 1
                    after = okey
                folded += 1
                key = decode_key(okey)
                try:
                    fold(status, event, key)
                except Exception:
                    log.failure(
                        "status of {jobid} not updated by {type}", jobid=jobid, type=event.type
                    )
                if status.event_count % every == 0:
                    work.checkpoints.append((okey, status.event_count, status.copy()))
        except BaseException:
            refold.status = None  # resume from the last checkpoint
            raise
        work.budget -= folded
        self.refolded += folded
        work.changed = True
        if i < len(stored) or j < len(new) or len(stored) > limit:
            refold.okey = after
            return False
        del self._refolds[jobid]
        work.status = status
        return True

    def _refold_pending(self, touched: dict[str, _JobWork]) -> None:
        """
        Go on with pending refolds: those of the jobs in this group, then others
        within one shared slice.
        """
        for jobid in list(self._refolds):
            work = touched.get(jobid)
            if work is None:
                if self._budget <= 0:
                    continue
                work = touched[jobid] = self._load(jobid)
                work.budget = self._budget
                self._run_refold(jobid, work)
                self._budget = work.budget
            else:
                self._run_refold(jobid, work)

    def _plan_checkpoints(self, plan: BatchPlan, jobid: str, work: _JobWork) -> None:
        if work.cut is not None:
            plan.cuts.append((jobid, work.cut))
        for okey, position, status in work.checkpoints:
            plan.checkpoints.append(CheckpointRow(jobid, okey, position, status.to_json()))

    def _load_after(self, jobid: str, okey: bytes, limit: int | None) -> list[tuple[bytes, str]]:
        load = getattr(self._backend, "load_after", None)
        if load is not None and limit is not None:
            return load(jobid, okey, limit)  # type: ignore[no-any-return]
        # A backend without keys: every line, keyed by its DATE as logged.
        rows = []
        for seqno, line in self._backend.load_lines(jobid):
            ev = self._reparse(jobid, line)
            if ev is not None:
                key = encode_key(ordering_key(ev, seqno))
                if key > okey:
                    rows.append((key, line))
        rows.sort()
        return rows if limit is None else rows[:limit]

    def _reparse(self, jobid: str, line: str) -> Event | None:
        self.reparsed += 1
        try:
            return reparse(line)
        except LBError:
            log.warn("stored event of {jobid} unreadable", jobid=jobid)
            return None


def zombie_refusal(ev: Event) -> LBError:
    """
    The answer to an event of a purged job: a RegJob (exclusive or not) gets EEXIST,
    as a purged job id is never registered again; any other event EIDRM.
    """
    if ev.type == "RegJob":
        return AlreadyExists(f"job {ev.jobid} was purged: its id may not be registered again")
    return LBError(f"job {ev.jobid} was purged: no more events are stored for it", errno.EIDRM)


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


def _split_keys(keys: bytes) -> list[int]:
    return [int.from_bytes(keys[i : i + 8], "big", signed=True) for i in range(0, len(keys), 8)]


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


def _job_row(jobid: str, work: _JobWork, refold: bool = False) -> JobRow:
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
        refold=refold,
    )


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


_T = TypeVar("_T")

#: What a commit group's results are: one per item.
Results = list[StoreResult | LBError]


class Runner(Protocol):
    """
    Runs store work somewhere (the writer thread, or at once) and gives its result.
    """

    def __call__(self, work: Callable[[], _T], /) -> Deferred[_T]: ...


def run_now(work: Callable[[], _T]) -> Deferred[_T]:
    """
    A synchronous runner: calls C{work} at once (memory store, tests).
    """
    return maybeDeferred(work)


#: Hands a call to the reactor thread (C{reactor.callFromThread}).
Handoff = Callable[..., object]

_Group = list[tuple[list[tuple[str, Event, int]], Deferred[Results]]]


class GroupCommit:
    """
    Commit groups without timers: a commit starts at once when none is running;
    items submitted while one runs all go into the next one. While C{pending()}
    says there is background work (refolds), an empty group follows (on the next
    reactor turn, or at once on a draining runner; waiting items always go first).

    Given a C{handoff} (C{reactor.callFromThread}, when C{runner} is the store's
    own writer thread), the runner drains the queue itself: as soon as a group
    has committed, the writer thread takes everything queued meanwhile as the
    next group and starts it, and hands the committed group's results to the
    reactor thread through C{handoff}; the next commit does not wait for the
    reactor to run the previous one's callbacks. Without one, each group is one
    runner call started from the reactor thread once the previous one's results
    are delivered (synchronous runners, L{lbtwist.testing.HeldRunner}).

    @ivar commits: number of commit groups started.
    """

    def __init__(
        self,
        clock: IReactorTime,
        process: Callable[..., Results],
        runner: Runner,
        pending: Callable[[], bool] | None = None,
        handoff: Handoff | None = None,
        yield_to: Callable[[], bool] | None = None,
    ) -> None:
        """
        @param handoff: see the class; C{None}: one runner call per group.
        @param yield_to: with a C{handoff}, whether other work waits for the runner
            (the outbox's acknowledgements): then the drain stops after the group
            that committed and starts again behind that work.
        """
        self._clock = clock
        self._process = process
        self._runner = runner
        self._pending = pending
        self._handoff = handoff
        self._yield_to = yield_to
        self._queue: _Group = []
        self._offsets: SpoolOffsets = {}
        # Guards _queue, _offsets and _running between the reactor and a draining runner.
        self._lock = threading.Lock()
        self._running = False
        # Drains started and not yet seen ending on the reactor thread (L{_drained}).
        self._drains = 0
        self._idle: list[Deferred[None]] = []
        self._background: IDelayedCall | None = None
        self._stopped = False
        self.commits = 0
        #: Called on the reactor thread once per committed group with its event count and
        #: when its first events were queued (microseconds; for metrics), if set.
        self.observer: Callable[[int, int], None] | None = None

    def stop(self) -> None:
        """
        Run no more background groups (the store is closing; pending refolds resume
        after a restart).
        """
        self._stopped = True
        if self._background is not None and self._background.active():
            self._background.cancel()
        self._background = None

    def submit(
        self, items: list[tuple[str, Event]], offsets: SpoolOffsets | None = None
    ) -> Deferred[list[StoreResult | LBError]]:
        """
        Queue items, stamped with their arrival time, for the next commit group;
        C{offsets} are written in the same transaction (later ones win).
        """
        now = int(self._clock.seconds() * 1_000_000)
        d: Deferred[Results] = Deferred()
        if not items and not offsets:
            d.callback([])
            return d
        part = [(line, ev, now) for line, ev in items]
        with self._lock:
            if offsets:
                self._offsets.update(offsets)
            self._queue.append((part, d))
            start = not self._running
            if start and self._handoff is not None:
                self._running = True
        if start:
            if self._handoff is not None:
                self._drain_start()
            else:
                self._next()
        return d

    @property
    def busy(self) -> bool:
        """
        Whether a commit group is running or queued on the runner (read from the writer
        thread by a purge chunk, to let intake go first: a hint, not a lock).
        """
        return self._running

    def when_idle(self) -> Deferred[None]:
        """
        @return: a Deferred fired once no commit is running or queued.
        """
        d: Deferred[None] = Deferred()
        if self._running or self._queue or self._drains:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def kick(self) -> None:
        """
        Start the background groups if refolds are pending (a store opened on them).
        """
        if self._handoff is not None:
            with self._lock:
                start = not self._running and not self._queue
                if start:
                    self._running = True
            if start:
                self._drain_start()
        elif not self._running and not self._queue:
            self._next()

    def _later(self) -> None:
        self._background = None
        if not self._running and not self._stopped:
            self._next(background=True)

    def _next(self, background: bool = False) -> None:
        if not self._queue and not background:
            if (
                self._pending is not None
                and not self._stopped
                and self._background is None
                and self._pending()
            ):
                self._background = self._clock.callLater(0, self._later)
            self._fire_idle()
            return
        group, self._queue = self._queue, []
        offsets, self._offsets = self._offsets, {}
        items = [item for part, _ in group for item in part]
        self._running = True
        self.commits += 1
        if offsets:
            result = self._runner(lambda: self._process(items, offsets))
        else:
            result = self._runner(lambda: self._process(items))

        def failed(failure: Failure) -> None:
            self._failed(group, failure)

        def finished(_: object) -> None:
            self._running = False
            self._next()

        result.addCallbacks(self._deliver, failed, (group,))
        result.addBoth(finished)

    def _deliver(self, results: Results, group: _Group) -> None:
        """
        Answer a committed group's callers (on the reactor thread).
        """
        observer = self.observer
        if observer is not None and group and group[0][0]:
            observer(len(results), group[0][0][0][2])
        start = 0
        for part, d in group:
            d.callback(results[start : start + len(part)])
            start += len(part)

    def _failed(self, group: _Group, failure: Failure) -> None:
        log.failure("commit group failed", failure)
        for _, d in group:
            d.errback(TryAgain("store failure"))

    def _fire_idle(self) -> None:
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    # -- the draining runner (a handoff given) ------------------------------------

    def _drain_start(self) -> None:
        """
        Start the runner on L{_drain} (C{_running} is set).
        """
        self._drains += 1
        self._runner(self._drain).addBoth(self._drained)

    def _drain(self) -> None:
        """
        On the runner: commit group after group while items are queued (then the
        background groups while refolds are pending), each group's results handed
        to the reactor as soon as it has committed.
        """
        handoff = self._handoff
        assert handoff is not None
        yield_to = self._yield_to
        first = True
        while True:
            with self._lock:
                if not first and yield_to is not None and yield_to():
                    # Other work waits for this thread: let it run first (_drained
                    # starts the drain again behind it).
                    self._running = False
                    return
                first = False
                group, self._queue = self._queue, []
                offsets, self._offsets = self._offsets, {}
                if not group and not offsets:
                    background = self._pending is not None and not self._stopped and self._pending()
                    if not background:
                        self._running = False
                        return
            self.commits += 1
            items = [item for part, _ in group for item in part]
            try:
                results = self._process(items, offsets) if offsets else self._process(items)
            except Exception:
                handoff(self._failed, group, Failure())
            else:
                if group:
                    handoff(self._deliver, results, group)

    def _drained(self, result: object) -> None:
        """
        On the reactor, after the runner left L{_drain} (every handoff of it has run).
        """
        self._drains -= 1
        if isinstance(result, Failure):
            log.failure("commit runner failed", result)
        with self._lock:
            if isinstance(result, Failure):
                self._running = False
            # Items left queued (the drain yielded, or failed): drain again.
            restart = not self._running and bool(self._queue or self._offsets)
            if restart:
                self._running = True
        if restart:
            self._drain_start()
        elif not self._running and not self._queue and not self._drains:
            self._fire_idle()


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

    def notify(self, results: Results) -> Results:
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


def id_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """
    Row ids as runs of consecutive ids, C{(first, last)} in increasing order: a relay's
    acknowledgements are mostly one run, removed by one range statement instead of
    one statement per row (ids are unique, so no other row lies inside a run).
    """
    runs: list[tuple[int, int]] = []
    first = last = None
    for i in sorted(set(ids)):
        if last is not None and i == last + 1:
            last = i
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = i
    if first is not None and last is not None:
        runs.append((first, last))
    return runs


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
        clock: IReactorTime,
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

    def store(
        self, items: list[tuple[str, Event]], offsets: SpoolOffsets | None = None
    ) -> Deferred[list[StoreResult | LBError]]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._commit.submit(items, offsets).addCallback(self._notifier.notify)

    def outbox_ack(self, ids: list[int]) -> Deferred[None]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._outbox.ack(ids)

    def reject(self, entry: OutboxEntry, major: int, minor: int, reason: str) -> Deferred[None]:
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._outbox.reject(entry, major, minor, reason)
