# -*- test-case-name: tests.unit.test_testing -*-
"""
Test doubles for code that uses lbtwist's store, shipped with the package (as
txacme ships its own) so that tests of the services, and of code built on them,
need not write their own.

L{MemoryStore} is an L{IEventStore} in memory: the same rules as the SQLite
store (both are driven by L{lbtwist.store.batch}), no disk, commits run at once
(or when a L{HeldRunner} releases them). It stays, rather than SQLite on a
temporary file with a synchronous runner, because the tests inspect and break
its tables directly (L{MemoryBackend}: rows, C{fail_next}), because it is a
second implementation the store rules are checked against, and because it
keeps the unit suite off the disk (a SQLite commit is an fsync).
"""

from __future__ import annotations

import bisect
import json
import socket
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from lbtwist.core.dn import same_dn
from lbtwist.core.errors import LBError
from lbtwist.core.relaypolicy import RelayPolicy
from lbtwist.core.states.status import JobStatus
from lbtwist.core.translate import proxy_policy
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
    JobRow,
    NewEvent,
    OutboxWriter,
    RejectRow,
    Runner,
    cream_key,
    identity,
    run_now,
    status_from_json,
)
from lbtwist.store.interface import (
    IEventStore,
    JobSummary,
    OutboxEntry,
    OutboxStats,
    RejectedEntry,
    StoredEvent,
)
from lbtwist.store.notif import MemoryNotifTables, Notifications, memory_reader
from lbtwist.store.query import (
    JobPage,
    JobQuery,
    list_key,
    order_rows,
    row_matches,
    unique_of,
)

__all__ = ["HeldRunner", "MemoryBackend", "MemoryStore", "proxy_policy", "run_now"]

_T = TypeVar("_T")


