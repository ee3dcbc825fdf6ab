"""
What the benchmarks that need a large store share (C{bench/purge.py},
C{bench/query.py}, C{bench/stats.py}): a new store file opened for a bulk fill (the
store's own schema and migrations, no syncs, one transaction), jobs and events rows
inserted as the store writes them, the fill closed (committed, the WAL checkpointed);
and the client side of the query port (a free port, the development user's TLS).
"""

from __future__ import annotations

import json
import os
import sqlite3
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

from lbtwist.core.events import Event
from lbtwist.store.batch import dupkey, identity
from lbtwist.store.purging import new_store_vacuum
from lbtwist.store.query import owner_key
from lbtwist.store.sqlite import SCHEMA_VERSION, connect, migrate

#: Jobs inserted per statement batch by L{fill_rows}.
FILL_BATCH = 50_000

JOB_INSERT = (
    "INSERT INTO jobs (jobid, owner, state, jobtype, last_update, machine, nevents, status,"
    " uniq, owner_norm, list_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
EVENT_INSERT = (
    "INSERT INTO events (id, jobid, seqno, arrived, type, date, source, host, level,"
    " user_dn, seqcode, priority, line, dupkey) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def open_fill(db: str, *, vacuum: bool = False, target: int = SCHEMA_VERSION) -> sqlite3.Connection:
    """
    A new store file at schema version C{target}, in a transaction, without syncs.

    @param vacuum: incremental vacuum on (as a store made by the service has it).
    """
    conn = connect(db)
    if vacuum:
        new_store_vacuum(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    migrate(conn, target)
    conn.execute("BEGIN")
    return conn


def event_row(
    event_id: int, jobid: str, seqno: int, arrived: int, line: str, ev: Event
) -> tuple[Any, ...]:
    """
    The events row of C{ev} (its ULM C{line}), as the store writes it.
    """
    return (
        event_id,
        jobid,
        seqno,
        arrived,
        ev.type,
        ev.date,
        ev.source,
        ev.host,
        ev.level,
        ev.user,
        ev.seqcode,
        ev.priority,
        line,
        dupkey(identity(ev)),
    )


def insert(
    conn: sqlite3.Connection, job_rows: Sequence[Any], event_rows: Sequence[Any] = ()
) -> None:
    """
    Insert jobs rows (L{JOB_INSERT}'s columns) and events rows (L{event_row}).
    """
    conn.executemany(JOB_INSERT, job_rows)
    if event_rows:
        conn.executemany(EVENT_INSERT, event_rows)


def close_fill(conn: sqlite3.Connection) -> None:
    """
    Commit the fill, checkpoint the WAL into the file, close.
    """
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def job_row(
    jobid: str, owner: str, state: str, last: str, nevents: int, status: Any, unique: str
) -> tuple[Any, ...]:
    """
    The jobs row (L{JOB_INSERT}'s columns) of a CREAM job of C{owner} last
    updated at C{last} (ISO form), its status the JSON object C{status}.
    """
    text = json.dumps(status, separators=(",", ":"), sort_keys=True)
    return (
        jobid,
        owner,
        state,
        "CREAM",
        last,
        "cream",
        nevents,
        text,
        unique,
        owner_key(owner),
        last,
    )


def fill_rows(
    conn: sqlite3.Connection, jobs: Iterable[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]
) -> None:
    """
    Insert each job's row and its events' rows, L{FILL_BATCH} jobs at a time,
    then close the fill (L{close_fill}).
    """
    rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    for row, events in jobs:
        rows.append(row)
        event_rows.extend(events)
        if len(rows) >= FILL_BATCH:
            insert(conn, rows, event_rows)
            rows, event_rows = [], []
    insert(conn, rows, event_rows)
    close_fill(conn)


def fill_figures(db: str, started: float) -> dict[str, float]:
    """
    The seconds a fill took since C{started} (C{perf_counter}) and the file's size.
    """
    return {"seconds": time.perf_counter() - started, "size_mb": os.path.getsize(db) / 1e6}


class WallClock:
    """
    The clock of the development PKI made for a benchmark's service: the time now.
    """

    def seconds(self) -> float:
        return time.time()


def tls_context(pki_dir: str) -> ssl.SSLContext:
    """
    A client context with the development user's proxy (L{lbtwist.security.devcerts}).
    """
    ctx = ssl.create_default_context(capath=os.path.join(pki_dir, "certificates"))
    proxy = os.path.join(pki_dir, "user", "x509up")
    ctx.load_cert_chain(proxy, proxy)
    return ctx
