# -*- test-case-name: tests.unit.test_dump -*-
"""
C{lbtwist dump}: the stored events in L&B's dump format, all of them or those
that arrived in a window C{(from, to]}, as C{glite-lb-dump} wrote them; with
C{--since-last}, from where the previous dump of the same state directory ended
(the bound is kept in L{LAST_FILE} there).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from lbtwist.cli.common import CLIContext
from lbtwist.cli.local import open_reader, parse_time
from lbtwist.core.errors import InvalidValue

if TYPE_CHECKING:
    from lbtwist.store import StoreReader

#: The file in the state directory keeping the bounds of the last dump.
LAST_FILE = "dump.last"

#: Events read from the store per page (the memory a dump holds at once).
PAGE = 1000

#: Default seconds before now where a dump without C{--to} stops.
DEFAULT_SETTLE = 10.0


def read_last(state_dir: str) -> tuple[int, int] | None:
    """
    The C{(from, to)} bounds (microseconds) of the last dump of C{state_dir}, if any.

    @raise InvalidValue: the file is not what L{write_last} writes.
    """
    return read_last_file(os.path.join(state_dir, LAST_FILE))


def write_last(state_dir: str, low: int, high: int) -> None:
    """
    Keep the bounds of a finished dump of C{state_dir}.
    """
    write_last_file(os.path.join(state_dir, LAST_FILE), low, high)


def read_last_file(path: str) -> tuple[int, int] | None:
    """
    The bounds kept in C{path} by L{write_last_file}, if it exists.

    @raise InvalidValue: the file holds something else.
    """
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        low, high = (int(x) for x in text.split())
    except ValueError:
        raise InvalidValue(f"{path}: not two times in microseconds") from None
    return low, high


def write_last_file(path: str, low: int, high: int) -> None:
    """
    Keep the bounds of a finished dump (written to a temporary file, then renamed).
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{low} {high}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def window_of(
    args: argparse.Namespace, ctx: CLIContext, last: tuple[int, int] | None
) -> tuple[int | None, int | None]:
    """
    The window C{(from, to]} the options ask for; with C{--since-last}, C{to}
    defaults to now minus C{--settle} (events still being committed come in the
    next dump), else to no bound.

    @raise InvalidValue: bad times, or C{--since-last} with C{--from}.
    """
    if args.since_last and args.from_:
        raise InvalidValue("--since-last and --from exclude each other")
    if args.settle < 0:
        raise InvalidValue("--settle must not be negative")
    now = ctx.now()
    low = time_arg(args.from_, now, last) if args.from_ else None
    if args.since_last and last is not None:
        low = last[1]
    settled = now - int(args.settle * 1_000_000)
    high = time_arg(args.to, now, last) if args.to else settled if args.since_last else None
    if low is not None and high is not None and high < low:
        raise InvalidValue("the window ends before it starts")
    return low, high


def time_arg(text: str, now: int, last: tuple[int, int] | None) -> int:
    """
    A time option: C{now}, C{last_start} / C{last_end} (the bounds of the last
    dump, as L&B's dump named them), or L{parse_time}'s forms.
    """
    word = text.strip().lower()
    if word == "now":
        return now
    if word in ("last_start", "last_end"):
        if last is None:
            raise InvalidValue(f"{text}: no dump was recorded yet")
        return last[0] if word == "last_start" else last[1]
    return parse_time(text)


def write_dump(
    reader: StoreReader,
    ctx: CLIContext,
    low: int | None,
    high: int | None,
    page_size: int = PAGE,
) -> int:
    """
    Write the events that arrived in C{(low, high]} page by page.

    @return: how many were written.
    """
    from lbtwist.core.unparse import dump_line

    count = 0
    after: tuple[int, int] | None = None
    while True:
        page, after = reader.dump_page(low, high, after, page_size)
        for stored in page:
            ctx.stdout.write(dump_line(stored.event, stored.arrived))
        count += len(page)
        if after is None:
            return count


