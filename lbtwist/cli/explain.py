# -*- test-case-name: tests.unit.test_explain_cli -*-
"""
C{lbtwist explain JOB}: every event of a job in arrival order with what it did
to the job's status (L{lbtwist.core.states.explain}), read from a local store
(an admin's view: with each event's DATE minus its arrival, and the skew per
producer).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lbtwist.cli.common import CLIContext
from lbtwist.cli.local import lookup, open_reader


def handle_explain(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.core.states.explain import effect_dict, explain, format_effects

    with open_reader(args.state_dir) as reader:
        found = lookup(reader, args.jobid)
        events = reader.events(found) if found else []
    if not events:
        ctx.stderr.write(f"lbtwist explain: {args.jobid}: no such job\n")
        return 1
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
    p.add_argument("--state-dir", metavar="DIR", required=True, help="the local store's directory")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.set_defaults(handler=handle_explain)
