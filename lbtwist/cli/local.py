# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist status} and C{log}: read a local store directly (admins
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
    from lbtwist.core.states.status import JobStatus
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


def write_status(args: argparse.Namespace, ctx: CLIContext, status: JobStatus) -> None:
    """
    One job's status in the layout the options ask for: L&B's (the default),
    C{--lbtwist-layout} or C{--json}.
    """
    from lbtwist.cli.lblayout import format_lb_status

    if not getattr(args, "preamble_done", False):
        args.preamble_done = True
        status_preamble(args, ctx)
    if args.json:
        ctx.stdout.write(status_json(status) + "\n")
    elif args.lbtwist_layout:
        ctx.stdout.write("\nBOOKKEEPING INFORMATION:\n\n")
        ctx.stdout.write(format_status_text(status))
    else:
        ctx.stdout.write(format_lb_status(status))


def status_preamble(args: argparse.Namespace, ctx: CLIContext) -> None:
    """
    What C{glite-lb-job_status} prints before the jobs: an empty line, and a note
    of a C{-fullhist}/C{-fasthist} flag (written before the first job, so a run that
    finds no job prints nothing on stdout).
    """
    if args.json or args.lbtwist_layout:
        return
    ctx.stdout.write("\n")
    if args.fullhist:
        ctx.stdout.write("\nFound a FULLHIST flag\n\n")
    if args.fasthist:
        ctx.stdout.write("\nFound a FASTHIST flag\n\n")


def serve_status(args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist status -x SOCK}: ask the proxy's serve socket.
    """
    from lbtwist.client.servesock import ServeClient
    from lbtwist.core.errors import LBError
    from lbtwist.core.states.status import JobStatus

    failed = False
    with ServeClient(args.serve) as client:
        for jobid in args.jobids:
            try:
                status = JobStatus.from_json_dict(client.status(jobid))
            except LBError as e:
                ctx.stderr.write(f"lbtwist status: {jobid}: ERR {e.code} {e.message}\n")
                failed = True
                continue
            write_status(args, ctx, status)
    return 1 if failed else 0


def status_then(reader: StoreReader, jobid: str, when: int, by_arrival: bool) -> JobStatus | None:
    """
    The status C{jobid} had at C{when}: its stored events dated (or, with
    C{by_arrival}, arrived) up to then, folded again; C{None} if none was.
    """
    from lbtwist.core.states.explain import BY_ARRIVAL, BY_DATE, status_at

    stored_events = sorted(reader.events(jobid), key=lambda stored: stored.seqno)
    events = [(stored.event, stored.arrived) for stored in stored_events]
    status = status_at(events, when, by=BY_ARRIVAL if by_arrival else BY_DATE)
    return status if status.event_count else None


def handle_status(args: argparse.Namespace, ctx: CLIContext) -> int:
    if not args.jobids and not args.all:
        ctx.stderr.write("lbtwist status: give job ids or -all\n")
        return 2
    if args.by_arrival and not args.at:
        ctx.stderr.write("lbtwist status: --by-arrival needs --at\n")
        return 2
    if args.at and not args.state_dir:
        if args.serve or args.all:
            ctx.stderr.write("lbtwist status: --at needs --state-dir or HTTPS\n")
            return 2
        from lbtwist.cli.explain import remote_status_at

        return remote_status_at(args, ctx, parse_time(args.at))
    if args.serve:
        return serve_status(args, ctx)
    if not args.state_dir:
        if args.all:
            ctx.stderr.write("lbtwist status: -all needs --state-dir or -x\n")
            return 2
        from lbtwist.cli.query import remote_status

        return remote_status(args, ctx)
    failed = False
    when = parse_time(args.at) if args.at else 0
    with open_reader(args.state_dir) as reader:
        jobids = list(args.jobids)
        if args.all:
            jobids += [job.jobid for job in reader.jobs()]
        for jobid in jobids:
            found = lookup(reader, jobid)
            status: JobStatus | None
            if found and args.at:
                status = status_then(reader, found, when, args.by_arrival)
            else:
                status = reader.status(found) if found else None
            if status is None:
                ctx.stderr.write(f"lbtwist status: {jobid}: no such job\n")
                failed = True
                continue
            write_status(args, ctx, status)
    return 1 if failed else 0


def write_log(args: argparse.Namespace, ctx: CLIContext, lines: list[str]) -> None:
    """
    A job's events as C{glite-lb-job_log} prints them, or (C{--raw}) as stored.
    """
    from lbtwist.cli.lblayout import format_lb_log

    if args.raw:
        for line in lines:
            ctx.stdout.write(line.rstrip("\n") + "\n")
        ctx.stdout.write(f"\nFound {len(lines)} events\n")
    else:
        ctx.stdout.write(format_lb_log(lines))


def handle_log(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.serve:
        from lbtwist.client.servesock import ServeClient

        with ServeClient(args.serve) as client:
            write_log(args, ctx, client.events(args.jobid))
        return 0
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
            write_log(args, ctx, [stored.line for stored in events])
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        allow_abbrev=False,
        help="print job states (glite-lb-job_status)",
        description=(
            "Print the status of jobs as glite-lb-job_status does (every field, L&B's "
            "order and spelling), or in lbtwist's shorter layout, or as JSON."
        ),
    )
    p.add_argument("jobids", nargs="*", metavar="JOBID")
    p.add_argument("-x", dest="serve", metavar="SOCK", help="ask the proxy's serve socket SOCK")
    p.add_argument(
        "-all", dest="all", action="store_true", help="every job of the store (with --state-dir)"
    )
    p.add_argument("-fullhist", dest="fullhist", action="store_true", help="full child histogram")
    p.add_argument("-fasthist", dest="fasthist", action="store_true", help="fast child histogram")
    p.add_argument(
        "--lbtwist-layout",
        action="store_true",
        help="lbtwist's layout: only the fields set, readable times",
    )
    p.add_argument(
        "--state-dir", metavar="DIR", help="read the local store in DIR (no HTTPS query)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")
    p.add_argument(
        "--at",
        metavar="T",
        help="the status as it was at time T (its events dated up to T, folded again)",
    )
    p.add_argument(
        "--by-arrival",
        action="store_true",
        help="with --at: the events that had arrived by T instead",
    )
    add_client_options(p)
    p.set_defaults(handler=handle_status)

    p = subparsers.add_parser(
        "log",
        allow_abbrev=False,
        help="print a job's events (glite-lb-job_log)",
        description=(
            "Print a job's events as glite-lb-job_log does (each as L&B's unparser writes "
            "it, a blank line after each), then 'Found N events'."
        ),
    )
    p.add_argument("jobid", metavar="JOBID")
    p.add_argument("-x", dest="serve", metavar="SOCK", help="ask the proxy's serve socket SOCK")
    p.add_argument("--raw", action="store_true", help="the lines as stored, one per line")
    p.add_argument(
        "--state-dir", metavar="DIR", help="read the local store in DIR (no HTTPS query)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    add_client_options(p)
    p.set_defaults(handler=handle_log)
