# -*- test-case-name: tests.unit.test_cli -*-
"""
C{lbtwist replay}: offline, compute job states from ULM or dump lines.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.resources
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from lbtwist.cli.common import CLIContext
from lbtwist.core.catalogue import EVENT_ATTRIBUTES
from lbtwist.core.errors import BROKEN_ULM, LBError

if TYPE_CHECKING:
    from lbtwist.core.events import Event
    from lbtwist.core.states.status import JobStatus

#: The prefix of a line in L&B dump format.
DUMP_PREFIX = "DG.ARRIVED="

_PREFIX_LEN = len(DUMP_PREFIX)

#: Package resource with the bundled example stream.
EXAMPLE = "data/example-cream.ulm"


@attrs.define
class ReplayResult:
    """
    Events read by L{read_events}.

    @ivar jobs: job id -> (event, arrival number) in line order; jobs in order
        of first appearance.
    @ivar errors: one C{FILE:LINE: ERR <code> <message>} text per bad line.
    """

    jobs: dict[str, list[tuple[Event, int]]] = attrs.field(factory=dict)
    errors: list[str] = attrs.field(factory=list)
    count: int = 0


@functools.cache
def _core() -> tuple[Callable[[str], Event], Callable[[str], int]]:
    """
    C{parse_event} and C{parse_date}, imported on first use (the CLI starts
    without the catalogue) and once only (an import per line costs a few us).
    """
    from lbtwist.core.events import parse_event
    from lbtwist.core.ulm import parse_date

    return parse_event, parse_date


def parse_line(line: str) -> Event:
    """
    Parse a ULM line, or a dump line whose C{DG.ARRIVED=<date> } prefix gives
    the event's arrival time.

    @raise LBError: the line is not a valid event.
    """
    parse_event, parse_date = _core()
    if line[:_PREFIX_LEN].upper() != DUMP_PREFIX:
        return parse_event(line)
    stamp, _, line = line[_PREFIX_LEN:].partition(" ")
    arrived = parse_date(stamp.strip('"'))
    return _with_arrived(parse_event(line), arrived)


def _with_arrived(ev: Event, arrived: int) -> Event:
    """
    C{ev.evolve(arrived=arrived)} at a third of the cost: every field of
    L{Event} by name (L{tests.unit.test_cli} checks the list is complete).
    """
    return ev.__class__(
        type=ev.type,
        jobid=ev.jobid,
        date=ev.date,
        host=ev.host,
        user=ev.user,
        source=ev.source,
        seqcode=ev.seqcode,
        priority=ev.priority,
        level=ev.level,
        src_instance=ev.src_instance,
        prog=ev.prog,
        arrived=arrived,
        fields=ev.fields,
        extra=ev.extra,
    )


#: The fields L{_with_arrived} copies, in L{Event}'s order.
_EVENT_FIELDS = (*EVENT_ATTRIBUTES, "fields", "extra")


def read_events(sources: Iterable[tuple[str, Iterable[str | bytes]]]) -> ReplayResult:
    """
    Read every line of every C{(name, lines)} source; arrival numbers follow
    line order across sources. Blank lines are skipped; bad lines are recorded
    in C{errors} and skipped.

    The cyclic garbage collector is paused while reading: events hold no
    cycles, and its passes over the growing result cost a fifth of the time.
    """
    parse_event = _core()[0]
    result = ReplayResult()
    jobs = result.jobs
    errors = result.errors
    count = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name, lines in sources:
            for lineno, raw in enumerate(lines, 1):
                try:
                    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                except UnicodeDecodeError as e:
                    errors.append(
                        f"{name}:{lineno}: ERR {BROKEN_ULM} invalid UTF-8 at byte {e.start}"
                    )
                    continue
                line = text.rstrip("\r\n")
                if not line or line.isspace():
                    continue
                try:
                    if line[:_PREFIX_LEN].upper() == DUMP_PREFIX:
                        event = parse_line(line)
                    else:
                        event = parse_event(line)
                except LBError as e:
                    errors.append(f"{name}:{lineno}: ERR {e.code} {e.message}")
                    continue
                pairs = jobs.get(event.jobid)
                if pairs is None:
                    pairs = jobs[event.jobid] = []
                pairs.append((event, count))
                count += 1
    finally:
        result.count = count
        if collecting:
            gc.enable()
    return result


# json.dumps(..., ensure_ascii=False) without building an encoder per call.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode


def format_status_text(status: JobStatus) -> str:
    """
    The C{glite-lb-job_status} text of C{status}, ending in a newline.
    """
    from lbtwist.core.states.status import format_text

    text = format_text(status)
    return text if text.endswith("\n") else f"{text}\n"


def status_json(status: JobStatus) -> str:
    """
    One line of JSON for C{status}: its public fields.
    """
    from lbtwist.core.states.status import public_dict

    data: dict[str, Any] = public_dict(status)
    return _encode_json(data)


def write_statuses(result: ReplayResult, ctx: CLIContext, as_json: bool) -> None:
    """
    Compute and print the status of every job of C{result}.
    """
    from lbtwist.core.states import compute_status

    first = True
    for events in result.jobs.values():
        status = compute_status(events)
        if as_json:
            ctx.stdout.write(status_json(status) + "\n")
        else:
            if not first:
                ctx.stdout.write("\n")
            ctx.stdout.write(format_status_text(status))
        first = False


def example_lines() -> list[str]:
    """
    The lines of the bundled example stream.
    """
    return (
        importlib.resources.files("lbtwist.core").joinpath(EXAMPLE).read_text("utf-8").splitlines()
    )


def handle(args: argparse.Namespace, ctx: CLIContext) -> int:
    sources: list[tuple[str, Iterable[str | bytes]]] = []
    if args.example:
        sources.append((EXAMPLE, example_lines()))
    elif not args.files:
        ctx.stderr.write("lbtwist replay: give FILE... or - (standard input) or --example\n")
        return 2
    opened: list[BinaryIO] = []
    try:
        for name in args.files:
            if name == "-":
                sources.append(("-", ctx.stdin))
            else:
                stream: BinaryIO = open(name, "rb")  # noqa: SIM115
                opened.append(stream)
                sources.append((name, stream))
        result = read_events(sources)
    finally:
        for stream in opened:
            stream.close()
    for error in result.errors:
        ctx.stderr.write(error + "\n")
    write_statuses(result, ctx, args.json)
    return 1 if result.errors else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="compute job states offline from ULM or dump lines",
        description=(
            "Read events (ULM lines, or L&B dump lines with a DG.ARRIVED= prefix) and "
            "print each job's computed status. Bad lines are reported on stderr as "
            "FILE:LINE: ERR <code> <message> and make the exit status 1."
        ),
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="event files; - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")
    p.add_argument("--example", action="store_true", help="replay the bundled example CREAM stream")
    p.set_defaults(handler=handle)
