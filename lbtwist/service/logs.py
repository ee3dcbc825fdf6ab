# -*- test-case-name: tests.unit.test_logs -*-
"""
Logs that cannot fill the disk.

Two parts:

  - L{WarningLimiter}: rate-limited warnings. The first C{lines} warnings of a
    cause (by default: the call site's format string) in a window of C{period}
    seconds are logged; the rest are counted and reported in one summary line
    when the window is over (at the cause's next warning, or at L{flush}, which
    the service calls every window). L{warn} logs through the process-wide
    L{LIMITER}, which C{lbtwist.tap} configures from the options. The limiter
    itself is the shared L{lbtwist.security.ratelimit.RateLimitedLog}.
  - L{logger}: a C{twistd --logger} factory writing the twistd log to a file
    rotated at C{log-max-size} bytes, keeping C{log-max-files} rotated files
    (twistd's own file log rotates at 1 MB and keeps every file). C{lbtwist.tap}
    installs it when twistd logs to a file, so plain C{twistd lbproxy --logfile X}
    is capped; L{configure} carries the options to it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, textFileLogObserver
from twisted.python.logfile import LogFile

from lbtwist import config
from lbtwist.security.ratelimit import RateLimitedLog, Seconds

#: Warning lines per cause and window before the rest are only counted.
DEFAULT_WARNINGS_PER_MINUTE = config.DEFAULT_WARNINGS_PER_MINUTE
#: Seconds of a rate-limit window.
WINDOW = 60.0
#: Longest text of one value in a rate-limited warning (hostile input can be
#: megabytes long); longer values are cut and marked.
MAX_VALUE = 1000
#: Causes tracked at once; past that the oldest quiet ones are forgotten.
MAX_CAUSES = 1000

#: Defaults of the capped twistd log.
DEFAULT_LOG_MAX_SIZE = config.DEFAULT_LOG_MAX_SIZE
DEFAULT_LOG_MAX_FILES = config.DEFAULT_LOG_MAX_FILES
DEFAULT_LOG_FILE = "twistd.log"

#: Environment variables read by L{logger} when it was not configured by the
#: plugin (C{twistd --logger lbtwist.service.logs.logger} with another application).
ENV_LOG_FILE = "LBTWIST_LOG_FILE"
ENV_LOG_MAX_SIZE = "LBTWIST_LOG_MAX_SIZE"
ENV_LOG_MAX_FILES = "LBTWIST_LOG_MAX_FILES"


class _WallClock:
    def seconds(self) -> float:
        return time.time()


class WarningLimiter(RateLimitedLog):
    """
    At most C{lines} warnings per cause every C{period} seconds, then one summary
    line with the count of the suppressed ones (a L{RateLimitedLog} keyed by the
    logger's namespace and the cause).

    @param clock: provides C{seconds()} (default: the wall clock).
    @param lines: warnings logged per cause and window.
    @param period: seconds of a window.
    @param max_value: longest string value logged (longer ones are cut).
    @param max_causes: causes tracked at once.
    """

    def __init__(
        self,
        *,
        clock: Seconds | None = None,
        lines: int = DEFAULT_WARNINGS_PER_MINUTE,
        period: float = WINDOW,
        max_value: int = MAX_VALUE,
        max_causes: int = MAX_CAUSES,
    ) -> None:
        super().__init__(
            clock if clock is not None else _WallClock(),
            lines=lines,
            period=period,
            max_keys=max_causes,
            max_value=max_value,
        )

    def configure(
        self,
        *,
        clock: Seconds | None = None,
        lines: int = DEFAULT_WARNINGS_PER_MINUTE,
        period: float = WINDOW,
    ) -> None:
        """
        Set the clock (default: the wall clock) and the limits (windows under way
        keep their counts).
        """
        super().configure(
            clock=clock if clock is not None else _WallClock(), lines=lines, period=period
        )

    def warn(self, log: Logger, format: str, *, cause: str | None = None, **kwargs: object) -> bool:
        """
        C{log.warn(format, **kwargs)} unless this cause's quota for the window is used.

        @param cause: what is counted together (default: C{format}).
        @return: whether the line was logged.
        """
        key = (log.namespace, cause if cause is not None else format)
        return self.emit_line(log, key, LogLevel.warn, format, kwargs)


class SummaryService(TimerService):
    """
    Flushes a limiter's summaries every window, and all of them when the service
    stops (the counts of a flood that ends the process are not lost).
    """

    def __init__(self, limiter: WarningLimiter, clock: IReactorTime) -> None:
        super().__init__(limiter.period, limiter.flush)
        self.clock = clock
        self.limiter = limiter

    def stopService(self) -> Any:
        d = super().stopService()
        self.limiter.flush(everything=True)
        return d


#: The process-wide limiter of L{warn} (configured by C{lbtwist.tap}).
LIMITER = WarningLimiter()


def warn(log: Logger, format: str, **kwargs: Any) -> bool:
    """
    A rate-limited C{log.warn(format, **kwargs)} through L{LIMITER}: the form of
    every per-event and per-connection warning.
    """
    return LIMITER.warn(log, format, **kwargs)


# The capped twistd log.


@attrs.frozen
class LogSettings:
    """
    Where the twistd log goes and how large it may grow.

    @ivar path: the log file.
    @ivar max_size: bytes at which it is rotated.
    @ivar max_files: rotated files kept (older ones are deleted).
    """

    path: str = DEFAULT_LOG_FILE
    max_size: int = DEFAULT_LOG_MAX_SIZE
    max_files: int = DEFAULT_LOG_MAX_FILES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LogSettings:
        """
        Settings from C{LBTWIST_LOG_FILE}, C{LBTWIST_LOG_MAX_SIZE} and
        C{LBTWIST_LOG_MAX_FILES}, defaults for the missing ones.

        @raise ValueError: a size or count that is not a positive whole number.
        """
        return cls(
            path=env.get(ENV_LOG_FILE) or DEFAULT_LOG_FILE,
            max_size=_positive(ENV_LOG_MAX_SIZE, env.get(ENV_LOG_MAX_SIZE), DEFAULT_LOG_MAX_SIZE),
            max_files=_positive(
                ENV_LOG_MAX_FILES, env.get(ENV_LOG_MAX_FILES), DEFAULT_LOG_MAX_FILES
            ),
        )

    def open(self) -> LogFile:
        """
        @return: the rotated log file.
        """
        return LogFile.fromFullPath(
            self.path, rotateLength=self.max_size, maxRotatedFiles=self.max_files
        )


def _positive(name: str, text: str | None, default: int) -> int:
    if not text:
        return default
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"{name}: not a positive whole number: {text!r}")
    return int(text)


_configured: LogSettings | None = None


def configure(settings: LogSettings | None) -> None:
    """
    The settings L{logger} uses (C{None}: the environment's).
    """
    global _configured
    _configured = settings


def install_logger(twistd_options: Any, max_size: int, max_files: int) -> LogSettings | None:
    """
    Make twistd log through L{logger} with these caps when it logs to a file
    (C{--logfile}, or a daemon's default C{twistd.log}) and no other C{--logger}
    or C{--syslog} was asked for. Called from the plugin's C{postOptions}, which
    runs before twistd's own (that one imports the C{--logger} name).

    @param twistd_options: twistd's C{ServerOptions} (the plugin options' C{parent}).
    @return: the settings, or C{None} when twistd keeps its own observer
        (standard output, syslog, another logger).
    """
    get = getattr(twistd_options, "get", None)
    if get is None:
        return None
    chosen = get("logger")
    if get("syslog"):
        return None
    if chosen is not None and chosen not in (_NAME, _OLD_NAME, logger):
        return None
    logfile = get("logfile") or ""
    if logfile == "-" or (not logfile and get("nodaemon")):
        return None
    settings = LogSettings(logfile or DEFAULT_LOG_FILE, max_size, max_files)
    configure(settings)
    if chosen is None:
        twistd_options["logger"] = _NAME
    return settings


_NAME = f"{__name__}.logger"
#: The factory's name before the layer packages; still accepted (L{lbtwist.service.logs}).
_OLD_NAME = "lbtwist.logs.logger"  # relayout: keep


def logger() -> Any:
    """
    The C{twistd --logger} factory: a text observer on the capped log file of
    L{configure}'s settings (else the environment's, L{LogSettings.from_env}).
    SIGUSR1 rotates the file, as with twistd's own file log.
    """
    settings = _configured if _configured is not None else LogSettings.from_env(os.environ)
    file = settings.open()
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: FrameType | None) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    observer = textFileLogObserver(file)  # type: ignore[arg-type]
    assert ILogObserver.providedBy(observer)
    return observer


__all__ = [
    "LIMITER",
    "LogSettings",
    "SummaryService",
    "WarningLimiter",
    "configure",
    "install_logger",
    "logger",
    "warn",
]
