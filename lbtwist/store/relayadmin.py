# -*- test-case-name: tests.unit.test_relayadmin -*-
"""
The relay's administration on a proxy's store: queues per destination, the
rejected events, re-queueing and dropping them (C{lbtwist relay} locally, the
query port's C{/relay} routes over HTTPS).

Each write is one SQLite transaction on a connection of its own (WAL and the
busy timeout let it run beside the service's writer); re-queued events get new
outbox rows, so they are sent after what waits already.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from lbtwist.core.errors import InvalidValue, UnknownJob


def open_store(state_dir: str) -> sqlite3.Connection:
    """
    A writable connection to the store of C{state_dir}.

    @raise UnknownJob: no store there; L{InvalidValue}: another schema version.
    """
    from lbtwist.store import store_path
    from lbtwist.store.sqlite import SCHEMA_VERSION, connect, schema_version

    path = store_path(state_dir)
    if not os.path.exists(path):
        raise UnknownJob(f"no store in {state_dir}")
    conn = connect(path)
    found = schema_version(conn)
    if found != SCHEMA_VERSION:
        conn.close()
        raise InvalidValue(f"store schema version {found}, expected {SCHEMA_VERSION}")
    return conn


def selection(
    events: Sequence[int] | None, destination: str | None, everything: bool
) -> tuple[str, list[object]]:
    """
    The SQL condition of the rows named by event ids, a destination, or all.

    @raise InvalidValue: nothing named.
    """
    clauses: list[str] = []
    params: list[object] = []
    if events:
        clauses.append(f"event_id IN ({', '.join('?' * len(events))})")
        params.extend(events)
    if destination:
        clauses.append("destination = ?")
        params.append(destination)
    if not clauses and not everything:
        raise InvalidValue("name events (--event ID), a --destination, or --all")
    return (" AND ".join(clauses) or "1"), params


def status_rows(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """
    @return: per destination: waiting events, the oldest one's age (seconds), rejected.
    """
    out: dict[str, dict[str, Any]] = {}
    for dest, depth, oldest in conn.execute(
        "SELECT o.destination, COUNT(*), MIN(e.arrived) FROM outbox o"
        " JOIN events e ON e.id = o.event_id GROUP BY o.destination"
    ):
        out[dest] = {
            "destination": dest,
            "depth": depth,
            "oldest_age": max(now - oldest / 1e6, 0.0),
            "rejected": 0,
        }
    for dest, n in conn.execute("SELECT destination, COUNT(*) FROM rejected GROUP BY destination"):
        row = out.setdefault(
            dest, {"destination": dest, "depth": 0, "oldest_age": None, "rejected": 0}
        )
        row["rejected"] = n
    return [out[d] for d in sorted(out)]


def rejected_rows(conn: sqlite3.Connection, destination: str | None) -> list[dict[str, Any]]:
    sql = (
        "SELECT r.event_id, r.destination, r.major, r.minor, r.reason, r.rejected_at, e.jobid,"
        " e.line FROM rejected r JOIN events e ON e.id = r.event_id"
    )
    params: list[object] = []
    if destination:
        sql += " WHERE r.destination = ?"
        params.append(destination)
    keys = ("event", "destination", "major", "minor", "reason", "rejected_at", "jobid", "line")
    return [
        dict(zip(keys, row, strict=True)) for row in conn.execute(sql + " ORDER BY r.id", params)
    ]


def retry(conn: sqlite3.Connection, where: str, params: list[object]) -> int:
    """
    Move the selected rejected events back to the outbox, in their order.

    @return: how many.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute(
            "INSERT INTO outbox (destination, event_id) SELECT destination, event_id"
            f" FROM rejected WHERE {where} ORDER BY id",
            params,
        )
        n = cur.rowcount
        conn.execute(f"DELETE FROM rejected WHERE {where}", params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def drop(conn: sqlite3.Connection, table: str, where: str, params: list[object]) -> int:
    """
    Remove the selected rows of C{table} (C{rejected} or C{outbox}).

    @return: how many.
    """
    assert table in ("rejected", "outbox")
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = conn.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n
