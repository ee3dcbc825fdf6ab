# -*- test-case-name: tests.unit.test_cli -*-
"""
What every C{lbtwist} subcommand gets: its environment and streams, injected
so that tests run the commands without touching the process.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import attrs

if TYPE_CHECKING:
    from lbtwist.client.producer import LBProducer

#: The intake socket used when neither C{-S} nor the environment names one.
DEFAULT_SOCKET = os.path.join("lbtwist-state", "events.sock")

#: Environment variable naming the intake socket (L&B's name for its proxy socket).
SOCKET_ENV = "GLITE_WMS_LBPROXY_STORE_SOCK"

#: The serve socket used when neither an option nor the environment names one.
DEFAULT_SERVE_SOCKET = os.path.join("lbtwist-state", "serve.sock")

#: Environment variable naming the proxy's serve (query) socket.
SERVE_SOCKET_ENV = "GLITE_WMS_LBPROXY_SERVE_SOCK"


def _now() -> int:
    return time.time_ns() // 1000


@attrs.define
class CLIContext:
    """
    The outside world of one command run.

    @ivar now: returns the current time in microseconds since the epoch.
    @ivar random_bytes: returns that many random bytes.
    @ivar fqdn: returns this host's fully qualified name.
    @ivar hostname: returns this host's name as C{gethostname()} gives it (L&B's HOST).
    @ivar login: returns the local user's login name.
    @ivar monotonic: returns monotonic seconds (producer retry deadlines).
    @ivar sleep: waits that many seconds (producer retry delays).
    """

    env: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    stdout: TextIO = attrs.field(factory=lambda: sys.stdout)
    stderr: TextIO = attrs.field(factory=lambda: sys.stderr)
    stdin: TextIO = attrs.field(factory=lambda: sys.stdin)
    now: Callable[[], int] = _now
    random_bytes: Callable[[int], bytes] = os.urandom
    pid: int = attrs.field(factory=os.getpid)
    fqdn: Callable[[], str] = socket.getfqdn
    hostname: Callable[[], str] = socket.gethostname
    login: Callable[[], str] = getpass.getuser
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep


def env_first(env: Mapping[str, str], *names: str) -> str | None:
    """
    The first non-empty value among the environment variables C{names}.
    """
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def default_socket(env: Mapping[str, str]) -> str:
    """
    The intake socket: C{$GLITE_WMS_LBPROXY_STORE_SOCK}, else L{DEFAULT_SOCKET}.
    """
    return env_first(env, SOCKET_ENV) or DEFAULT_SOCKET


def default_serve_socket(env: Mapping[str, str]) -> str:
    """
    The serve socket: C{$GLITE_WMS_LBPROXY_SERVE_SOCK}, else L{DEFAULT_SERVE_SOCKET}.
    """
    return env_first(env, SERVE_SOCKET_ENV) or DEFAULT_SERVE_SOCKET


#: Environment variables giving the producers' timeout when C{--timeout} is not
#: given (L&B's logging-timeout variable and its older name).
TIMEOUT_ENV = ("GLITE_WMS_LOG_TIMEOUT", "EDG_WL_LOG_TIMEOUT")


def add_timeout_option(parser: Any, default: float) -> None:
    """
    Add C{--timeout SECONDS}: how long a producer command retries a refused,
    backlogged or busy (C{ERR 11}) intake before it fails. Read it with
    L{producer_timeout}.
    """
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "give up retrying a refused or busy intake after SECONDS "
            f"(default $GLITE_WMS_LOG_TIMEOUT, $EDG_WL_LOG_TIMEOUT, else {default:g})"
        ),
    )
    parser.set_defaults(default_timeout=default)


def producer_timeout(args: argparse.Namespace, env: Mapping[str, str]) -> float:
    """
    The timeout of a producer command: C{--timeout}, else the environment
    (L{TIMEOUT_ENV}), else the command's default.

    @raise InvalidValue: the environment's value is not a number of seconds.
    """
    if args.timeout is not None:
        return float(args.timeout)
    for name in TIMEOUT_ENV:
        text = env.get(name)
        if text:
            try:
                return _seconds(text)
            except argparse.ArgumentTypeError as e:
                from lbtwist.core.errors import InvalidValue

                raise InvalidValue(f"${name}: {e}") from None
    return float(args.default_timeout)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def producer_for(path: str, timeout: float, ctx: CLIContext) -> LBProducer:
    """
    The L{LBProducer} of a command run: C{timeout} and the context's clock.
    """
    from lbtwist.client.producer import LBProducer

    return LBProducer(path, timeout, clock=ctx.monotonic, sleep=ctx.sleep)
