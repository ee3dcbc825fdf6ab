# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{lbtwist} command: a dispatcher over subcommand modules.

A subcommand module has C{register(subparsers)} that adds its parser and sets
the defaults C{handler} (a C{(args, ctx) -> int} function) and, if it takes
free-form C{--field=value} options, C{extra_args=True}. Add a module name to
L{COMMAND_MODULES} to add a subcommand, and a line to L{COMMANDS} so that a
run of it imports only its own module.

A run imports no more than it needs: C{lbtwist logevent} runs once per event
(the Job Wrapper's and CREAM's), so this module imports neither argparse nor
typing, the subcommand's module is imported only when it runs, and the
producer commands first try their fast lane (L{lbtwist.cli.fast}), which
handles the usual calls without argparse or the event model and hands
anything else to the full parser.
"""

from __future__ import annotations

import errno
import os
import sys

from lbtwist import __version__
from lbtwist.cli.common import CLIContext
from lbtwist.core.errors import LBError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import NoReturn

#: Every subcommand module, in the order of C{lbtwist --help}.
COMMAND_MODULES: list[str] = [
    "lbtwist.cli.logevent",
    "lbtwist.cli.jobreg",
    "lbtwist.cli.local",
    "lbtwist.cli.replay",
    "lbtwist.cli.query",
    "lbtwist.cli.store",
    "lbtwist.cli.purge",
    "lbtwist.cli.notifyargs",
    "lbtwist.cli.dump",
    "lbtwist.cli.load",
    "lbtwist.cli.explain",
    "lbtwist.cli.stats",
]

#: Subcommand -> the module that registers it: a run of a subcommand listed
#: here builds only that module's parser (a subcommand not listed still runs,
#: with every module's parser built).
COMMANDS: dict[str, str] = {
    "logevent": "lbtwist.cli.logevent",
    "job-reg": "lbtwist.cli.jobreg",
    "status": "lbtwist.cli.local",
    "log": "lbtwist.cli.local",
    "dump": "lbtwist.cli.dump",
    "load": "lbtwist.cli.load",
    "explain": "lbtwist.cli.explain",
    "stats": "lbtwist.cli.stats",
    "trace": "lbtwist.cli.stats",
    "replay": "lbtwist.cli.replay",
    "jobs": "lbtwist.cli.query",
    "certs": "lbtwist.cli.query",
    "store": "lbtwist.cli.store",
    "purge": "lbtwist.cli.purge",
    "notify": "lbtwist.cli.notifyargs",
}

#: Subcommands with a fast lane: C{"module:function"}, the function taking the
#: arguments after the subcommand and the context and returning the exit
#: status, or C{None} to hand the run to the full parser (it must not have
#: done anything then).
FAST_LANES: dict[str, str] = {
    "logevent": "lbtwist.cli.fast:logevent",
    "job-reg": "lbtwist.cli.fast:job_reg",
}


def _import(name: str) -> object:
    # __import__, not importlib: importing importlib costs a producer call.
    __import__(name)
    return sys.modules[name]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """
    The parser of C{lbtwist} with every subcommand registered (only module
    C{only} if given).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="lbtwist",
        description="Logging & Bookkeeping tools for lbtwist (L&B compatible).",
    )
    parser.add_argument("--version", action="version", version=f"lbtwist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if only is None else [only]:
        _import(name).register(subparsers)  # type: ignore[attr-defined]
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """
    The parser of subcommand C{command} (C{parser} itself if there is none).
    """
    import argparse

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
    command = argv[0] if argv else ""
    lane = FAST_LANES.get(command)
    if lane is not None:
        module, _, function = lane.partition(":")
        fast: Callable[[Sequence[str], CLIContext], int | None] = getattr(_import(module), function)
        status = _guarded(command, lambda: fast(argv[1:], ctx), ctx)
        if status is not None:
            return status
    parser = build_parser(COMMANDS.get(command))
    if command in COMMANDS and subparser(parser, command) is parser:
        # The table names a module that no longer registers it: every module's.
        parser = build_parser()
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
    return _guarded(args.command, lambda: args.handler(args, ctx), ctx) or 0


def _guarded(command: str, call: Callable[[], int | None], ctx: CLIContext) -> int | None:
    """
    C{call()}, with the errors every subcommand reports alike turned into one
    line on stderr and exit status 1.
    """
    try:
        return call()
    except LBError as e:
        ctx.stderr.write(f"lbtwist {command}: ERR {e.code} {e.message}\n")
        return 1
    except BrokenPipeError:
        # The reader went away (| head): not worth a message.
        return 1
    except OSError as e:
        ctx.stderr.write(f"lbtwist {command}: {describe_oserror(e)}\n")
        return 1


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
