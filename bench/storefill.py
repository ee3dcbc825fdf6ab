"""
What the benchmarks that need a large store share (C{bench/purge.py},
C{bench/query.py}, C{bench/stats.py}): a new store file opened for a bulk fill (the
store's own schema and migrations, no syncs, one transaction), jobs and events rows
inserted as the store writes them, the fill closed (committed, the WAL checkpointed);
and the client side of the query port (a free port, the development user's TLS).
"""

from __future__ import annotations

import os
import sqlite3
import ssl
from collections.abc import Sequence
from typing import Any

from lbtwist.core.events import Event
from lbtwist.store.batch import dupkey, identity
from lbtwist.store.purging import new_store_vacuum
from lbtwist.store.sqlite import SCHEMA_VERSION, connect, migrate

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


def tls_context(pki_dir: str) -> ssl.SSLContext:
    """
    A client context with the development user's proxy (L{lbtwist.security.devcerts}).
    """
    ctx = ssl.create_default_context(capath=os.path.join(pki_dir, "certificates"))
    proxy = os.path.join(pki_dir, "user", "x509up")
    ctx.load_cert_chain(proxy, proxy)
    return ctx
