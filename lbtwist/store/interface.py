# -*- test-case-name: tests.unit.test_store -*-
"""
The event store interface and the values it hands out.

Every method of L{IEventStore} returns a L{Deferred}; implementations keep the
reactor free of disk waits. L{StoreReader} is the synchronous read side of a store
file that the command line opens (L{lbtwist.store.open_reader}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred

    from lbtwist.core.errors import LBError
    from lbtwist.core.events import Event
    from lbtwist.core.states.status import JobStatus
    from lbtwist.store.query import JobPage, JobQuery


@attrs.frozen
class StoreResult:
    """
    The outcome of storing one event.

    @ivar duplicate: C{True} when an identical event was already stored (nothing written).
    @ivar jobid: the event's job id.
    @ivar seqno: the per-job sequence number given to the event, C{None} for a duplicate.
    @ivar status: the job's status after the commit group that held the event.
    """

    duplicate: bool
    jobid: str
    seqno: int | None
    status: JobStatus


@attrs.frozen
class StoredEvent:
    """
    One stored event.

    @ivar jobid: its job id.
    @ivar seqno: per-job sequence number (1, 2, ... in arrival order).
    @ivar arrived: arrival time, microseconds since the epoch.
    @ivar line: the raw ULM line as received (or as generated).
    @ivar event: the parsed event.
    """

    jobid: str
    seqno: int
    arrived: int
    line: str
    event: Event


@attrs.frozen
class JobSummary:
    """
    One row of a job listing (the indexed columns of the jobs table).
    """

    jobid: str
    owner: str | None
    state: str | None
    jobtype: str | None
    last_update: str | None
    #: Read from the stored status for the HTML list (C{None} elsewhere).
    cream_state: str | None = None
    exit_code: int | None = None
    done_code: int | None = None


@attrs.frozen
class OutboxEntry:
    """
    An event waiting to be relayed.

    @ivar id: outbox row id (increasing: the relay order).
    @ivar destination: C{"host:port"} of the L&B store port.
    @ivar event_id: the stored event's id.
    @ivar jobid: the event's job id.
    @ivar line: the event's ULM line.
    @ivar arrived: the event's arrival time, microseconds since the epoch.
    """

    id: int
    destination: str
    event_id: int
    jobid: str
    line: str
    arrived: int = 0


@attrs.frozen
class OutboxStats:
    """
    The relay state of one destination.

    @ivar destination: C{"host:port"}.
    @ivar depth: outbox rows waiting.
    @ivar oldest_arrived: arrival time of the oldest waiting event, C{None} if none.
    @ivar rejected: events in the rejected table for this destination.
    """

    destination: str
    depth: int
    oldest_arrived: int | None
    rejected: int


@attrs.frozen
class RejectedEntry:
    """
    An event the destination refused for good (kept for admins, never dropped).

    @ivar outbox_id: its former outbox row id.
    @ivar destination: C{"host:port"}.
    @ivar event_id: the stored event's id.
    @ivar major: the IL reply major (or 700 for an ENOENT that timed out).
    @ivar minor: the IL reply minor.
    @ivar reason: the reply text.
    @ivar rejected_at: when, microseconds since the epoch.
    @ivar jobid: the event's job id.
    @ivar line: the event's ULM line.
    """

    outbox_id: int
    destination: str
    event_id: int
    major: int
    minor: int
    reason: str
    rejected_at: int
    jobid: str
    line: str


class IEventStore(Interface):
    """
    Durable storage of events, job states, the CREAM id mapping and the relay outbox.
    """

    relay = Attribute(
        "C{True} for a store given a relay policy (a proxy's): its events may get outbox rows."
    )

    notifications = Attribute(
        "The store's notification registrations and queues, a"
        " L{lbtwist.store.notif.Notifications}: messages of new statuses are written"
        " in the same transaction as the events that made them."
    )

    def store(
        items: list[tuple[str, Event]], offsets: dict[str, tuple[int, int] | None] | None = None
    ) -> Deferred[list[StoreResult | LBError]]:
        """
        Store events (raw line and parsed event) in one group commit.

        @param offsets: spool file offsets (name -> C{(inode, offset)}, or L{None}
            to forget a file) written in the same transaction as the events.
        @return: C{Deferred[list[StoreResult | LBError]]}, one per item, in order;
            fires only once the group is durable.
        """

    def spool_offsets() -> Deferred[dict[str, tuple[int, int]]]:
        """
        @return: the committed spool file offsets, name -> C{(inode, offset)}.
        """

    def status(jobid: str) -> Deferred[JobStatus | None]:
        """
        @return: C{Deferred[JobStatus | None]}, the stored current status.
        """

    def events(jobid: str) -> Deferred[list[StoredEvent]]:
        """
        @return: C{Deferred[list[StoredEvent]]} in the order of the ordering key.
        """

    def last_seqcode(jobid: str) -> Deferred[str | None]:
        """
        The sequence code of the job's event that sorts last (the ordering key),
        which a producer without a code of its own continues from.

        @return: C{Deferred[str | None]}, C{None} for a job without events.
        """

    def events_range(jobid: str, after: int, limit: int) -> Deferred[list[StoredEvent]]:
        """
        A bounded read of a job's history, for paging: at most C{limit} events
        whose arrival number (C{seqno}) is above C{after}.

        @return: C{Deferred[list[StoredEvent]]} by arrival number.
        """

    def resolve(jobid: str) -> Deferred[str | None]:
        """
        @return: C{Deferred[str | None]}: the gLite id of a mapped CREAM id.
        """

    def jobs(
        owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> Deferred[list[JobSummary]]:
        """
        @return: C{Deferred[list[JobSummary]]}, by job id.
        """

    def find_job(unique: str) -> Deferred[str | None]:
        """
        The job a query address names: the job whose id has this unique part, else
        the gLite job a CREAM id (C{CREAM<digits>}) is mapped to.

        @return: C{Deferred[str | None]}, the job id.
        """

    def find_status(unique: str) -> Deferred[tuple[str, JobStatus] | None]:
        """
        L{find_job} and the job's L{status} in one read.

        @return: C{Deferred[tuple[str, JobStatus] | None]}, the job id and status.
        """

    def query_jobs(query: JobQuery) -> Deferred[JobPage]:
        """
        One page of a job listing (L{lbtwist.store.query}), newest update first.

        @return: C{Deferred[JobPage]}.
        """

    def dump(
        from_arrived: int | None = None, to_arrived: int | None = None
    ) -> Deferred[list[StoredEvent]]:
        """
        @return: C{Deferred[list[StoredEvent]]} by arrival, C{from < arrived <= to}.
        """

    def dump_page(
        from_arrived: int | None,
        to_arrived: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> Deferred[tuple[list[StoredEvent], tuple[int, int] | None]]:
        """
        Up to C{limit} events of L{dump} after the cursor C{after} (C{None}: from the
        start), and the cursor of the next page (C{None} after the last page).
        """

    def outbox_pending(destination: str | None = None) -> Deferred[list[OutboxEntry]]:
        """
        @return: C{Deferred[list[OutboxEntry]]} in outbox order.
        """

    def outbox_after(destination: str, after_id: int, limit: int) -> Deferred[list[OutboxEntry]]:
        """
        @return: C{Deferred[list[OutboxEntry]]}: at most C{limit} rows of C{destination}
            with an id above C{after_id}, in outbox order.
        """

    def outbox_ack(ids: list[int]) -> Deferred[None]:
        """
        Remove delivered rows. Calls made while a removal runs share the next
        transaction (group commit, like C{store}).

        @return: C{Deferred[None]}, fired once durable.
        """

    def reject(entry: OutboxEntry, major: int, minor: int, reason: str) -> Deferred[None]:
        """
        Move a row to the rejected table, with the reason and the time, in one
        transaction (shared with concurrent acknowledgements).

        @return: C{Deferred[None]}, fired once durable.
        """

    def outbox_stats() -> Deferred[dict[str, OutboxStats]]:
        """
        @return: C{Deferred[dict[str, OutboxStats]]} by destination (every destination
            with waiting or rejected rows).
        """

    def rejected(destination: str | None = None) -> Deferred[list[RejectedEntry]]:
        """
        @return: C{Deferred[list[RejectedEntry]]} in rejection order.
        """

    def add_commit_listener(listener: Callable[[set[str]], object]) -> None:
        """
        Call C{listener(destinations: set[str])} after each commit that may have
        added outbox rows, with their destinations.
        """

    def close() -> Deferred[None]:
        """
        @return: C{Deferred[None]}, fired when the store is closed.
        """


class StoreReader(Protocol):
    """
    Synchronous reads of a store file (the command line's, on the node): the reads
    of L{IEventStore}, answered at once. Close it when done (L{lbtwist.store.open_reader}
    does).
    """

    def status(self, jobid: str) -> JobStatus | None:
        """
        The stored current status of a job.
        """

    def events(self, jobid: str) -> list[StoredEvent]:
        """
        A job's events in the order of the ordering key.
        """

    def events_range(self, jobid: str, after: int, limit: int) -> list[StoredEvent]:
        """
        At most C{limit} of a job's events with an arrival number above C{after}.
        """

    def resolve(self, jobid: str) -> str | None:
        """
        The gLite id of a mapped CREAM id.
        """

    def jobs(
        self, owner: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[JobSummary]:
        """
        Jobs by job id.
        """

    def find_job(self, unique: str) -> str | None:
        """
        The job a unique part (or a mapped CREAM id) names.
        """

    def find_status(self, unique: str) -> tuple[str, JobStatus] | None:
        """
        L{find_job} and the job's status.
        """

    def query_jobs(self, query: JobQuery) -> JobPage:
        """
        One page of a job listing.
        """

    def dump_page(
        self,
        from_arrived: int | None,
        to_arrived: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> tuple[list[StoredEvent], tuple[int, int] | None]:
        """
        One page of L{dump} after the cursor C{after}, and the next page's cursor.
        """

    def dump(
        self, from_arrived: int | None = None, to_arrived: int | None = None
    ) -> list[StoredEvent]:
        """
        Events by arrival, C{from < arrived <= to}.
        """

    def outbox_pending(self, destination: str | None = None) -> list[OutboxEntry]:
        """
        Events waiting to be relayed, in outbox order.
        """

    def outbox_stats(self) -> dict[str, OutboxStats]:
        """
        The relay state by destination.
        """

    def rejected(self, destination: str | None = None) -> list[RejectedEntry]:
        """
        Events refused for good, in rejection order.
        """

    def close(self) -> None:
        """
        Close the file.
        """
