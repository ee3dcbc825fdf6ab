# -*- test-case-name: tests.unit.test_logs,tests.unit.test_tls -*-
"""
Log lines a flood cannot multiply: the one rate limiter of lbtwist.

A L{RateLimitedLog} logs the first C{lines} lines of a key in a window of
C{period} seconds (the window starts with the key's first logged line) and
counts the rest; with a C{burst}, at most that many lines of all keys are
logged per period, and the lines held back by it are reported in one line when
the next period starts. What a key held back is reported in one of two forms:

  - C{inline=False}: one summary line of its own when the key's window is over
    (at the key's next line, or at L{RateLimitedLog.flush});
  - C{inline=True}: appended to the key's next logged line.

Two configurations use it: L{lbtwist.service.logs.WarningLimiter} (a warning
per call site, summarized) and L{lbtwist.security.tls.RefusalLog} (a TLS
refusal per kind and peer, counted inline, under a burst). It lives in the
security layer, the lowest one that logs, so that both can use it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Protocol

import attrs
from twisted.logger import Logger, LogLevel

log = Logger()

#: The summary line of a key's held-back lines (C{inline=False}).
SUMMARY = "{suppressed} more warnings like {like!r} suppressed in {period:.0f} s"
#: The text appended to a key's next line (C{inline=True}).
INLINE = " ({repeats} more like it since the last such line)"
#: The line of the lines held back by the burst.
DROPPED = "{dropped} more lines not logged in {interval} s"


class Seconds(Protocol):
    """
    A clock: a reactor, a L{twisted.internet.task.Clock}.
    """

    def seconds(self) -> float: ...


@attrs.define
class _Window:
    log: Logger
    format: str
    start: float
    emitted: int = 0
    suppressed: int = 0


def _short(value: object, limit: int) -> object:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    if isinstance(value, bytes) and len(value) > limit:
        return value[:limit] + b"..."
    return value


class RateLimitedLog:
    """
    At most C{lines} lines per key every C{period} seconds and C{burst} lines in
    all; the rest counted and reported (see the module).

    @param clock: provides C{seconds()}; L{None}: the reactor, looked up at the
        first line.
    @param lines: lines logged per key and window.
    @param period: seconds of a window.
    @param burst: lines of all keys logged per period (L{None}: no such limit).
    @param max_keys: keys tracked at once; past that the least recently logged
        one is reported and forgotten.
    @param max_value: longest string value logged (longer ones are cut);
        L{None}: values are logged whole.
    @param inline: report a key's held-back lines with its next line.
    @param summary: the summary line (keys C{suppressed}, C{like}, C{period}).
    @param dropped: the line of the burst's held-back lines (keys C{dropped},
        C{interval}).
    @param logger: where the burst's line goes.
    """

    def __init__(
        self,
        clock: Seconds | None = None,
        *,
        lines: int = 1,
        period: float = 60.0,
        burst: int | None = None,
        max_keys: int = 1024,
        max_value: int | None = None,
        inline: bool = False,
        summary: str = SUMMARY,
        dropped: str = DROPPED,
        logger: Logger | None = None,
    ) -> None:
        self.configure(clock=clock, lines=lines, period=period)
        self.burst = burst
        self.max_keys = max_keys
        self.max_value = max_value
        self.inline = inline
        self.summary = summary
        self.dropped = dropped
        self.logger = logger if logger is not None else log
        self._windows: dict[Hashable, _Window] = {}
        self._burst_start = -float("inf")
        self._burst_count = 0
        self._burst_dropped = 0

    def configure(self, *, clock: Seconds | None, lines: int, period: float) -> None:
        """
        Set the clock and the per-key limits (windows under way keep their counts).

        @raise ValueError: C{lines} below 1 or C{period} not positive.
        """
        if lines < 1 or period <= 0:
            raise ValueError("a warning limit needs lines >= 1 and period > 0")
        self.clock = clock
        self.lines = lines
        self.period = period

    def _reactor_clock(self) -> Seconds:
        from twisted.internet import reactor

        self.clock = reactor
        return self.clock

    def emit_line(
        self,
        logger: Logger,
        key: Hashable,
        level: LogLevel,
        format: str,
        values: Mapping[str, object],
    ) -> bool:
        """
        C{logger.emit(level, format, **values)} unless C{key}'s quota for its
        window or the burst is spent. A held-back line costs a clock reading
        and a look-up.

        @return: whether the line was logged.
        """
        clock = self.clock if self.clock is not None else self._reactor_clock()
        now = clock.seconds()
        window = self._windows.get(key)
        over = False
        if window is not None:
            over = now >= window.start + self.period
            if not over and window.emitted >= self.lines:
                window.suppressed += 1
                return False
        if self.burst is not None and not self._within_burst(now, self.burst):
            return False
        repeats = 0
        if window is None:
            if len(self._windows) >= self.max_keys:
                self._forget()
            window = _Window(logger, format, now)
        else:
            del self._windows[key]
            if over:
                repeats = window.suppressed
                self._close(window)
                window.start = now
        self._windows[key] = window
        window.emitted += 1
        limit = self.max_value
        if limit is not None:
            values = {k: _short(v, limit) for k, v in values.items()}
        if self.inline:
            if repeats:
                format += INLINE
            logger.emit(level, format, repeats=repeats, **values)
        else:
            logger.emit(level, format, **values)
        return True

    def _within_burst(self, now: float, burst: int) -> bool:
        if now - self._burst_start >= self.period:
            if self._burst_dropped:
                self.logger.warn(self.dropped, dropped=self._burst_dropped, interval=self.period)
            self._burst_start, self._burst_count, self._burst_dropped = now, 0, 0
        if self._burst_count >= burst:
            self._burst_dropped += 1
            return False
        self._burst_count += 1
        return True

    def _close(self, window: _Window) -> None:
        if window.suppressed and not self.inline:
            window.log.warn(
                self.summary,
                suppressed=window.suppressed,
                like=window.format,
                period=self.period,
            )
        window.emitted = window.suppressed = 0

    def _forget(self) -> None:
        # The keys are in the order of their last logged line: the first is the
        # quietest (one pop a new key, whatever the number of keys).
        while len(self._windows) >= self.max_keys:
            key = next(iter(self._windows))
            self._close(self._windows.pop(key))

    def flush(self, *, everything: bool = False) -> None:
        """
        Report every window that is over and forget its key.

        @param everything: the windows under way too (at shutdown).
        """
        clock = self.clock if self.clock is not None else self._reactor_clock()
        now = clock.seconds()
        for key, window in list(self._windows.items()):
            if everything or now >= window.start + self.period:
                self._close(window)
                del self._windows[key]

    def suppressed(self) -> int:
        """
        @return: lines held back in the current windows (not yet reported).
        """
        return sum(w.suppressed for w in self._windows.values())

    def tracked(self) -> int:
        """
        @return: the keys tracked now (at most C{max_keys}).
        """
        return len(self._windows)


__all__ = ["DROPPED", "INLINE", "SUMMARY", "RateLimitedLog", "Seconds"]
