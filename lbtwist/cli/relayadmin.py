# -*- test-case-name: tests.unit.test_relayadmin -*-
"""
C{lbtwist relay status|rejected|retry|drop}: the relay's queues and rejected
events, from a proxy's state directory.

C{retry} moves rejected events back to the outbox (new rows: they are sent
after what waits already); a running proxy picks them up at its next relay
sweep (C{--relay-sweep-interval}). C{drop} removes rejected events (or, with
C{--pending}, waiting ones) for good, with a reason written to the state
directory's C{relay-admin.log} and printed. Writes are one SQLite transaction
each, beside the running service (WAL, busy timeout).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from lbtwist.cli.common import CLIContext
from lbtwist.core.errors import InvalidValue, UnknownJob
from lbtwist.core.ulm import format_date

#: The file of the state directory that records every drop and retry.
ADMIN_LOG = "relay-admin.log"


def _open(state_dir: str) -> sqlite3.Connection:
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


def _where(args: Any) -> tuple[str, list[object]]:
    """
    The rejected rows the selection names (C{--event}, C{--destination}, C{--all}).
    """
    clauses: list[str] = []
    params: list[object] = []
    if args.event:
        clauses.append(f"event_id IN ({', '.join('?' * len(args.event))})")
        params.extend(args.event)
    if args.destination:
        clauses.append("destination = ?")
        params.append(args.destination)
    if not clauses and not args.all:
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


def _record(state_dir: str, ctx: CLIContext, text: str) -> None:
    line = f"{format_date(ctx.now())} {ctx.login()}: {text}\n"
    with open(os.path.join(state_dir, ADMIN_LOG), "a") as f:
        f.write(line)


def handle_relay(args: Any, ctx: CLIContext) -> int:
    conn = _open(args.state_dir)
    try:
        action = args.action
        if action == "status":
            rows = status_rows(conn, ctx.now() / 1e6)
            if args.json:
                for row in rows:
                    ctx.stdout.write(json.dumps(row, sort_keys=True) + "\n")
                return 0
            if not rows:
                ctx.stdout.write("relay: nothing waiting, nothing rejected\n")
            for row in rows:
                age = "-" if row["oldest_age"] is None else f"{row['oldest_age']:.0f} s"
                ctx.stdout.write(
                    f"{row['destination']}: {row['depth']} waiting, oldest {age},"
                    f" {row['rejected']} rejected\n"
                )
            return 0
        if action == "rejected":
            rows = rejected_rows(conn, args.destination)
            for row in rows:
                if args.json:
                    ctx.stdout.write(json.dumps(row, sort_keys=True) + "\n")
                    continue
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["rejected_at"] / 1e6))
                ctx.stdout.write(
                    f"event {row['event']} of {row['jobid']} to {row['destination']}:"
                    f" {row['major']}/{row['minor']} {row['reason']} (at {when} UTC)\n"
                )
            if not args.json:
                n = len(rows)
                ctx.stdout.write(f"{n} rejected event{'' if n == 1 else 's'}\n")
            return 0
        where, params = _where(args)
        if action == "retry":
            n = retry(conn, where, params)
            what = f"re-queued {n} rejected event{'' if n == 1 else 's'}"
        else:
            if not args.reason:
                raise InvalidValue("drop needs a --reason (it is logged)")
            table = "outbox" if args.pending else "rejected"
            n = drop(conn, table, where, params)
            kind = "waiting" if args.pending else "rejected"
            what = f"dropped {n} {kind} event{'' if n == 1 else 's'} ({args.reason})"
        selection = " ".join(
            [*(f"event {e}" for e in args.event or ())]
            + ([f"destination {args.destination}"] if args.destination else [])
            + (["all"] if args.all else [])
        )
        _record(args.state_dir, ctx, f"{what}: {selection}")
        ctx.stdout.write(f"relay: {what}\n")
        if action == "retry" and n:
            ctx.stdout.write("relay: a running proxy sends them at its next relay sweep\n")
        return 0 if n else 1
    finally:
        conn.close()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "relay",
        allow_abbrev=False,
        help="the relay's queues and rejected events (status, rejected, retry, drop)",
        description=(
            "Show the relay queue per destination and the events destinations rejected; "
            "re-queue rejected events after fixing the cause, or drop them with a reason "
            "(logged in STATE_DIR/relay-admin.log)."
        ),
    )
    p.add_argument("action", choices=("status", "rejected", "retry", "drop"))
    p.add_argument("--state-dir", required=True, metavar="DIR", help="the proxy's state dir")
    p.add_argument("--destination", metavar="HOST:PORT", help="only this destination")
    p.add_argument(
        "--event", type=int, action="append", metavar="ID", help="this event (repeatable)"
    )
    p.add_argument("--all", action="store_true", help="every rejected event (retry, drop)")
    p.add_argument("--reason", help="why (drop; required)")
    p.add_argument("--pending", action="store_true", help="drop waiting events, not rejected ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=handle_relay)
