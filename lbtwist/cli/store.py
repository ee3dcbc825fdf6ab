# -*- test-case-name: tests.integration.test_cli_store -*-
"""
C{lbtwist store}: administer a PostgreSQL store (C{--store-url}).

C{lbtwist store copy --from DIR --to URL} copies a state directory's SQLite store
into an empty PostgreSQL store and checks every job's status afterwards;
C{lbtwist store migrate --store-url URL} creates the schema, or brings an older one
to this version (a front end does the same when it starts: this lets an admin do
it first, once, with an account that may create tables); C{lbtwist store version}
prints the database's schema version and the one this code writes.
"""

from __future__ import annotations

import argparse
from typing import Any

from lbtwist.cli.common import CLIContext


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "store",
        allow_abbrev=False,
        help="create, migrate or inspect a PostgreSQL store",
        description=(
            "Administer the PostgreSQL database that twistd lbserver --store-url "
            "front ends share: 'migrate' creates or upgrades its schema, 'version' "
            "prints its schema version."
        ),
    )
    p.add_argument("action", choices=("migrate", "version", "copy"))
    p.add_argument(
        "--store-url",
        metavar="URL",
        help="the database: postgresql://USER@HOST:PORT/DB (or ?host=/socket/dir)",
    )
    p.add_argument("--from", dest="source", metavar="DIR", help="copy: the state directory to copy")
    p.add_argument("--to", dest="target", metavar="URL", help="copy: the postgresql:// store")
    p.set_defaults(handler=handle_store)


def handle_copy(args: argparse.Namespace, ctx: CLIContext) -> int:
    import os

    from lbtwist.store import store_path
    from lbtwist.store.postgres import copy_from_sqlite, is_postgres_url

    if not is_postgres_url(args.target):
        ctx.stderr.write(f"lbtwist store copy: {args.target!r} is not a postgresql:// URL\n")
        return 2
    path = store_path(args.source)
    if not os.path.exists(path):
        ctx.stderr.write(f"lbtwist store copy: no lbtwist store in {args.source}\n")
        return 2
    counts = copy_from_sqlite(path, args.target)
    ctx.stdout.write(
        " ".join(f"{table}={count}" for table, count in counts.items())
        + "; every job's status checked\n"
    )
    return 0


def handle_store(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.action == "copy":
        if not args.source or not args.target:
            ctx.stderr.write("lbtwist store copy: give --from DIR and --to URL\n")
            return 2
        return handle_copy(args, ctx)
    if not args.store_url:
        ctx.stderr.write(f"lbtwist store {args.action}: give --store-url URL\n")
        return 2
    from lbtwist.store.postgres import (
        SCHEMA_VERSION,
        connect,
        is_postgres_url,
        migrate,
        schema_version,
    )

    if not is_postgres_url(args.store_url):
        ctx.stderr.write(f"lbtwist store: {args.store_url!r} is not a postgresql:// URL\n")
        return 2
    conn = connect(args.store_url)
    try:
        if args.action == "version":
            found = schema_version(conn)
            ctx.stdout.write(f"schema version {found} (this lbtwist writes {SCHEMA_VERSION})\n")
            return 0
        found = migrate(conn)
        if found == SCHEMA_VERSION:
            ctx.stdout.write(f"schema version {found}: up to date\n")
        else:
            ctx.stdout.write(f"schema version {found} -> {SCHEMA_VERSION}\n")
        return 0
    finally:
        conn.close()
