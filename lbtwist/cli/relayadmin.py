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
import time
from typing import Any

from lbtwist.cli.common import CLIContext
from lbtwist.core.errors import InvalidValue
from lbtwist.core.ulm import format_date
from lbtwist.store.relayadmin import (
    drop,
    open_store,
    rejected_rows,
    retry,
    selection,
    status_rows,
)

#: The file of the state directory that records every drop and retry.
ADMIN_LOG = "relay-admin.log"


def _record(state_dir: str, ctx: CLIContext, text: str) -> None:
    line = f"{format_date(ctx.now())} {ctx.login()}: {text}\n"
    with open(os.path.join(state_dir, ADMIN_LOG), "a") as f:
        f.write(line)


def _remote(args: Any, ctx: CLIContext) -> Any:
    """
    Call the proxy's C{/relay} routes on C{-m HOST:PORT} with the user's grid credentials.
    """
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    from lbtwist.client.query import QueryError, find_credentials

    try:
        creds = find_credentials(
            ctx.env, uid=os.getuid(), cert=args.cert, key=args.key, capath=args.capath
        )
        context = ssl.create_default_context(capath=creds.ca_dir)
        context.load_cert_chain(creds.cert, creds.key)
    except (QueryError, ssl.SSLError) as e:
        raise InvalidValue(f"credentials: {e}") from None
    query: list[tuple[str, str]] = [("event", str(e)) for e in args.event or ()]
    if args.destination:
        query.append(("destination", args.destination))
    if args.all:
        query.append(("all", "1"))
    if args.reason:
        query.append(("reason", args.reason))
    if args.pending:
        query.append(("pending", "1"))
    path = {"status": "", "rejected": "/rejected"}.get(args.action, f"/{args.action}")
    url = f"https://{args.server}/relay{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    method = "GET" if args.action in ("status", "rejected") else "POST"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            error = e.reason
        raise InvalidValue(f"{args.server}: {e.code} {error}") from None
    except urllib.error.URLError as e:
        raise InvalidValue(f"{args.server}: {e.reason}") from None


def _status_line(row: dict[str, Any]) -> str:
    age = "-" if row["oldest_age"] is None else f"{row['oldest_age']:.0f} s"
    text = f"{row['destination']}: {row['depth']} waiting, oldest {age}, {row['rejected']} rejected"
    if "holder" in row:
        if row["holder"] is None:
            text += ", no lease"
        elif row["lease_expires_in"] > 0:
            text += (
                f", sent by {row['holder']} (lease {row['lease_token']},"
                f" {row['lease_expires_in']:.0f} s left)"
            )
        else:
            text += (
                f", lease of {row['holder']} expired {-row['lease_expires_in']:.0f} s ago"
                " (another front end takes it)"
            )
    return text + "\n"


def _handle_postgres(args: Any, ctx: CLIContext) -> int:
    """
    C{status} and C{rejected} of a PostgreSQL store shared by front ends (C{--store-url}),
    with the front end that holds each destination's relay lease.
    """
    from lbtwist.store.pglease import lease_rows
    from lbtwist.store.postgres import connect, is_postgres_url

    if not is_postgres_url(args.store_url):
        raise InvalidValue(f"--store-url: {args.store_url!r} is not a postgresql:// URL")
    if args.action not in ("status", "rejected"):
        raise InvalidValue(f"relay {args.action}: use --state-dir or -m (not --store-url)")
    now = ctx.now() / 1e6
    conn: Any = connect(args.store_url)  # the same statements as on SQLite
    try:
        if args.action == "rejected":
            rows = rejected_rows(conn, args.destination)
            for row in rows:
                ctx.stdout.write(
                    json.dumps(row, sort_keys=True) + "\n"
                    if args.json
                    else f"event {row['event']} of {row['jobid']} to {row['destination']}:"
                    f" {row['major']}/{row['minor']} {row['reason']}\n"
                )
            return 0
        status = {row["destination"]: row for row in status_rows(conn, now)}
        leases = lease_rows(conn)
    finally:
        conn.close()
    for dest in leases:
        status.setdefault(
            dest, {"destination": dest, "depth": 0, "oldest_age": None, "rejected": 0}
        )
    for dest, row in status.items():
        holder, token, expires = leases.get(dest, (None, 0, 0))
        row["holder"] = holder
        row["lease_token"] = token
        row["lease_expires_in"] = expires / 1e6 - now if holder is not None else None
    rows = [status[d] for d in sorted(status)]
    if not rows and not args.json:
        ctx.stdout.write("relay: nothing waiting, nothing rejected\n")
    for row in rows:
        ctx.stdout.write(json.dumps(row, sort_keys=True) + "\n" if args.json else _status_line(row))
    return 0


