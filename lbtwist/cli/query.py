# -*- test-case-name: tests.unit.test_client -*-
"""
The commands that ask an L&B query server over HTTPS: C{lbtwist status} and
C{lbtwist log} without C{--state-dir} (see L{lbtwist.cli.local}), C{lbtwist
jobs}; and C{lbtwist certs dev DIR}.

Credentials are checked before the reactor starts, so most mistakes give
their one line at once; the query itself runs under C{react()}.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime

from lbtwist.cli.common import CLIContext, env_first, react_command

# The HTTPS client (Twisted, pyOpenSSL, cryptography) is imported when a query
# runs, not when the parsers are built: lbtwist status --state-dir and -x
# (lbtwist.cli.local) register these options and never ask over HTTPS.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine
    from typing import Any

    from OpenSSL import SSL

    from lbtwist.client.query import QueryClient, VerifyLog

    Query = Callable[[QueryClient], Coroutine[Any, Any, int]]

#: The default of C{--connect-timeout} (L{lbtwist.client.query.DEFAULT_CONNECT_TIMEOUT},
#: which a test keeps equal): the client is not imported to build the parser.
DEFAULT_CONNECT_TIMEOUT = 5.0


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """
    The options of every HTTPS command.
    """
    parser.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="ask this query server (default: $GLITE_WMS_QUERY_SERVER, else from the job id)",
    )
    parser.add_argument("--cert", metavar="FILE", help="client certificate or proxy file")
    parser.add_argument("--key", metavar="FILE", help="client key (default: in --cert)")
    parser.add_argument("--capath", metavar="DIR", help="CA directory (default: $X509_CERT_DIR)")
    parser.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="give up on a server after this long and try the next (default %(default)s)",
    )


def _now(ctx: CLIContext) -> datetime:
    return datetime.fromtimestamp(ctx.now() / 1_000_000, UTC)


def make_tls(args: argparse.Namespace, ctx: CLIContext) -> tuple[SSL.Context, VerifyLog]:
    """
    The client TLS context for the credentials the options and environment
    name (docs/reference.md, Command line).

    @raise QueryError: no usable credentials.
    """
    from lbtwist.client.query import check_credentials, client_tls, find_credentials

    creds = find_credentials(
        ctx.env, uid=os.getuid(), cert=args.cert, key=args.key, capath=args.capath
    )
    check_credentials(creds, now=_now(ctx))
    return client_tls(creds)


def run_query(args: argparse.Namespace, ctx: CLIContext, query: Query) -> int:
    """
    Check the credentials, then run C{query} under C{react()}.

    @return: the exit status.
    """
    from lbtwist.client.query import QueryClient, QueryError

    name = f"lbtwist {args.command}"
    try:
        # Reading the files before the reactor runs: mistakes fail at once.
        context, log = make_tls(args, ctx)
    except QueryError as e:
        ctx.stderr.write(f"{name}: {e}\n")
        return 1

    async def main(reactor: Any, interrupted: list[bool]) -> int:
        client = QueryClient(reactor, context, log, connect_timeout=args.connect_timeout)
        try:
            return await query(client)
        except QueryError as e:
            if not interrupted:
                # (Else the connection the interruption closed: no message.)
                ctx.stderr.write(f"{name}: {e}\n")
            return 1

    def quiet() -> None:
        # What the interruption makes the query say (its connection closed) is no
        # news: nothing more on stderr.
        ctx.stderr = io.StringIO()

    stderr = ctx.stderr
    try:
        return react_command(main, quiet)
    finally:
        ctx.stderr = stderr


async def query_status(client: QueryClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist status JOBID...}: each job's status, in text or JSON; a job
    that fails gets its error line and the exit status 1.
    """
    from lbtwist.cli.local import write_status
    from lbtwist.client.query import QueryError, candidates_for
    from lbtwist.core.states.status import JobStatus, public_dict

    failed = False
    for jobid in args.jobids:
        try:
            candidates = candidates_for(jobid, endpoint=args.endpoint, env=ctx.env)
            data = await client.job_status(jobid, candidates)
            if not isinstance(data, dict):
                raise QueryError(f"unexpected answer for {jobid} (not a JSON object)")
            if args.json:
                ctx.stdout.write(json.dumps(public_dict(data), ensure_ascii=False) + "\n")
            else:
                try:
                    status = JobStatus.from_json_dict(data)
                except (TypeError, ValueError) as e:
                    raise QueryError(f"unexpected status of {jobid} ({e})") from None
                write_status(args, ctx, status)
        except QueryError as e:
            ctx.stderr.write(f"lbtwist status: {e}\n")
            failed = True
    return 1 if failed else 0


