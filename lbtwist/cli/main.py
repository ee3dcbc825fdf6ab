# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{lbtwist} command: a dispatcher over subcommand modules.

A subcommand module has C{register(subparsers)} that adds its parser and sets
the defaults C{handler} (a C{(args, ctx) -> int} function) and, if it takes
free-form C{--field=value} options, C{extra_args=True}. Add a module name to
L{COMMAND_MODULES} to add a subcommand.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from lbtwist import __version__
from lbtwist.cli.common import CLIContext
from lbtwist.core.errors import LBError

COMMAND_MODULES: list[str] = [
    "lbtwist.cli.logevent",
    "lbtwist.cli.jobreg",
    "lbtwist.cli.local",
    "lbtwist.cli.replay",
    "lbtwist.cli.query",
    "lbtwist.cli.probe",
    "lbtwist.cli.relayadmin",
]


#: Subcommands whose runs load only their own module (they run once per event,
#: so they must not pay for the others' imports: Twisted, pyOpenSSL).
LIGHT_COMMANDS: dict[str, str] = {
    "logevent": "lbtwist.cli.logevent",
    "job-reg": "lbtwist.cli.jobreg",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """
    The parser of C{lbtwist} with every subcommand registered (only module
    C{only} if given).
    """
    parser = argparse.ArgumentParser(
        prog="lbtwist",
        description="Logging & Bookkeeping tools for lbtwist (L&B compatible).",
    )
    parser.add_argument("--version", action="version", version=f"lbtwist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if only is None else [only]:
        importlib.import_module(name).register(subparsers)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """
    The parser of subcommand C{command} (C{parser} itself if there is none).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(command)
            if isinstance(found, argparse.ArgumentParser):
                return found
    return parser


def describe_oserror(e: OSError) -> str:
    """
    One line for a system error: C{ERR <errno> <text>[: <file>]}.
    """
    code = e.errno if e.errno is not None else errno.EIO
    text = e.strerror or str(e) or type(e).__name__
    if e.filename:
        text = f"{text}: {e.filename}"
    return f"ERR {code} {text}"


def run(argv: Sequence[str], ctx: CLIContext) -> int:
    """
    Run C{lbtwist} with arguments C{argv} (without the program name).

    @return: the exit status.
    """
    parser = build_parser(LIGHT_COMMANDS.get(argv[0]) if argv else None)
    saved = sys.stdout, sys.stderr
    # argparse writes usage and help to sys.std*: point them at the context's.
    sys.stdout, sys.stderr = ctx.stdout, ctx.stderr
    try:
        args, extra = parser.parse_known_args(list(argv))
        if extra and not getattr(args, "extra_args", False):
            # The subcommand's own usage, as each glite-lb-* tool prints its own.
            subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdout, sys.stderr = saved
    args.extra = extra
    try:
        status: int = args.handler(args, ctx)
    except LBError as e:
        ctx.stderr.write(f"lbtwist {args.command}: ERR {e.code} {e.message}\n")
        return 1
    except BrokenPipeError:
        # The reader went away (| head): not worth a message.
        return 1
    except OSError as e:
        ctx.stderr.write(f"lbtwist {args.command}: {describe_oserror(e)}\n")
        return 1
    return status


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Console script entry point.
    """
    status = run(sys.argv[1:] if argv is None else argv, CLIContext())
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Keep the interpreter's final flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = status or 1
    sys.exit(status)


if __name__ == "__main__":
    main()
