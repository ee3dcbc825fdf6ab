# -*- test-case-name: tests.unit.test_store -*-
"""
Durable storage of events, job states, CREAM id mappings and the relay outbox.

L{lbtwist.store.sqlite.SQLiteStore} is the store (L{IEventStore}); the rules every
backend shares are in L{lbtwist.store.batch}, and the in-memory store of the tests
is L{lbtwist.testing.MemoryStore}. The store knows no role: a proxy's is given a
L{lbtwist.core.relaypolicy.RelayPolicy}. The command line reads a state
directory's store through L{open_reader}.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lbtwist.store.interface import (
    IEventStore,
    JobSummary,
    OutboxEntry,
    StoredEvent,
    StoreReader,
    StoreResult,
)

__all__ = [
    "STORE_FILE",
    "IEventStore",
    "JobSummary",
    "OutboxEntry",
    "StoreReader",
    "StoreResult",
    "StoredEvent",
    "open_loader",
    "open_reader",
    "store_path",
]
if TYPE_CHECKING:
    from lbtwist.store.sqlite import SQLiteLoader

#: The store file inside a state directory.
STORE_FILE = "lbtwist.sqlite"


def store_path(state_dir: str) -> str:
    """
    @return: the store file of a state directory.
    """
    return os.path.join(state_dir, STORE_FILE)


@contextmanager
def open_reader(state_dir: str) -> Iterator[StoreReader]:
    """
    Open the store of C{state_dir} read-only (a running service may write it
    meanwhile), closed on leaving the C{with} block.

    @raise FileNotFoundError: there is no store there.
    @raise lbtwist.core.errors.LBError: its schema is not the one this code reads.
    """
    # Imported here: a command that opens no store loads no SQLite code.
    from lbtwist.store.sqlite import SQLiteReader

    path = store_path(state_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no lbtwist store", path)
    reader = SQLiteReader(path)
    try:
        yield reader
    finally:
        reader.close()


@contextmanager
def open_loader(state_dir: str, *, max_future_skew: int | None = None) -> Iterator[SQLiteLoader]:
    """
    The store of C{state_dir} (created and migrated as needed) for an offline load
    (L{lbtwist.store.sqlite.SQLiteLoader}: C{load(items)}), closed on leaving the block.
    The directory's lock is held meanwhile (L{lbtwist.store.statelock}): while its
    service runs, the load is refused.

    @raise lbtwist.store.statelock.StateDirBusy: the directory is in use.
    """
    from lbtwist.store import statelock
    from lbtwist.store.sqlite import SQLiteLoader

    os.makedirs(state_dir, exist_ok=True)
    lock = statelock.acquire(
        state_dir, hint="stop it first: lbtwist load writes the store while nothing else runs"
    )
    try:
        loader = SQLiteLoader(store_path(state_dir), max_future_skew=max_future_skew)
        try:
            yield loader
        finally:
            loader.close()
    finally:
        lock.release()