class HeldRunner:
    """
    A store runner (C{runner=} of L{MemoryStore} or
    L{lbtwist.store.sqlite.SQLiteStore}) that keeps each piece of work until the
    test releases or fails it: a commit in progress, for as long as the test wants.

    @ivar pending: the work not yet run, oldest first, each with its Deferred.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], _T]) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        self.pending.append((work, d))
        return d

    def release(self) -> None:
        """
        Run the oldest held work (a commit group: written, then its callers answered).
        """
        work, d = self.pending.pop(0)
        d.callback(work())

    def fail(self, error: Exception) -> None:
        """
        Fail the oldest held work without running it (nothing written).
        """
        _, d = self.pending.pop(0)
        d.errback(error)


class MemoryBackend:
    """
    Dicts and lists standing in for the tables.

    @ivar transactions: number of committed plans.
    @ivar fail_next: an error the next L{write} raises (then cleared).
    """

    def __init__(self) -> None:
        self.events: list[NewEvent] = []
        self.by_job: dict[str, list[NewEvent]] = {}
        #: Each job's events in ordering-key order.
        self.by_key: dict[str, list[NewEvent]] = {}
        #: Each job's checkpoints in key order: C{(okey, position, status JSON)}.
        self.checkpoints: dict[str, list[tuple[bytes, int, str]]] = {}
        self.jobs: dict[str, tuple[dict[str, Any], int, JobRow]] = {}
        self.mapping: dict[str, str] = {}
        self.outbox: list[OutboxEntry] = []
        self.rejected: list[RejectedEntry] = []
        self._outbox_seq = 0
        self.transactions = 0
        self.fail_next: LBError | None = None
        #: Committed spool file offsets: name -> C{(inode, offset)}.
        self.spool: dict[str, tuple[int, int]] = {}
        #: The notification tables, and the store's notifications (set by the store).
        self.notif_tables = MemoryNotifTables()
        self.notif: Notifications | None = None
        #: Purged jobs: unique part -> job id (their events are refused).
        self.zombies: dict[str, str] = {}

    def max_event_id(self) -> int:
        return self.events[-1].event_id if self.events else 0

    def is_zombie(self, jobid: str) -> bool:
        return unique_of(jobid) in self.zombies

    def load_job(self, jobid: str) -> tuple[dict[str, Any], int] | None:
        row = self.jobs.get(jobid)
        return None if row is None else (row[0], row[1])

    def load_lines(self, jobid: str) -> list[tuple[int, str]]:
        return [(new.seqno, new.line) for new in self.by_job.get(jobid, [])]

    def find_identities(self, jobid: str, key: int) -> list[Identity]:
        return [identity(new.event) for new in self.by_job.get(jobid, []) if new.dupkey == key]

    def find_dated(self, jobid: str, date: int, key: int) -> list[Identity]:
        return [
            identity(new.event)
            for new in self.by_job.get(jobid, [])
            if new.dupkey == key and new.event.date == date
        ]

    def load_dupkeys(self, jobid: str) -> list[int]:
        return [new.dupkey for new in self.by_job.get(jobid, [])]

    def load_after(self, jobid: str, okey: bytes, limit: int) -> list[tuple[bytes, str]]:
        news = self.by_key.get(jobid, [])
        at = bisect.bisect_right(news, okey, key=_okey)
        return [(new.okey, new.line) for new in news[at : at + limit]]

    def checkpoint_before(
        self, jobid: str, before: bytes | None, upto: bytes | None
    ) -> tuple[bytes, dict[str, Any]] | None:
        for okey, _, text in reversed(self.checkpoints.get(jobid, [])):
            if (before is None or okey < before) and (upto is None or okey <= upto):
                return okey, json.loads(text)
        return None

    def first_regjob(self, jobid: str) -> tuple[bytes, str] | None:
        for new in self.by_key.get(jobid, []):
            if new.event.type == "RegJob":
                return new.okey, new.line
        return None

    def refold_jobs(self) -> list[str]:
        return [jobid for jobid, (_, _, row) in self.jobs.items() if row.refold]

    def write(self, plan: BatchPlan) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        by_id = {}
        for new in plan.events:
            self.events.append(new)
            self.by_job.setdefault(new.jobid, []).append(new)
            ordered = self.by_key.setdefault(new.jobid, [])
            if not ordered or ordered[-1].okey < new.okey:
                ordered.append(new)
            else:
                bisect.insort(ordered, new, key=_okey)
            by_id[new.event_id] = new
        for row in plan.jobs:
            self.jobs[row.jobid] = (json.loads(row.status_json), row.nevents, row)
        for jobid, cut in plan.cuts:
            kept = self.checkpoints.get(jobid, [])
            self.checkpoints[jobid] = [cp for cp in kept if cp[0] <= cut]
        for cp in plan.checkpoints:
            kept = [c for c in self.checkpoints.get(cp.jobid, []) if c[0] != cp.okey]
            kept.append((cp.okey, cp.position, cp.status_json))
            kept.sort()
            self.checkpoints[cp.jobid] = kept
        for mapping in plan.mappings:
            self.mapping[mapping.cream_key] = mapping.glite_id
        for name, spooled in plan.offsets.items():
            if spooled is None:
                self.spool.pop(name, None)
            else:
                self.spool[name] = spooled
        if plan.notifications and self.notif is not None:
            self.notif.write_messages(plan.notifications)
        for out in plan.outbox:
            new = by_id[out.event_id]
            self._outbox_seq += 1
            self.outbox.append(
                OutboxEntry(
                    self._outbox_seq,
                    out.destination,
                    out.event_id,
                    new.jobid,
                    new.line,
                    new.arrived,
                )
            )
        self.transactions += 1
        if plan.notifications and self.notif is not None:
            self.notif.committed(plan.notifications)

    def outbox_done(self, acks: list[int], rejects: list[RejectRow]) -> None:
        """
        Remove acknowledged rows, move rejected ones (all or nothing).
        """
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        gone = set(acks)
        for r in rejects:
            gone.add(r.entry.id)
            self.rejected.append(
                RejectedEntry(
                    r.entry.id,
                    r.entry.destination,
                    r.entry.event_id,
                    r.major,
                    r.minor,
                    r.reason,
                    r.rejected_at,
                    r.entry.jobid,
                    r.entry.line,
                )
            )
        self.outbox = [o for o in self.outbox if o.id not in gone]
        self.transactions += 1

    def translate_error(self, error: Exception) -> LBError | None:
        return None


def _okey(new: NewEvent) -> bytes:
    return new.okey


def _stored(new: NewEvent) -> StoredEvent:
    return StoredEvent(new.jobid, new.seqno, new.arrived, new.line, new.event)


@implementer(IEventStore)
class MemoryStore(GroupedWrites):
    """
    L{IEventStore} in memory.

    By default a proxy's store (the policy of L{proxy_policy}): most tests of the
    services need relayed and generated events; C{relay=False} is a server's.

    @ivar backend: the L{MemoryBackend} (tests inspect it).
    @ivar processor: the shared L{BatchProcessor}.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        relay: bool = True,
        local_endpoints: Iterable[tuple[str, int]] = (),
        proxy_host: str | None = None,
        policy: RelayPolicy | None = None,
        runner: Runner = run_now,
        checkpoint_every: int = CHECKPOINT_EVERY,
        refold_slice: int = REFOLD_SLICE,
        max_future_skew: int | None = None,
    ) -> None:
        """
        @param relay: relay and generate as a proxy does (C{False}: a server's store).
        @param local_endpoints: the proxy's own C{(host, query port)} pairs.
        @param proxy_host: the C{HOST} of generated events (default: this machine's name).
        @param policy: a relay policy to use instead of the proxy's (with C{relay}).
        @param checkpoint_every: see L{BatchProcessor}.
        @param refold_slice: see L{BatchProcessor}.
        @param max_future_skew: see L{BatchProcessor}.
        """
        if relay and policy is None:
            policy = proxy_policy(local_endpoints, proxy_host or socket.getfqdn())
        self.relay = relay
        self.backend = MemoryBackend()
        self.processor = BatchProcessor(
            self.backend,
            policy=policy if relay else None,
            checkpoint_every=checkpoint_every,
            refold_slice=refold_slice,
            max_future_skew=max_future_skew,
        )
        self.clock = clock or Clock()
        self._commit = GroupCommit(
            self.clock, self.processor.process, runner, self.processor.pending
        )
        self._notifier = CommitNotifier(self.processor)
        self._outbox = OutboxWriter(self.clock, runner, self.backend.outbox_done)
        self._closed = False
        self.notifications = self.backend.notif = Notifications(
            self.backend.notif_tables,
            writer=runner,
            reader=memory_reader,
            jobs=self._bootstrap_jobs,
        )
        self.processor.notify = self.notifications.matcher

    def _bootstrap_jobs(self, reg: Any, limit: int) -> list[tuple[str, JobStatus]]:
        rows = sorted(
            self.backend.jobs.items(), key=lambda item: item[1][2].last_update or "", reverse=True
        )
        found: list[tuple[str, JobStatus]] = []
        for jobid, (data, _, _) in rows:
            if len(found) >= limit:
                break
            if reg.conditions.jobids and unique_of(jobid) not in {
                unique_of(j) for j in reg.conditions.jobids
            }:
                continue
            owner = reg.conditions.owner
            if owner is not None and not (data.get("owner") and same_dn(data["owner"], owner)):
                continue
            found.append((jobid, status_from_json(data)))
        return found

    def spool_offsets(self) -> Deferred[dict[str, tuple[int, int]]]:
        return succeed(dict(self.backend.spool))

    def status(self, jobid: str) -> Deferred[JobStatus | None]:
        row = self.backend.jobs.get(jobid)
        return succeed(None if row is None else status_from_json(row[0]))

    def events(self, jobid: str) -> Deferred[list[StoredEvent]]:
        return succeed([_stored(new) for new in self.backend.by_key.get(jobid, [])])

    def events_range(self, jobid: str, after: int, limit: int) -> Deferred[list[StoredEvent]]:
        news = self.backend.by_job.get(jobid, [])
        start = bisect_right(news, after, key=lambda n: n.seqno)
        return succeed([_stored(new) for new in news[start : start + max(limit, 0)]])

    def last_seqcode(self, jobid: str) -> Deferred[str | None]:
        news = self.backend.by_job.get(jobid)
        if not news:
            return succeed(None)
        return succeed(max(news, key=lambda n: n.okey).event.seqcode)

    def resolve(self, jobid: str) -> Deferred[str | None]:
        return succeed(self.backend.mapping.get(cream_key(jobid)))

    def jobs(
        self, owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> Deferred[list[JobSummary]]:
        rows = [
            JobSummary(r.jobid, r.owner, r.state, r.jobtype, r.last_update)
            for _, _, r in (self.backend.jobs[j] for j in sorted(self.backend.jobs))
            if (owner is None or r.owner == owner) and (state is None or r.state == state)
        ]
        return succeed(rows[:limit] if limit is not None else rows)

    def find_job(self, unique: str) -> Deferred[str | None]:
        return succeed(self._find(unique))

    def _find(self, unique: str) -> str | None:
        found = sorted(j for j in self.backend.jobs if unique_of(j) == unique)
        if found:
            return found[0]
        return self.backend.mapping.get(unique)

    def find_status(self, unique: str) -> Deferred[tuple[str, JobStatus] | None]:
        jobid = self._find(unique)
        row = None if jobid is None else self.backend.jobs.get(jobid)
        if jobid is None or row is None:
            purged = self.backend.zombies.get(unique)
            if purged is not None:
                return succeed((purged, JobStatus(state="Purged", jobId=purged)))
            return succeed(None)
        return succeed((jobid, status_from_json(row[0])))

    def query_jobs(self, query: JobQuery) -> Deferred[JobPage]:
        rows = order_rows(
            (jobid, data)
            for jobid, (data, _, _) in self.backend.jobs.items()
            if row_matches(query, jobid, data)
        )
        page = rows[: query.limit]
        jobs = [
            JobSummary(
                r.jobid,
                r.owner,
                r.state,
                r.jobtype,
                r.last_update,
                data.get("cream_state"),
                data.get("exit_code"),
                data.get("done_code"),
            )
            for r, data in ((self.backend.jobs[jobid][2], data) for jobid, data in page)
        ]
        more = len(rows) > query.limit
        return succeed(JobPage(jobs, list_key(*page[-1]) if more and page else None))

    def dump(
        self, from_arrived: int | None = None, to_arrived: int | None = None
    ) -> Deferred[list[StoredEvent]]:
        return succeed(
            [
                _stored(new)
                for new in sorted(self.backend.events, key=lambda n: (n.arrived, n.event_id))
                if (from_arrived is None or new.arrived > from_arrived)
                and (to_arrived is None or new.arrived <= to_arrived)
            ]
        )

    def dump_page(
        self,
        from_arrived: int | None,
        to_arrived: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> Deferred[tuple[list[StoredEvent], tuple[int, int] | None]]:
        rows = sorted(
            (
                new
                for new in self.backend.events
                if (from_arrived is None or new.arrived > from_arrived)
                and (to_arrived is None or new.arrived <= to_arrived)
                and (after is None or (new.arrived, new.event_id) > after)
            ),
            key=lambda n: (n.arrived, n.event_id),
        )
        page = rows[:limit]
        more = len(rows) > limit and page
        return succeed(
            ([_stored(n) for n in page], (page[-1].arrived, page[-1].event_id) if more else None)
        )

    def outbox_pending(self, destination: str | None = None) -> Deferred[list[OutboxEntry]]:
        return succeed(
            [o for o in self.backend.outbox if destination is None or o.destination == destination]
        )

    def outbox_after(
        self, destination: str, after_id: int, limit: int
    ) -> Deferred[list[OutboxEntry]]:
        rows = [o for o in self.backend.outbox if o.destination == destination and o.id > after_id]
        return succeed(rows[:limit])

    def outbox_stats(self) -> Deferred[dict[str, OutboxStats]]:
        stats: dict[str, OutboxStats] = {}
        for o in self.backend.outbox:
            old = stats.get(o.destination)
            if old is None:
                stats[o.destination] = OutboxStats(o.destination, 1, o.arrived, 0)
            else:
                stats[o.destination] = OutboxStats(
                    o.destination, old.depth + 1, old.oldest_arrived, 0
                )
        for r in self.backend.rejected:
            old = stats.get(r.destination) or OutboxStats(r.destination, 0, None, 0)
            stats[r.destination] = OutboxStats(
                r.destination, old.depth, old.oldest_arrived, old.rejected + 1
            )
        return succeed(stats)

    def rejected(self, destination: str | None = None) -> Deferred[list[RejectedEntry]]:
        return succeed(
            [
                r
                for r in self.backend.rejected
                if destination is None or r.destination == destination
            ]
        )

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._notifier.add(listener)

    def close(self) -> Deferred[None]:
        self._closed = True
        self._commit.stop()
        d = self._commit.when_idle()
        d.addCallback(lambda _: self._outbox.when_idle())
        return d
