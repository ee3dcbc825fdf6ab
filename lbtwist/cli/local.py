# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist status}, C{log} and C{dump}: read a local store directly (admins
on the node, no TLS) through L{lbtwist.store.open_reader}; without
C{--state-dir}, C{status} and C{log} ask a query server over HTTPS
(L{lbtwist.cli.query}).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from lbtwist.cli.common import CLIContext
from lbtwist.cli.query import add_client_options
from lbtwist.cli.replay import format_status_text, status_json
from lbtwist.core.errors import InvalidValue

if TYPE_CHECKING:
    from lbtwist.store import StoreReader

_COMPACT = re.compile(r"^([0-9]{14})(?:\.([0-9]{1,6}))?$")
_EPOCH = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


def parse_time(text: str) -> int:
    """
    A time given on the command line, in microseconds since the epoch (UTC):
    C{YYYYMMDDHHMMSS[.uuuuuu]}, ISO 8601 (UTC unless an offset is given), or
    epoch seconds.

    @raise InvalidValue: on anything else.
    """
    text = text.strip()
    m = _COMPACT.match(text)
    try:
        if m:
            when = datetime.datetime.strptime(m.group(1), "%Y%m%d%H%M%S")
            micro = int((m.group(2) or "0").ljust(6, "0"))
            when = when.replace(microsecond=micro, tzinfo=datetime.UTC)
        elif _EPOCH.match(text):
            seconds, _, frac = text.partition(".")
            return int(seconds) * 1_000_000 + int((frac or "0")[:6].ljust(6, "0"))
        else:
            when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
    except ValueError:
        raise InvalidValue(
            f"bad time {text!r}: use YYYYMMDDHHMMSS, ISO 8601 or epoch seconds"
        ) from None
    delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def open_reader(state_dir: str) -> AbstractContextManager[StoreReader]:
    """
    The store of C{state_dir}, read-only (L{lbtwist.store.open_reader}: loaded
    only by the commands that read it).
    """
    from lbtwist.store import open_reader as open_store

    return open_store(state_dir)


def lookup(reader: StoreReader, jobid: str) -> str | None:
    """
    The stored job id for C{jobid} (a CREAM id of a mapped WMS job resolves to
    its gLite id), or C{None} if the store does not know the job.
    """
    resolved = reader.resolve(jobid)
    if resolved:
        return str(resolved)
    if reader.status(jobid) is not None:
        return jobid
    return None


def handle_status(args: argparse.Namespace, ctx: CLIContext) -> int:
    if not args.state_dir:
        from lbtwist.cli.query import remote_status

        return remote_status(args, ctx)
    failed = False
    with open_reader(args.state_dir) as reader:
        for jobid in args.jobids:
            found = lookup(reader, jobid)
            status = reader.status(found) if found else None
            if status is None:
                ctx.stderr.write(f"lbtwist status: {jobid}: no such job\n")
                failed = True
                continue
            if args.json:
                ctx.stdout.write(status_json(status) + "\n")
            else:
                ctx.stdout.write("\nBOOKKEEPING INFORMATION:\n\n")
                ctx.stdout.write(format_status_text(status))
    return 1 if failed else 0


def handle_log(args: argparse.Namespace, ctx: CLIContext) -> int:
    if not args.state_dir:
        from lbtwist.cli.query import remote_log

        return remote_log(args, ctx)
    with open_reader(args.state_dir) as reader:
        found = lookup(reader, args.jobid)
        events = reader.events(found) if found else []
        if not events:
            ctx.stderr.write(f"lbtwist log: {args.jobid}: no such job\n")
            return 1
        if args.json:
            from lbtwist.core.ulm import format_date

            for stored in events:
                record = {
                    "jobid": stored.jobid,
                    "seqno": stored.seqno,
                    "arrived": format_date(stored.arrived),
                    "line": stored.line.rstrip("\n"),
                }
                ctx.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            for stored in events:
                ctx.stdout.write(stored.line.rstrip("\n") + "\n")
            ctx.stdout.write(f"\nFound {len(events)} events\n")
    return 0


def handle_dump(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.core.ulm import format_date

    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    with open_reader(args.state_dir) as reader:
        for stored in reader.dump(start, end):
            line = stored.line.rstrip("\n")
            ctx.stdout.write(f"DG.ARRIVED={format_date(stored.arrived)} {line}\n")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="print job states (glite-lb-job_status)",
        description="Print the status of jobs as key : value lines (or JSON).",
    )
    p.add_argument("jobids", nargs="+", metavar="JOBID")
    p.add_argument(
        "--state-dir", metavar="DIR", help="read the local store in DIR (no HTTPS query)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")
    add_client_options(p)
    p.set_defaults(handler=handle_status)

    p = subparsers.add_parser(
        "log",
        help="print a job's events (glite-lb-job_log)",
        description="Print a job's events as ULM lines, then 'Found N events'.",
    )
    p.add_argument("jobid", metavar="JOBID")
    p.add_argument(
        "--state-dir", metavar="DIR", help="read the local store in DIR (no HTTPS query)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    add_client_options(p)
    p.set_defaults(handler=handle_log)

    p = subparsers.add_parser(
        "dump",
        help="write stored events in L&B dump format",
        description=(
            "Write the stored events by arrival, each as DG.ARRIVED=<date> <event line>. "
            "Times T: YYYYMMDDHHMMSS, ISO 8601 or epoch seconds (UTC)."
        ),
    )
    p.add_argument("--state-dir", metavar="DIR", required=True, help="the local store's directory")
    p.add_argument("--from", dest="from_", metavar="T", help="events arrived at or after T")
    p.add_argument("--to", metavar="T", help="events arrived before T")
    p.set_defaults(handler=handle_dump)
