# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist logevent}: log one event, option-compatible with C{glite-lb-logevent}.

On success the new sequence code is the only output on stdout, so the Job
Wrapper idiom works::

    GLITE_WMS_SEQUENCE_CODE=$(lbtwist logevent ... || echo $GLITE_WMS_SEQUENCE_CODE)
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lbtwist.cli.common import CLIContext, default_socket, env_first
from lbtwist.cli.identity import default_user
from lbtwist.client.producer import LBProducer
from lbtwist.core.errors import InvalidValue, KeyMisuse, MessageIncomplete

if TYPE_CHECKING:
    from lbtwist.core.events import Event, EventType

JOBID_ENV = ("GLITE_WMS_JOBID", "EDG_WL_JOBID")
SEQCODE_ENV = ("GLITE_WMS_SEQUENCE_CODE", "EDG_WL_SEQUENCE_CODE")

#: Seconds to wait for the intake's answer.
TIMEOUT = 120.0

#: DG.PRIORITY bit for synchronous logging (C{-p}).
PRIO_SYNC = 2


def field_key(option: str) -> str:
    """
    Normalize an option name to a lookup key: case folded, C{-} as C{_}.
    """
    return option.lower().replace("-", "_")


def parse_field_options(extra: Sequence[str]) -> list[tuple[str, str]]:
    """
    Parse C{--<field>=<value>} and C{--<field> <value>} options.

    @return: (option name as written without dashes, value) pairs in order.
    @raise InvalidValue: on anything else.
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise InvalidValue(f"unexpected argument {token!r}")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise InvalidValue(f"option --{name} needs a value")
            i += 1
            value = extra[i]
        pairs.append((name, value))
        i += 1
    return pairs


def event_fields(etype: EventType, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """
    Map option names to the catalogue field names of C{etype}.

    @raise KeyMisuse: a name is not a field of C{etype}.
    """
    by_key = {field_key(f.name): f.name for f in etype.fields}
    fields: dict[str, Any] = {}
    for name, value in pairs:
        canonical = by_key.get(field_key(name))
        if canonical is None:
            raise KeyMisuse(f"--{name} is not a field of event {etype.name}")
        fields[canonical] = value
    return fields


def events_help() -> str:
    """
    The text of C{-e help}: every event type and its fields (C{*} = required).
    """
    from lbtwist.core.events import CATALOGUE

    lines = ["Event types and their fields (* = required):"]
    for name in sorted(CATALOGUE, key=str.lower):
        etype = CATALOGUE[name]
        fields = " ".join(
            "--"
            + f.name
            + ("*" if f.required else "")
            + (f"={'|'.join(f.codes)}" if f.codes else "")
            for f in etype.fields
        )
        lines.append(f"  {etype.name}: {fields}".rstrip())
    return "\n".join(lines) + "\n"


def sources_help() -> str:
    """
    The text of C{-s help}: every event source.
    """
    from lbtwist.core.events import SOURCES

    return "Event sources:\n" + "".join(f"  {name}\n" for name in SOURCES)


def build_event(args: argparse.Namespace, ctx: CLIContext) -> Event:
    """
    The event described by the options and environment.

    @raise LBError: something is missing or invalid.
    """
    from lbtwist.core.events import event_type, make_event, source_name
    from lbtwist.core.seqcode import next_seqcode

    env: Mapping[str, str] = ctx.env
    jobid = args.jobid or env_first(env, *JOBID_ENV)
    if not jobid:
        raise MessageIncomplete("no job id: give -j or set GLITE_WMS_JOBID")
    if not args.event:
        raise MessageIncomplete("no event type: give -e (-e help lists them)")
    if not args.source:
        raise MessageIncomplete("no event source: give -s (-s help lists them)")
    etype = event_type(args.event)
    source = source_name(args.source)
    fields = event_fields(etype, parse_field_options(args.extra))
    old = args.sequence or env_first(env, *SEQCODE_ENV)
    return make_event(
        etype.name,
        jobid=jobid,
        date=ctx.now(),
        host=args.host or ctx.fqdn(),
        user=args.user or default_user(env, ctx.login),
        source=source,
        seqcode=next_seqcode(old, source),
        priority=PRIO_SYNC if args.priority else 0,
        src_instance=args.instance or "",
        **fields,
    )


def handle(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.event is not None and args.event.lower() == "help":
        ctx.stdout.write(events_help())
        return 0
    if args.source is not None and args.source.lower() == "help":
        ctx.stdout.write(sources_help())
        return 0
    event = build_event(args, ctx)
    with LBProducer(args.socket or default_socket(ctx.env), timeout=TIMEOUT) as producer:
        producer.log(event)
    ctx.stdout.write(event.seqcode + "\n")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "logevent",
        allow_abbrev=False,
        help="log one event (glite-lb-logevent)",
        description=(
            "Log one event through the intake socket and print the new sequence code. "
            "Event fields are given as --<field>=<value> or --<field> <value> "
            "(names from -e help, case-insensitive, '-' or '_'). Without -U the DN "
            "of $X509_USER_PROXY or $X509_USER_CERT is used, else /CN=<login>."
        ),
    )
    p.add_argument("-j", "--jobid", help="job id (default $GLITE_WMS_JOBID, $EDG_WL_JOBID)")
    p.add_argument("-s", "--source", help="event source; 'help' lists them")
    p.add_argument("-e", "--event", help="event type; 'help' lists them with their fields")
    p.add_argument(
        "-c",
        "--sequence",
        help="current sequence code (default $GLITE_WMS_SEQUENCE_CODE, $EDG_WL_SEQUENCE_CODE)",
    )
    p.add_argument("-p", "--priority", action="store_true", help="synchronous logging")
    p.add_argument(
        "-x", "--proxy", action="store_true", help="log to the proxy socket (the default)"
    )
    p.add_argument(
        "-S",
        "--socket",
        metavar="SOCK",
        help="intake socket (default $GLITE_WMS_LBPROXY_STORE_SOCK, ./lbtwist-state/events.sock)",
    )
    p.add_argument("-U", "--user", metavar="DN", help="user DN to log as")
    p.add_argument("-H", "--host", help="host name to log (default: this host's FQDN)")
    p.add_argument("-i", "--instance", help="source instance (DG.SRC_INSTANCE)")
    p.set_defaults(handler=handle, extra_args=True)
