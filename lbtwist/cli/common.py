# -*- test-case-name: tests.unit.test_cli -*-
"""
What every C{lbtwist} subcommand gets: its environment and streams, injected
so that tests run the commands without touching the process.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# Not typing.TYPE_CHECKING, nor attrs for CLIContext: a producer call
# (lbtwist logevent) must not pay for their imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine, Mapping
    from typing import Any, TextIO

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


def _fqdn() -> str:
    """
    As C{socket.getfqdn()}, on the C module (the C{socket} module's imports
    cost a producer call more than the look-up).
    """
    import _socket

    name = _socket.gethostname()
    try:
        # An ASCII name as bytes: as text it would load the IDNA codec (the C
        # function takes bytes too; typeshed knows only str).
        hostname, aliases, _ = _socket.gethostbyaddr(
            name.encode("ascii") if name.isascii() else name  # type: ignore[arg-type]
        )
    except OSError:
        return name
    for candidate in [hostname, *aliases]:
        if "." in candidate:
            return candidate
    return hostname


def _hostname() -> str:
    import _socket

    return _socket.gethostname()


def _login() -> str:
    """
    As C{getpass.getuser()}, without the imports of getpass.
    """
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    import pwd

    return pwd.getpwuid(os.getuid())[0]


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

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        stdin: TextIO | None = None,
        now: Callable[[], int] = _now,
        random_bytes: Callable[[int], bytes] = os.urandom,
        pid: int | None = None,
        fqdn: Callable[[], str] = _fqdn,
        hostname: Callable[[], str] = _hostname,
        login: Callable[[], str] = _login,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        """
        Every argument defaults to the process's own (its environment, streams,
        clock, randomness, pid, host names and login).
        """
        self.env: Mapping[str, str] = dict(os.environ) if env is None else env
        self.stdout: TextIO = sys.stdout if stdout is None else stdout
        self.stderr: TextIO = sys.stderr if stderr is None else stderr
        self.stdin: TextIO = sys.stdin if stdin is None else stdin
        self.now = now
        self.random_bytes = random_bytes
        self.pid: int = os.getpid() if pid is None else pid
        self.fqdn = fqdn
        self.hostname = hostname
        self.login = login
        self.monotonic = monotonic
        self.sleep = sleep


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
            value = seconds_or_none(text)
            if value is None:
                from lbtwist.core.errors import InvalidValue

                raise InvalidValue(f"${name}: not a number of seconds: {text!r}")
            return value
    return float(args.default_timeout)


def seconds_or_none(text: str) -> float | None:
    """
    C{text} as a number of seconds (finite, not negative), else C{None}.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    if not value >= 0 or value == float("inf"):
        return None
    return value


def _seconds(text: str) -> float:
    value = seconds_or_none(text)
    if value is None:
        import argparse

        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def producer_for(path: str, timeout: float, ctx: CLIContext) -> LBProducer:
    """
    The L{LBProducer} of a command run: C{timeout} and the context's clock.
    """
    from lbtwist.client.producer import LBProducer

    return LBProducer(path, timeout, clock=ctx.monotonic, sleep=ctx.sleep)


def note_signal(signum: int, signalled: list[int], reactor: Any) -> None:
    """
    Once the reactor runs, note in C{signalled} each C{signum} received (then let
    Twisted's own handler stop the reactor, or stop it ourselves): a command stopped
    by a signal exits with C{128 + signum}, as a shell reports it.
    """

    def install() -> None:
        previous = signal.getsignal(signum)

        def handler(number: int, frame: Any) -> None:
            signalled.append(number)
            if callable(previous):
                previous(number, frame)
            else:
                reactor.callFromThread(reactor.stop)

        signal.signal(signum, handler)

    reactor.callWhenRunning(install)


def react_command(
    main: Callable[[Any, list[bool]], Coroutine[Any, Any, int]],
    on_interrupt: Callable[[], None],
) -> int:
    """
    Run C{main(reactor, interrupted)} under C{react()}; what it returns is the
    exit status. A SIGINT or SIGTERM that stops the reactor before it ends makes
    the status C{128 + signum} (L{note_signal}), appends C{True} to
    C{interrupted} and calls C{on_interrupt()} (as the reactor shuts down).

    @return: the exit status (1 where C{main} failed).
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    status = [1]
    # The signal that stopped the reactor before the command ended (Ctrl-C: SIGINT).
    signalled: list[int] = []
    interrupted: list[bool] = []

    async def run(reactor: Any) -> None:
        result = await main(reactor, interrupted)
        if not interrupted:
            status[0] = result

    def start(reactor: Any) -> Deferred[None]:
        done = Deferred.fromCoroutine(run(reactor))

        def shutting_down() -> None:
            if not done.called:
                interrupted.append(True)
                status[0] = 128 + (signalled[0] if signalled else signal.SIGINT)
                on_interrupt()

        reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
        for signum in (signal.SIGINT, signal.SIGTERM):
            note_signal(signum, signalled, reactor)
        return done

    try:
        react(start)
    except SystemExit:
        pass
    return status[0]
