# -*- test-case-name: tests.unit.test_load -*-
"""
C{lbtwist load FILE}: feed a dump (C{lbtwist dump}, C{glite-lb-dump}) back into
a store through the store's normal commit path, each event with the arrival
time its C{DG.ARRIVED=} prefix gives: duplicates of stored events are absorbed,
a registration that conflicts is refused, states fold as if the events had
arrived then. Prints how many events were stored, duplicate and refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from lbtwist.cli.common import CLIContext
from lbtwist.core.errors import InvalidValue, LBError

if TYPE_CHECKING:
    from lbtwist.core.events import Event

#: Default events stored per transaction.
DEFAULT_CHUNK = 1000

#: Most error lines printed (then only counted).
MAX_ERROR_LINES = 20


@attrs.define
class LoadCounts:
    """
    What a load did: events stored, duplicates absorbed, events refused
    (unreadable lines, or refused by the store).
    """

    stored: int = 0
    duplicate: int = 0
    refused: int = 0


def read_dump(lines: Iterable[str]) -> Iterator[tuple[int, str, Event | LBError]]:
    """
    The dump's events: C{(line number, stored line, event)} for each non-blank
    line, or C{(line number, line, error)} for one that is not a dump line (an
    event without its C{DG.ARRIVED=} prefix is one).
    """
    from lbtwist.cli.replay import DUMP_PREFIX, parse_line

    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line[: len(DUMP_PREFIX)].upper() != DUMP_PREFIX:
            yield number, line, InvalidValue("not a dump line (no DG.ARRIVED= prefix)")
            continue
        try:
            ev = parse_line(line)
        except LBError as e:
            yield number, line, e
            continue
        yield number, line.partition(" ")[2], ev


def load_lines(
    lines: Iterable[str],
    state_dir: str,
    *,
    chunk: int = DEFAULT_CHUNK,
    max_future_skew: int | None = None,
    errors: TextIO | None = None,
    name: str = "-",
    max_errors: int = MAX_ERROR_LINES,
) -> LoadCounts:
    """
    Load dump C{lines} into the store of C{state_dir} (created if absent), C{chunk}
    events per transaction.

    @param errors: where unreadable or refused lines are reported (the first
        C{max_errors}).
    """
    from lbtwist.store import open_loader

    counts = LoadCounts()
    printed = 0

    def report(number: int, error: LBError) -> None:
        nonlocal printed
        counts.refused += 1
        if errors is not None and printed < max_errors:
            printed += 1
            errors.write(f"{name}:{number}: ERR {error.code} {error.message}\n")

    with open_loader(state_dir, max_future_skew=max_future_skew) as loader:
        group: list[tuple[str, Event, int]] = []
        numbers: list[int] = []

        def flush() -> None:
            for number, result in zip(numbers, loader.load(group), strict=True):
                if isinstance(result, LBError):
                    report(number, result)
                elif result.duplicate:
                    counts.duplicate += 1
                else:
                    counts.stored += 1
            group.clear()
            numbers.clear()

        for number, line, ev in read_dump(lines):
            if isinstance(ev, LBError):
                report(number, ev)
                continue
            assert ev.arrived is not None
            group.append((line, ev, ev.arrived))
            numbers.append(number)
            if len(group) >= chunk:
                flush()
        if group:
            flush()
    return counts


def handle_load(args: argparse.Namespace, ctx: CLIContext) -> int:
    if args.chunk < 1:
        ctx.stderr.write("lbtwist load: --chunk must be at least 1\n")
        return 2
    skew = None if args.max_future_skew is None else args.max_future_skew * 1_000_000
    if args.file == "-":
        counts = load_lines(
            ctx.stdin,
            args.state_dir,
            chunk=args.chunk,
            max_future_skew=skew,
            errors=ctx.stderr,
            max_errors=args.max_errors,
        )
    else:
        with open(args.file, encoding="utf-8", errors="surrogateescape") as f:
            counts = load_lines(
                f,
                args.state_dir,
                chunk=args.chunk,
                max_future_skew=skew,
                errors=ctx.stderr,
                name=args.file,
                max_errors=args.max_errors,
            )
    ctx.stdout.write(
        f"stored {counts.stored}, duplicate {counts.duplicate}, refused {counts.refused}\n"
    )
    return 1 if counts.refused else 0


def register(subparsers: Any) -> None:
    from lbtwist.config import DEFAULT_MAX_FUTURE_SKEW

    p = subparsers.add_parser(
        "load",
        allow_abbrev=False,
        help="load a dump into a store (glite-lb-load)",
        description=(
            "Feed a dump (lines DG.ARRIVED=<date> <event>) into the store of a state "
            "directory through the normal store path, each event arriving at its "
            "recorded time: duplicates are absorbed, conflicting registrations "
            "refused. Stop the service of that directory first. Prints the counts "
            "of events stored, duplicate and refused; exit status 1 if any was refused."
        ),
    )
    p.add_argument("file", metavar="FILE", help="the dump; - for standard input")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        required=True,
        help="the store's directory (created if absent)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        metavar="N",
        help="events per transaction (default %(default)s)",
    )
    p.add_argument(
        "--max-errors",
        type=int,
        default=MAX_ERROR_LINES,
        metavar="N",
        help="most bad lines reported on stderr, the rest only counted (default %(default)s)",
    )
    p.add_argument(
        "--max-future-skew",
        type=int,
        default=DEFAULT_MAX_FUTURE_SKEW,
        metavar="SECONDS",
        help="as the service's max-future-skew (default %(default)s)",
    )
    p.set_defaults(handler=handle_load)
