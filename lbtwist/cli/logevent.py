# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist logevent}: log one event, option-compatible with C{glite-lb-logevent}.

On success the new sequence code is the only output on stdout, so the Job
Wrapper idiom works::

    GLITE_WMS_SEQUENCE_CODE=$(lbtwist logevent ... || echo $GLITE_WMS_SEQUENCE_CODE)

As C{glite-lb-logevent}: given the code C{C}, the event is logged with C{C} plus one in
the source's counter and C{C} plus two is printed (C{-I}: logged as C{C}, C{C} plus one
printed); CREAM's opaque codes are logged and printed as given. Fields that belong to
another event type are dropped with a warning (C{--strict}: refused). The line is
written as L&B's unparser writes it (L{lbtwist.core.unparse}), C{DG.PRIORITY} 8 (the
proxy flag), C{HOST} this machine's C{gethostname()}.

A refused, backlogged or busy intake is retried for C{--timeout} seconds, so an
event is not lost to a passing overload; only then does the command fail (exit
1, one line on stderr naming the socket and the last error). This module must
not load Twisted: a Job Wrapper runs it for every event.
"""

from __future__ import annotations

from lbtwist.cli.common import (
    CLIContext,
    add_timeout_option,
    default_socket,
    env_first,
    producer_for,
    producer_timeout,
)
from lbtwist.cli.identity import default_user
from lbtwist.client.producer import DEFAULT_TIMEOUT
from lbtwist.core.errors import InvalidValue, KeyMisuse, MessageIncomplete, UnknownJob

# Not typing.TYPE_CHECKING: the fast lane (lbtwist.cli.fast) imports this
# module's constants, and a producer call must not pay for typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from lbtwist.core.events import Event, EventType

JOBID_ENV = ("GLITE_WMS_JOBID", "EDG_WL_JOBID")
SEQCODE_ENV = ("GLITE_WMS_SEQUENCE_CODE", "EDG_WL_SEQUENCE_CODE")

#: DG.PRIORITY bit for synchronous logging (C{-p}).
PRIO_SYNC = 2

#: DG.PRIORITY bit of events logged to the proxy (L&B's EDG_WLL_LOGFLAG_PROXY).
PRIO_PROXY = 8


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


def event_fields(
    etype: EventType,
    pairs: Sequence[tuple[str, str]],
    *,
    strict: bool = False,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """
    Map option names to the catalogue field names of C{etype}.

    As C{glite-lb-logevent}, a field of another event type is dropped (its option
    name appended to C{dropped}); with C{strict} it is refused.

    @raise KeyMisuse: a name is no field of any event type, or (C{strict}) not one of
        C{etype}.
    """
    from lbtwist.core.events import CATALOGUE

    by_key = {field_key(f.name): f.name for f in etype.fields}
    fields: dict[str, Any] = {}
    for name, value in pairs:
        key = field_key(name)
        canonical = by_key.get(key)
        if canonical is None:
            known = any(
                field_key(f.name) == key for other in CATALOGUE.values() for f in other.fields
            )
            if strict or not known:
                raise KeyMisuse(f"--{name} is not a field of event {etype.name}")
            if dropped is not None:
                dropped.append(name)
            continue
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


def check_seqcode(code: str, jobid: str, origin: str) -> str:
    """
    Refuse a malformed current sequence code, as C{glite-lb-logevent} does.

    A gLite job needs a gLite code; a direct CREAM job takes CREAM's opaque codes
    too (no white space, quotes or control characters), but a code that starts like
    a gLite one must be one.

    @param origin: where the code came from (C{-c}, the variable), for the message.
    @return: C{code}.
    @raise InvalidValue: the code is malformed.
    """
    from lbtwist.core.jobid import JobId
    from lbtwist.core.seqcode import GliteSeqCode

    try:
        GliteSeqCode.parse(code)
        return code
    except InvalidValue:
        pass
    opaque_ok = (
        JobId.parse(jobid).is_cream
        and not code.startswith("UI=")
        and code.isprintable()
        and not any(c.isspace() or c == '"' for c in code)
    )
    if not opaque_ok:
        kind = "a CREAM job" if JobId.parse(jobid).is_cream else "a gLite job"
        raise InvalidValue(
            f"{origin}: malformed sequence code for {kind}: {code!r} "
            "(expected UI=<n>:NS=<n>:WM=<n>:BH=<n>:JSS=<n>:LM=<n>:LRMS=<n>:APP=<n>[:LBS=<n>])"
        )
    return code


def current_seqcode(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str] | None:
    """
    The current sequence code given by C{-c} or the environment, and where it
    came from; C{None} when neither gives one.
    """
    if args.sequence:
        return args.sequence, "-c"
    for name in SEQCODE_ENV:
        value = env.get(name)
        if value:
            return value, f"${name}"
    return None


def build_event(
    args: argparse.Namespace,
    ctx: CLIContext,
    ask: Callable[[str], str] | None = None,
    dropped: list[str] | None = None,
) -> Event:
    """
    The event described by the options and environment.

    Without a current sequence code (C{-c}, C{$GLITE_WMS_SEQUENCE_CODE}) the code
    of a gLite job is C{ask(jobid)}, the proxy's last code of the job, as
    C{glite-lb-logevent} asks its proxy; a direct CREAM job starts from zero
    counters, as before. The code is then incremented for the event's source.

    @param ask: returns the job's last stored sequence code.
    @param dropped: gets the names of the field options dropped (other event types').
    @raise LBError: something is missing or invalid.
    """
    from lbtwist.core.events import event_type, make_event, source_name
    from lbtwist.core.jobid import JobId
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
    fields = event_fields(
        etype, parse_field_options(args.extra), strict=args.strict, dropped=dropped
    )
    given = current_seqcode(args, env)
    old = None if given is None else given[0]

    def logged_code(current: str | None) -> str:
        # -I: the code given is the one to log (L&B's "don't increment").
        if args.dont_increment and current:
            return current
        return next_seqcode(current, source)

    event = make_event(
        etype.name,
        jobid=jobid,
        date=ctx.now(),
        host=args.host or ctx.hostname(),
        user=args.user or default_user(env, ctx.login),
        source=source,
        seqcode=logged_code(old),
        priority=PRIO_PROXY | (PRIO_SYNC if args.priority else 0),
        src_instance=args.instance or "",
        **fields,
    )
    # Everything else is valid: now the code (which may take a request).
    if given is not None:
        check_seqcode(given[0], event.jobid, given[1])
    elif not JobId.parse(event.jobid).is_cream:
        if ask is None:
            raise MessageIncomplete("no sequence code: give -c or set GLITE_WMS_SEQUENCE_CODE")
        event = event.evolve(seqcode=logged_code(ask(event.jobid)))
    return event


def handle(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.event is not None and args.event.lower() == "help":
        ctx.stdout.write(events_help())
        return 0
    if args.source is not None and args.source.lower() == "help":
        ctx.stdout.write(sources_help())
        return 0
    from lbtwist.core.seqcode import next_seqcode
    from lbtwist.core.unparse import unparse_event

    path = args.socket or default_socket(ctx.env)
    with producer_for(path, producer_timeout(args, ctx.env), ctx) as producer:

        def ask(jobid: str) -> str:
            try:
                return producer.sequence_code(jobid)
            except UnknownJob as e:
                raise UnknownJob(f"{e.message}; give -c or set GLITE_WMS_SEQUENCE_CODE") from None

        dropped: list[str] = []
        event = build_event(args, ctx, ask, dropped)
        for name in dropped:
            ctx.stderr.write(
                f"lbtwist logevent: warning: --{name} is not a field of event {event.type}, "
                "dropped\n"
            )
        producer.log(unparse_event(event))
    # As glite-lb-logevent: the code the next producer starts from.
    ctx.stdout.write(next_seqcode(event.seqcode, event.source) + "\n")
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
        "-x",
        "--proxy",
        "--lbproxy",
        action="store_true",
        help="log to the proxy socket (always so)",
    )
    p.add_argument(
        "-I", "--dont-increment", action="store_true", help="log with the code given, not the next"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse fields of other event types (default: drop them with a warning)",
    )
    p.add_argument(
        "-S",
        "--socket",
        "--lbproxy-store-sock",
        metavar="SOCK",
        help="intake socket (default $GLITE_WMS_LBPROXY_STORE_SOCK, ./lbtwist-state/events.sock)",
    )
    p.add_argument("-U", "--user", "--lbproxy-user-dn", metavar="DN", help="user DN to log as")
    p.add_argument("-H", "--host", help="host name to log (default: gethostname())")
    p.add_argument(
        "-i", "--instance", "--source-instance", help="source instance (DG.SRC_INSTANCE)"
    )
    add_timeout_option(p, DEFAULT_TIMEOUT)
    p.set_defaults(handler=handle, extra_args=True)
