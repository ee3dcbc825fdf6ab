# -*- test-case-name: tests.unit.test_store -*-
"""
Durable storage of events, job states, CREAM id mappings and the relay outbox.

L{lbtwist.store.sqlite.SQLiteStore} is the real store,
L{lbtwist.store.memory.MemoryStore} the one for unit tests; both provide
L{IEventStore} and share their rules (L{lbtwist.store.batch}).
"""

from lbtwist.store.interface import (
    IEventStore,
    JobSummary,
    OutboxEntry,
    StoredEvent,
    StoreResult,
)

__all__ = ["IEventStore", "JobSummary", "OutboxEntry", "StoreResult", "StoredEvent"]
