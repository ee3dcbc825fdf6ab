# -*- test-case-name: tests.unit.test_store_sqlite,tests.integration.test_store_postgres -*-
"""
What the SQLite and the PostgreSQL stores share beyond the commit logic of
L{lbtwist.store.batch}: their reader methods (L{StoreReads}, one
L{lbtwist.store.sqlite.Queries} call each, where each store runs its queries)
and the notification tables' schema (L{NOTIF_SCHEMA}, in either dialect).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, fail

from lbtwist.core.errors import TryAgain
from lbtwist.core.states.status import JobStatus
from lbtwist.core.stats import StatsRequest
from lbtwist.core.trace import TraceRequest
from lbtwist.store import lifecycle, purging
from lbtwist.store.batch import Runner
from lbtwist.store.interface import (
    JobSummary,
    OutboxEntry,
    OutboxStats,
    RejectedEntry,
    StoredEvent,
)
from lbtwist.store.query import JobPage, JobQuery

if TYPE_CHECKING:
    from lbtwist.store.sqlite import Queries, SQLiteBackend

_T = TypeVar("_T")

#: The notification tables (registrations, their jobs, their queued messages),
#: the same on both stores but for the dialect: C{{int}} (SQLite's C{INTEGER},
#: PostgreSQL's C{BIGINT}), C{{serial}} the messages' id column type, C{{blob}}
#: the bodies' type and C{{clustered}} what follows the job table (SQLite's
#: C{ WITHOUT ROWID}).
NOTIF_SCHEMA = """\
CREATE TABLE notif_regs (
    uniq TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    owner_norm TEXT NOT NULL,
    fqans TEXT NOT NULL,
    spec TEXT NOT NULL,
    selector TEXT NOT NULL,
    valid_until {int} NOT NULL,
    created {int} NOT NULL,
    last_seq {int} NOT NULL DEFAULT 0,
    acked {int} NOT NULL DEFAULT 0,
    queued {int} NOT NULL DEFAULT 0,
    size {int} NOT NULL DEFAULT 0,
    dropped {int} NOT NULL DEFAULT 0
);
CREATE INDEX notif_regs_owner ON notif_regs (owner_norm);
CREATE INDEX notif_regs_valid ON notif_regs (valid_until);
CREATE INDEX notif_regs_all ON notif_regs (uniq) WHERE selector = 'all';
CREATE TABLE notif_jobs (
    job TEXT NOT NULL,
    uniq TEXT NOT NULL,
    PRIMARY KEY (job, uniq)
){clustered};
CREATE INDEX notif_jobs_reg ON notif_jobs (uniq);
CREATE TABLE notif_messages (
    id {serial} PRIMARY KEY,
    reg TEXT NOT NULL,
    seq {int} NOT NULL,
    kind TEXT NOT NULL,
    jobid TEXT NOT NULL,
    size {int} NOT NULL,
    body {blob} NOT NULL
);
CREATE UNIQUE INDEX notif_messages_reg ON notif_messages (reg, seq)"""


class StoreReads:
    """
    The reader methods of a store (L{lbtwist.store.interface.IEventStore}):
    each runs one query of its L{Queries} where the store runs them
    (L{_query}); and the purge chores both stores run on their writer thread.

    Classes using it provide C{_query}, C{_closed}, C{_runner} and C{backend}.
    """

    _closed: bool
    _runner: Runner
    backend: SQLiteBackend

    def _query(self, work: Callable[[Queries], _T]) -> Deferred[_T]:
        """
        Run C{work} on a L{Queries} of the store, on its reader thread (or pool).
        """
        raise NotImplementedError

    def status(self, jobid: str) -> Deferred[JobStatus | None]:
        return self._query(lambda q: q.status(jobid))

    def events(self, jobid: str) -> Deferred[list[StoredEvent]]:
        return self._query(lambda q: q.events(jobid))

    def spool_offsets(self) -> Deferred[dict[str, tuple[int, int]]]:
        """
        The committed spool file offsets: name -> C{(inode, offset)}.
        """
        return self._query(lambda q: q.spool_offsets())

    def last_seqcode(self, jobid: str) -> Deferred[str | None]:
        return self._query(lambda q: q.last_seqcode(jobid))

    def events_range(self, jobid: str, after: int, limit: int) -> Deferred[list[StoredEvent]]:
        return self._query(lambda q: q.events_range(jobid, after, limit))

    def resolve(self, jobid: str) -> Deferred[str | None]:
        return self._query(lambda q: q.resolve(jobid))

    def jobs(
        self, owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> Deferred[list[JobSummary]]:
        return self._query(lambda q: q.jobs(owner, state, limit))

    def find_job(self, unique: str) -> Deferred[str | None]:
        return self._query(lambda q: q.find_job(unique))

    def find_status(self, unique: str) -> Deferred[tuple[str, JobStatus] | None]:
        return self._query(lambda q: q.find_status(unique))

    def query_jobs(self, query: JobQuery) -> Deferred[JobPage]:
        return self._query(lambda q: q.query_jobs(query))

    def dump(
        self, from_arrived: int | None = None, to_arrived: int | None = None
    ) -> Deferred[list[StoredEvent]]:
        return self._query(lambda q: q.dump(from_arrived, to_arrived))

    def dump_page(
        self,
        from_arrived: int | None,
        to_arrived: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> Deferred[tuple[list[StoredEvent], tuple[int, int] | None]]:
        """
        L{Queries.dump_page} where the store runs its queries.
        """
        return self._query(lambda q: q.dump_page(from_arrived, to_arrived, after, limit))

    def outbox_pending(self, destination: str | None = None) -> Deferred[list[OutboxEntry]]:
        return self._query(lambda q: q.outbox_pending(destination))

    def outbox_stats(self) -> Deferred[dict[str, OutboxStats]]:
        return self._query(lambda q: q.outbox_stats())

    def rejected(self, destination: str | None = None) -> Deferred[list[RejectedEntry]]:
        return self._query(lambda q: q.rejected(destination))

    def zombie(self, unique: str) -> Deferred[purging.Zombie | None]:
        """
        The zombie of a purged job (a reader).
        """
        return self._query(lambda q: q.zombie(unique))

    def stats(self, request: StatsRequest, max_jobs: int) -> Deferred[dict[str, Any]]:
        """
        A statistics answer (a reader; L{lbtwist.store.lifecycle.stats}).
        """
        return self._query(lambda q: q.stats(request, max_jobs))

    def trace(
        self, request: TraceRequest, max_jobs: int
    ) -> Deferred[tuple[list[dict[str, Any]], bool]]:
        """
        A trace answer (a reader; L{lbtwist.store.lifecycle.trace}).
        """
        return self._query(lambda q: q.trace(request, max_jobs))

    def jp_pending(self, after: int, limit: int) -> Deferred[list[tuple[int, str, str]]]:
        """
        Registrations not yet exported to Job Provenance (a reader).
        """
        return self._query(lambda q: purging.jp_pending(q.conn, after, limit))

    def expire_traces(self, before: int, limit: int) -> Deferred[int]:
        """
        Remove one chunk of expired trace rows of purged jobs (writer thread).
        """
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._runner(
            lambda: lifecycle.expire_traces(self.backend.conn, before=before, limit=limit)
        )

    def jp_done(self, ids: list[int]) -> Deferred[None]:
        """
        Forget exported registrations (writer thread).
        """
        if self._closed:
            return fail(TryAgain("store closed"))
        return self._runner(lambda: purging.jp_done(self.backend.conn, ids))