def remote_dump(args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist dump -m HOST:PORT}: ask the server's C{GET /dump} with the user's
    credentials (an admin's); C{--since-last} keeps its bound in C{--last-file}.
    """
    from urllib.parse import urlencode

    from lbtwist.cli.query import run_query
    from lbtwist.client.query import QueryClient, base_url
    from lbtwist.core.jobid import parse_endpoint
    from lbtwist.core.ulm import format_date

    if args.since_last and not args.last_file:
        raise InvalidValue("-m with --since-last needs --last-file FILE")
    host, port = parse_endpoint(args.server)
    last = read_last_file(args.last_file) if args.last_file else None
    low, high = window_of(args, ctx, last)
    query = {}
    if low is not None:
        query["from"] = format_date(low)
    if high is not None:
        query["to"] = format_date(high)
    path = "/dump" + (f"?{urlencode(query)}" if query else "")

    async def ask(client: QueryClient) -> int:
        reply = await client.get([base_url(host, port)], path, what="the dump")
        ctx.stdout.write(reply.body.decode("utf-8", "surrogateescape"))
        ctx.stdout.flush()
        if args.last_file:
            end = high if high is not None else ctx.now() - int(args.settle * 1_000_000)
            write_last_file(args.last_file, low if low is not None else 0, end)
        return 0

    return run_query(args, ctx, ask)


def handle_dump(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.server:
        return remote_dump(args, ctx)
    if not args.state_dir:
        ctx.stderr.write("lbtwist dump: give --state-dir DIR or -m HOST:PORT\n")
        return 2
    if args.page < 1:
        ctx.stderr.write("lbtwist dump: --page must be at least 1\n")
        return 2
    last = read_last(args.state_dir) if os.path.isdir(args.state_dir) else None
    low, high = window_of(args, ctx, last)
    with open_reader(args.state_dir) as reader:
        count = write_dump(reader, ctx, low, high, args.page)
    ctx.stdout.flush()
    # An unbounded dump is recorded as ending at now - settle: the next --since-last
    # dump repeats the last moments rather than miss an event still being committed.
    end = high if high is not None else ctx.now() - int(args.settle * 1_000_000)
    write_last(args.state_dir, low if low is not None else 0, end)
    if args.verbose:
        from lbtwist.core.ulm import format_date

        start = format_date(low) if low is not None else "the start"
        stop = format_date(high) if high is not None else "the end"
        ctx.stderr.write(f"lbtwist dump: {count} events arrived in ({start}, {stop}]\n")
    return 0


def add_window_options(p: argparse.ArgumentParser) -> None:
    """
    The options choosing a dump window (the CLI's and the HTTPS request's).
    """
    p.add_argument(
        "--from", dest="from_", metavar="T", help="events arrived after T (default: all)"
    )
    p.add_argument(
        "--to",
        metavar="T",
        help="events arrived at or before T (default: none; with --since-last now - --settle)",
    )
    p.add_argument(
        "--since-last",
        action="store_true",
        help="from where the last dump of this store ended (kept in DIR/dump.last)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE,
        metavar="SECONDS",
        help="--since-last without --to stops this long before now (default %(default)s)",
    )


def register(subparsers: Any) -> None:
    from lbtwist.cli.query import add_client_options

    p = subparsers.add_parser(
        "dump",
        allow_abbrev=False,
        help="write stored events in L&B dump format (glite-lb-dump)",
        description=(
            "Write the events that arrived in (FROM, TO], by arrival, each as "
            "DG.ARRIVED=<date> <event line> and an empty line. Times T: now, last_start, "
            "last_end, YYYYMMDDHHMMSS, ISO 8601 or epoch seconds (UTC). Each dump of a "
            "state directory records its window; --since-last starts where the last ended."
        ),
    )
    p.add_argument("--state-dir", metavar="DIR", help="the local store's directory")
    p.add_argument(
        "-m", dest="server", metavar="HOST:PORT", help="ask this server over HTTPS (admins)"
    )
    p.add_argument(
        "--last-file",
        metavar="FILE",
        help="with -m: where --since-last keeps the last window's bounds",
    )
    add_window_options(p)
    p.add_argument(
        "--page",
        type=int,
        default=PAGE,
        metavar="N",
        help="events read from the store at a time (default %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="a summary line on stderr")
    add_client_options(p)
    p.set_defaults(handler=handle_dump)