def handle_relay(args: Any, ctx: CLIContext) -> int:
    if args.server:
        return _handle_remote(args, ctx)
    if getattr(args, "store_url", None):
        return _handle_postgres(args, ctx)
    conn = open_store(args.state_dir)
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
        where, params = selection(args.event, args.destination, args.all)
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
        named = " ".join(
            [*(f"event {e}" for e in args.event or ())]
            + ([f"destination {args.destination}"] if args.destination else [])
            + (["all"] if args.all else [])
        )
        _record(args.state_dir, ctx, f"{what}: {named}")
        ctx.stdout.write(f"relay: {what}\n")
        if action == "retry" and n:
            ctx.stdout.write("relay: a running proxy sends them at its next relay sweep\n")
        return 0 if n else 1
    finally:
        conn.close()


def _handle_remote(args: Any, ctx: CLIContext) -> int:
    if args.action == "drop" and not args.reason:
        raise InvalidValue("drop needs a --reason (it is logged)")
    if args.action in ("retry", "drop"):
        selection(args.event, args.destination, args.all)  # the same check as local
    result = _remote(args, ctx)
    if args.action in ("status", "rejected"):
        rows = list(result)
        for row in rows:
            if args.json:
                ctx.stdout.write(json.dumps(row, sort_keys=True) + "\n")
            elif args.action == "status":
                age = "-" if row["oldest_age"] is None else f"{row['oldest_age']:.0f} s"
                ctx.stdout.write(
                    f"{row['destination']}: {row['depth']} waiting, oldest {age},"
                    f" {row['rejected']} rejected\n"
                )
            else:
                ctx.stdout.write(
                    f"event {row['event']} of {row['jobid']} to {row['destination']}:"
                    f" {row['major']}/{row['minor']} {row['reason']}\n"
                )
        if args.action == "rejected" and not args.json:
            n = len(rows)
            ctx.stdout.write(f"{n} rejected event{'' if n == 1 else 's'}\n")
        return 0
    n = int(result["events"])
    verb = "re-queued" if args.action == "retry" else "dropped"
    ctx.stdout.write(f"relay: {verb} {n} event{'' if n == 1 else 's'} on {args.server}\n")
    return 0 if n else 1


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
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", metavar="DIR", help="the proxy's state dir (local)")
    where.add_argument(
        "-m",
        dest="server",
        metavar="HOST:PORT",
        help="the proxy's query port over HTTPS (ADMIN_ACCESS or --super-user)",
    )
    where.add_argument(
        "--store-url",
        metavar="URL",
        help="a PostgreSQL store shared by front ends (status, rejected; with lease holders)",
    )
    p.add_argument("--cert", help="client certificate or proxy (-m; default: grid lookup)")
    p.add_argument("--key", help="client key (-m)")
    p.add_argument("--capath", help="CA directory (-m; default X509_CERT_DIR)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (-m; 30)")
    p.add_argument("--destination", metavar="HOST:PORT", help="only this destination")
    p.add_argument(
        "--event", type=int, action="append", metavar="ID", help="this event (repeatable)"
    )
    p.add_argument("--all", action="store_true", help="every rejected event (retry, drop)")
    p.add_argument("--reason", help="why (drop; required)")
    p.add_argument("--pending", action="store_true", help="drop waiting events, not rejected ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=handle_relay)
