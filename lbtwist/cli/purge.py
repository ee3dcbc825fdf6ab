# -*- test-case-name: tests.unit.test_purge_cli -*-
"""
C{lbtwist purge}: L&B's C{glite-lb-purge}. Purges the jobs whose last update is older
than their state's grace period, keeping each purged id as a zombie:

  - C{lbtwist purge --state-dir DIR}: offline, on the store file itself (refused
    while a service holds the store's lock);
  - C{lbtwist purge -m HOST:PORT}: asks the running service (C{POST /admin/purge} on
    its query port) with the user's proxy certificate; needs PURGE or ADMIN_ACCESS.

Grace periods: C{-a} aborted, C{-n} cancelled, C{-c} cleared, C{-e} done, C{-o} other
(durations C{2d}, C{12h}, C{30m}, seconds, or C{never}; L&B's defaults 7d, 7d, 3d,
31d, 31d). C{-l} (C{--dry-run}) lists what would go and changes nothing; C{-s} writes a
server-side dump of what is purged. Prints the job ids, one per line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lbtwist.cli.common import CLIContext

_GRACE = (
    ("-a", "--aborted", "aborted"),
    ("-n", "--cancelled", "cancelled"),
    ("-c", "--cleared", "cleared"),
    ("-e", "--done", "done"),
    ("-o", "--other", "other"),
)


def _overrides(args: argparse.Namespace) -> dict[str, int | None]:
    from lbtwist.core.purge import parse_grace

    out: dict[str, int | None] = {}
    for _, _, name in (*_GRACE, ("", "", "delivered")):
        value = getattr(args, name)
        if value is not None:
            out[name] = parse_grace(value)
    return out


def write_report(args: argparse.Namespace, ctx: CLIContext, report: dict[str, Any]) -> None:
    """
    The purge's answer: the job ids (or the JSON with C{--json}), then a summary on stderr.
    """
    if args.json:
        ctx.stdout.write(json.dumps(report, ensure_ascii=False, sort_keys=True) + "\n")
    else:
        for jobid in report.get("jobs", []):
            ctx.stdout.write(f"{jobid}\n")
    verb = "would be purged" if report.get("dry_run") else "purged"
    listed = report.get("listed", len(report.get("jobs", [])))
    more = "" if listed >= report.get("count", 0) else f" ({listed} listed)"
    ctx.stderr.write(
        f"lbtwist purge: {report.get('count', 0)} jobs {verb}{more},"
        f" {report.get('scanned', 0)} looked at ({report.get('rules', '')})\n"
    )
    if report.get("undelivered"):
        ctx.stderr.write(
            f"lbtwist purge: {report['undelivered']} due jobs kept: events wait in the outbox\n"
        )
    if report.get("server_file"):
        ctx.stderr.write(f"lbtwist purge: server dump: {report['server_file']}\n")


class _Clock:
    """
    The command's time (L{CLIContext.now}) as the purge reads it.
    """

    def __init__(self, ctx: CLIContext) -> None:
        self._now = ctx.now

    def seconds(self) -> float:
        return self._now() / 1_000_000


def handle_purge(args: argparse.Namespace, ctx: CLIContext) -> int:
    overrides = _overrides(args)
    if args.state_dir and args.server:
        ctx.stderr.write("lbtwist purge: give --state-dir or -m, not both\n")
        return 2
    if args.server:
        return remote_purge(args, ctx, overrides)
    if not args.state_dir:
        ctx.stderr.write("lbtwist purge: give --state-dir DIR (offline) or -m HOST:PORT\n")
        return 2
    from lbtwist.core.purge import PurgeRules
    from lbtwist.service.purge import PurgeRequest, offline_purge

    rules = PurgeRules().with_overrides(overrides)
    report = offline_purge(
        args.state_dir,
        PurgeRequest(rules=rules, dry_run=args.dry_run, server_dump=args.server_dump),
        chunk=args.chunk,
        jpdump_dir=args.jpdump_dir,
        vacuum=args.vacuum,
        clock=_Clock(ctx),
    )
    write_report(args, ctx, report.as_json())
    if args.vacuum and not args.dry_run:
        ctx.stderr.write("lbtwist purge: store rewritten: it gives space back from now on\n")
    return 0


def purge_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """
    The query string of C{POST /admin/purge}.
    """
    params = [(name, getattr(args, name)) for *_, name in _GRACE if getattr(args, name)]
    if args.delivered:
        params.append(("delivered", args.delivered))
    if args.dry_run:
        params.append(("dry_run", "1"))
    if args.server_dump:
        params.append(("server_dump", "1"))
    return params


def remote_purge(
    args: argparse.Namespace, ctx: CLIContext, overrides: dict[str, int | None]
) -> int:
    from urllib.parse import urlencode

    from twisted.web.client import readBody
    from twisted.web.http_headers import Headers

    from lbtwist.cli.query import run_query
    from lbtwist.client.query import QueryClient, QueryError, base_url, http_error
    from lbtwist.core.errors import LBError
    from lbtwist.core.jobid import parse_endpoint

    try:
        host, port = parse_endpoint(args.server)
    except LBError as e:
        ctx.stderr.write(f"lbtwist purge: {e.message}\n")
        return 2
    url = base_url(host, port) + "/admin/purge"
    query = urlencode(purge_params(args))
    if query:
        url += "?" + query

    async def ask(client: QueryClient) -> int:
        try:
            response = await client.agent.request(
                b"POST",
                url.encode("ascii"),
                Headers({b"Accept": [b"application/json"], b"User-Agent": [b"lbtwist"]}),
            )
            body = await readBody(response)
        except Exception as e:
            raise QueryError(f"{host}:{port}: {e}") from None
        if response.code != 200:
            raise http_error(response.code, body, "the purge")
        write_report(args, ctx, json.loads(body))
        return 0

    return run_query(args, ctx, ask)


def register(subparsers: Any) -> None:
    from lbtwist.cli.query import add_client_options

    p = subparsers.add_parser(
        "purge",
        help="purge old jobs (glite-lb-purge)",
        description=(
            "Purge the jobs whose last update is older than their state's grace period "
            "(durations: 2d, 12h, 30m, seconds, or never). Offline with --state-dir (the "
            "service stopped), or through a running service with -m HOST:PORT."
        ),
    )
    for short, long, name in _GRACE:
        p.add_argument(short, long, dest=name, metavar="D", help=f"grace of {name} jobs")
    p.add_argument(
        "--delivered", metavar="D", help="proxy: grace of terminal jobs all delivered upstream"
    )
    p.add_argument(
        "-l",
        "--list-only",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="list the jobs that would be purged, change nothing",
    )
    p.add_argument(
        "-s",
        "--server-dump",
        action="store_true",
        help="dump the purged events to a file in the state directory (L&B's -s)",
    )
    p.add_argument("-m", "--server", metavar="HOST:PORT", help="purge through this service")
    p.add_argument("--state-dir", metavar="DIR", help="purge the store in DIR (service stopped)")
    p.add_argument(
        "--chunk", type=int, default=100, metavar="N", help="job rows per transaction (offline)"
    )
    p.add_argument(
        "--jpdump-dir", metavar="DIR", help="offline: Job Provenance dump export directory"
    )
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="offline: rewrite the store so that it gives purged space back (old stores)",
    )
    p.add_argument("--json", action="store_true", help="the purge report as JSON")
    add_client_options(p)
    p.set_defaults(handler=handle_purge)