async def query_log(client: QueryClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist log JOBID}: the job's events as ULM lines, then C{Found N events}.
    """
    from lbtwist.client.query import candidates_for, event_line

    candidates = candidates_for(args.jobid, endpoint=args.endpoint, env=ctx.env)
    events = await client.job_events(args.jobid, candidates)
    if args.json:
        for data in events:
            ctx.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        return 0
    from lbtwist.cli.local import write_log

    write_log(args, ctx, [event_line(data) for data in events])
    return 0


def jobs_server(args: argparse.Namespace, ctx: CLIContext) -> tuple[str, int]:
    """
    The server C{lbtwist jobs} asks: C{--endpoint}, the environment, else
    L{DEFAULT_SERVER}.
    """
    from lbtwist.client.query import DEFAULT_SERVER, QueryError
    from lbtwist.core.errors import LBError
    from lbtwist.core.jobid import QUERY_SERVER_ENV, parse_endpoint

    text = args.endpoint or env_first(ctx.env, *QUERY_SERVER_ENV) or DEFAULT_SERVER
    try:
        return parse_endpoint(text)
    except LBError as e:
        raise QueryError(e.message) from None


def jobs_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """
    The query string of C{lbtwist jobs} (docs/reference.md, Queries).
    """
    params: list[tuple[str, str]] = []
    if args.query:
        params.append(("query", args.query))
    if args.state:
        params.append(("state", ",".join(args.state)))
    if args.owner:
        params.append(("owner", args.owner))
    if args.limit is not None:
        params.append(("limit", str(args.limit)))
    return params


async def query_jobs(client: QueryClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist jobs}: one line per job, its id and state (or its JSON).
    """
    jobs = await client.jobs(jobs_server(args, ctx), jobs_params(args), max_jobs=args.limit)
    if args.limit is not None and getattr(client, "more_jobs", False):
        # As L&B's query tools say it when the server had more to give.
        ctx.stderr.write("Warning: only limited result returned!\n")
    for job in jobs:
        if args.json:
            ctx.stdout.write(json.dumps(job, ensure_ascii=False) + "\n")
            continue
        jobid = job.get("jobid") or job.get("jobId") or job.get("id") or "?"
        ctx.stdout.write(f"{jobid}  {job.get('state', 'Unknown')}\n")
    if not args.json:
        ctx.stdout.write(f"\nFound {len(jobs)} job{'' if len(jobs) == 1 else 's'}\n")
    return 0


def remote_status(args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist status} over HTTPS (no C{--state-dir}).
    """
    return run_query(args, ctx, lambda client: query_status(client, args, ctx))


def remote_log(args: argparse.Namespace, ctx: CLIContext) -> int:
    """
    C{lbtwist log} over HTTPS (no C{--state-dir}).
    """
    return run_query(args, ctx, lambda client: query_log(client, args, ctx))


def handle_jobs(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.client.query import QueryError

    try:
        jobs_server(args, ctx)
    except QueryError as e:
        ctx.stderr.write(f"lbtwist jobs: {e}\n")
        return 1
    return run_query(args, ctx, lambda client: query_jobs(client, args, ctx))


def handle_certs_dev(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.security.devcerts import main_certs_dev

    return main_certs_dev([args.directory], now=_now(ctx), out=ctx.stdout, err=ctx.stderr)


def handle_certs_proxy(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.security.devcerts import main_certs_proxy

    return main_certs_proxy(
        args.directory,
        hours=args.hours,
        voms=args.voms or (),
        now=_now(ctx),
        out=ctx.stdout,
        err=ctx.stderr,
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "jobs",
        help="list jobs (glite-lb-user_jobs / glite-lb-query_jobs)",
        description="List your jobs, or the jobs matching a query, with their states.",
    )
    p.add_argument(
        "--state",
        action="append",
        metavar="S",
        help="only jobs in state S (repeatable: any of them)",
    )
    p.add_argument("--query", metavar="Q", help="L&B conditions, e.g. 'status=running|=scheduled'")
    p.add_argument(
        "--owner", metavar="DN", help="only jobs of this owner ('*': everyone's; super users)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N jobs")
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")
    add_client_options(p)
    p.set_defaults(handler=handle_jobs)

    p = subparsers.add_parser(
        "certs",
        help="certificate tools",
        description=(
            "Certificate tools: 'lbtwist certs dev DIR' makes a development PKI, 'lbtwist certs "
            "proxy DIR [--voms VO:FQAN]' renews its user proxy (with VOMS attributes)."
        ),
    )
    certs = p.add_subparsers(dest="certs_command", metavar="TOOL", required=True)
    dev = certs.add_parser(
        "dev",
        help="make a development CA, host and user certificates and a proxy",
        description=(
            "Write a development CA in the hashed layout with its CRL, a host certificate "
            "for localhost, user certificates and an RFC 3820 proxy under DIR."
        ),
    )
    dev.add_argument("directory", metavar="DIR")
    dev.set_defaults(handler=handle_certs_dev)
    proxy = certs.add_parser(
        "proxy",
        help="renew the development user's proxy (with VOMS attributes: --voms)",
        description=(
            "Write a fresh proxy of the development user of DIR (DIR/user/x509up); with "
            "--voms, it carries VOMS attributes signed by the development VOMS server of DIR, "
            "which services on the development defaults trust (DIR/vomsdir)."
        ),
    )
    proxy.add_argument("directory", metavar="DIR")
    proxy.add_argument(
        "--hours", type=float, default=12.0, metavar="N", help="validity (default 12)"
    )
    proxy.add_argument(
        "--voms",
        action="append",
        metavar="VO[:FQAN]",
        help=(
            "add a VOMS attribute: VO (its root group), VO:/VO/group or "
            "VO:/VO/group/Role=role (repeatable; one attribute certificate per VO)"
        ),
    )
    proxy.set_defaults(handler=handle_certs_proxy)
