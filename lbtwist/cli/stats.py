# -*- test-case-name: tests.unit.test_stats_cli -*-
"""
C{lbtwist stats} and C{lbtwist trace}: L&B's statistics (C{glite-lb-stats}) and the
tracing of a batch job back to its grid user, read from a stopped or running store
(C{--state-dir DIR}, read-only) or asked of a running service (C{-m HOST:PORT}: C{GET
/stats}, C{GET /trace} with the user's proxy; GET_STATISTICS, TRACE or ADMIN_ACCESS).

  lbtwist stats --state-dir DIR -s Running --from 2026-12-01 --to 2026-12-02 [--step 3600]
  lbtwist stats -m HOST:PORT -s Running --to-state Done --group ce_node
  lbtwist trace --state-dir DIR --lrms-id 4711.batch01.example.org
  lbtwist trace -m HOST:PORT --node wn042.example.org --at 2026-12-01T10:00:00Z

Text by default, C{--json} for the service's JSON answer.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlencode

from lbtwist.cli.common import CLIContext

#: C{lbtwist trace} options -> request parameters.
_TRACE_KEYS = (
    ("--lrms-id", "lrms_id", "the batch system's job id"),
    ("--cream-id", "cream_id", "the CREAM job id (CREAM123456789 or its URL)"),
    ("--jobid", "jobid", "the gLite job id (or its unique part)"),
    ("--node", "node", "a worker node (with --at)"),
    ("--dn", "dn", "the owner's DN (with --from/--to)"),
    ("--fqan", "fqan", "the owner's primary FQAN (with --from/--to)"),
)


def stats_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """
    The query string of C{GET /stats} from the command line.
    """
    params = [("state", args.state)]
    for name in ("to_state", "from_", "to", "group", "step"):
        value = getattr(args, name)
        if value is not None:
            params.append((name.rstrip("_"), str(value)))
    return params


def trace_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """
    The query string of C{GET /trace} from the command line.
    """
    params = [(key, getattr(args, key)) for _, key, _ in _TRACE_KEYS if getattr(args, key)]
    for name in ("at", "from_", "to"):
        value = getattr(args, name)
        if value is not None:
            params.append((name.rstrip("_"), value))
    return params


def _local(args: argparse.Namespace, ctx: CLIContext, command: str) -> Any:
    from lbtwist.core import stats as core_stats
    from lbtwist.core import trace as core_trace
    from lbtwist.store import open_reader

    with open_reader(args.state_dir) as reader:
        if command == "stats":
            request = core_stats.StatsRequest.parse(
                stats_params(args), now=ctx.now(), max_buckets=args.max_buckets
            )
            return reader.stats(request, args.max_jobs)  # type: ignore[attr-defined]
        found = reader.trace(  # type: ignore[attr-defined]
            core_trace.TraceRequest.parse(trace_params(args), max_lifetime=args.max_lifetime),
            args.max_jobs,
        )
        return {"jobs": found[0], "truncated": found[1]}


def _write(args: argparse.Namespace, ctx: CLIContext, command: str, answer: Any) -> None:
    from lbtwist.core import stats as core_stats
    from lbtwist.core import trace as core_trace

    if args.json:
        ctx.stdout.write(json.dumps(answer, ensure_ascii=False, sort_keys=True) + "\n")
    elif command == "stats":
        ctx.stdout.write(core_stats.render_text(answer))
    else:
        ctx.stdout.write(core_trace.render_text(answer["jobs"]))
        if answer.get("truncated"):
            ctx.stderr.write(f"lbtwist trace: more jobs matched than the {args.max_jobs} listed\n")


def _handle(command: str, args: argparse.Namespace, ctx: CLIContext) -> int:
    if bool(args.state_dir) == bool(args.server):
        ctx.stderr.write(f"lbtwist {command}: give --state-dir DIR or -m HOST:PORT (one)\n")
        return 2
    if args.server:
        return _remote(command, args, ctx)
    _write(args, ctx, command, _local(args, ctx, command))
    return 0


def handle_stats(args: argparse.Namespace, ctx: CLIContext) -> int:
    return _handle("stats", args, ctx)


def handle_trace(args: argparse.Namespace, ctx: CLIContext) -> int:
    return _handle("trace", args, ctx)


def _remote(command: str, args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.cli.query import run_query
    from lbtwist.client.query import QueryClient, QueryError, base_url, http_error
    from lbtwist.core.errors import LBError
    from lbtwist.core.jobid import parse_endpoint

    try:
        host, port = parse_endpoint(args.server)
    except LBError as e:
        ctx.stderr.write(f"lbtwist {command}: {e.message}\n")
        return 2
    params = stats_params(args) if command == "stats" else trace_params(args)
    path = f"/{command}?" + urlencode([*params, ("format", "json")])

    async def ask(client: QueryClient) -> int:
        reply = await client.get(
            [base_url(host, port)], path, what=command, allow=(400, 403, 413, 501)
        )
        if reply.code != 200:
            raise http_error(reply.code, reply.body, command)
        try:
            answer = json.loads(reply.body)
        except ValueError:
            raise QueryError(f"{host}:{port}: not JSON") from None
        _write(args, ctx, command, answer)
        return 0

    return run_query(args, ctx, ask)


def _common(p: argparse.ArgumentParser) -> None:
    from lbtwist.cli.query import add_client_options

    p.add_argument("-m", "--server", metavar="HOST:PORT", help="ask this running service")
    p.add_argument("--state-dir", metavar="DIR", help="read the store in DIR (read-only)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="window start (ISO 8601 or epoch)")
    p.add_argument("--to", metavar="TIME", help="window end (ISO 8601 or epoch)")
    p.add_argument("--json", action="store_true", help="the answer as JSON")
    add_client_options(p)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="job statistics: state entry rates, durations (glite-lb-stats)",
        description=(
            "Jobs entering a state in a window (count, rate, per --step seconds), or with "
            "--to-state the durations from one state to the other (min, mean, median, max), "
            "overall or per --group."
        ),
    )
    p.add_argument("-s", "--state", required=True, help="the state jobs entered (Running...)")
    p.add_argument("--to-state", help="durations from --state to this state")
    p.add_argument("--group", choices=("destination", "ce_node", "owner", "vo"))
    p.add_argument("--step", type=int, metavar="SECONDS", help="count per bucket of this length")
    p.add_argument("--max-jobs", type=int, default=100_000, help="local: most durations read")
    p.add_argument("--max-buckets", type=int, default=1000, help="local: most buckets")
    _common(p)
    p.set_defaults(handler=handle_stats, at=None)
    t = subparsers.add_parser(
        "trace",
        help="trace jobs to their grid user: by LRMS id, CREAM id, job id, node and time, DN, FQAN",
        description=(
            "Find jobs by one key and print their owner DN, FQANs, ids, worker node, state "
            "entry times and event sources (purged jobs too, within trace-retention)."
        ),
    )
    for option, key, text in _TRACE_KEYS:
        t.add_argument(option, dest=key, metavar="VALUE", help=text)
    t.add_argument("--at", metavar="TIME", help="with --node: the moment (ISO 8601 or epoch)")
    t.add_argument("--max-jobs", type=int, default=1000, help="local: most jobs listed")
    t.add_argument(
        "--max-lifetime",
        type=int,
        default=7 * 86_400,
        metavar="SECONDS",
        help="local, --dn/--fqan: jobs started at most this long before --from",
    )
    _common(t)
    t.set_defaults(handler=handle_trace)
