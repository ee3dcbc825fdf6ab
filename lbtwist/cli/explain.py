# -*- test-case-name: tests.unit.test_explain_cli -*-
"""
C{lbtwist explain JOB}: every event of a job in arrival order with what it did
to the job's status (L{lbtwist.core.states.explain}), read from a local store
(an admin's view: with each event's DATE minus its arrival, and the skew per
producer) or, without C{--state-dir}, asked from the job's query server over
HTTPS (C{GET /<unique>?explain}).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lbtwist.cli.common import CLIContext
from lbtwist.cli.local import lookup, open_reader


def remote_get(args: argparse.Namespace, ctx: CLIContext, jobid: str, query: str) -> int:
    """
    Ask the job's query server for C{/<unique>?<query>} with the user's credentials
    and write the answer's body.
    """
    from lbtwist.cli.query import run_query
    from lbtwist.client.query import QueryClient, base_url, candidates_for
    from lbtwist.core.jobid import JobId

    async def ask(client: QueryClient) -> int:
        candidates = candidates_for(jobid, endpoint=args.endpoint, env=ctx.env)
        path = f"/{JobId.parse(jobid).unique}?{query}"
        reply = await client.get([base_url(h, p) for h, p in candidates], path, what=jobid)
        body = reply.body.decode("utf-8", "replace")
        ctx.stdout.write(body if body.endswith("\n") else body + "\n")
        return 0

    return run_query(args, ctx, ask)


def remote_status_at(args: argparse.Namespace, ctx: CLIContext, when: int) -> int:
    """
    C{lbtwist status --at T JOB...} over HTTPS: C{GET /<unique>?at=T[&by=arrival]},
    as JSON (the layouts of the local command need the whole status: use C{--json}
    or C{--state-dir} for them).
    """
    query = f"at={when / 1_000_000:.6f}" + ("&by=arrival" if args.by_arrival else "")
    status = 0
    for jobid in args.jobids:
        status |= remote_get(args, ctx, jobid, query + "&format=json")
    return status


def handle_explain(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.core.states.explain import effect_dict, explain, format_effects

    if not args.state_dir:
        return remote_get(
            args, ctx, args.jobid, "explain&format=" + ("json" if args.json else "text")
        )
    with open_reader(args.state_dir) as reader:
        found = lookup(reader, args.jobid)
        events = reader.events(found) if found else []
    if not events:
        ctx.stderr.write(f"lbtwist explain: {args.jobid}: no such job\n")
        return 1
    # The store hands a job's events in event order: explain replays them as they arrived.
    events = sorted(events, key=lambda stored: stored.seqno)
    effects = explain([(stored.event, stored.arrived) for stored in events])
    if args.json:
        for effect in effects:
            record = effect_dict(effect, with_skew=True)
            ctx.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        ctx.stdout.write(f"{found}: {effects[-1].to_state}\n")
        ctx.stdout.write(format_effects(effects, with_skew=True))
    return 0


def register(subparsers: Any) -> None:
    from lbtwist.cli.query import add_client_options

    p = subparsers.add_parser(
        "explain",
        allow_abbrev=False,
        help="why a job is in its state: what each event did",
        description=(
            "List a job's events in arrival order with what each did to its status: "
            "moved the state (from -> to), filled fields, ignored as late (sorted before "
            "an event already applied), duplicate, or no effect; with each event's DATE "
            "minus arrival and the skew per producer."
        ),
    )
    p.add_argument("jobid", metavar="JOBID")
    p.add_argument(
        "--state-dir", metavar="DIR", help="read the local store in DIR (no HTTPS query)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    add_client_options(p)
    p.set_defaults(handler=handle_explain)
