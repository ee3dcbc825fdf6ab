# -*- test-case-name: tests.unit.test_ratelimit -*-
"""
Tests for L{lbtwist.security.ratelimit}, the one rate limiter of log lines
(its two configurations are tested in C{tests.unit.test_logs} and
C{tests.unit.test_tls}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security.ratelimit import RateLimitedLog
from lbtwist.security.tls import RefusalLog
from lbtwist.service.logs import WarningLimiter


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.log = Logger(namespace="tests.ratelimit", observer=self.events.append)  # type: ignore[arg-type]

    def lines(self) -> list[str]:
        return [str(formatEvent(e)) for e in self.events]

    def test_one_limiter_behind_both(self) -> None:
        """
        The warnings of the services and the TLS refusals are counted by the same code.
        """
        self.assertIsInstance(WarningLimiter(clock=self.clock), RateLimitedLog)
        self.assertIsInstance(RefusalLog(self.clock), RateLimitedLog)

    def test_level_kept(self) -> None:
        limiter = RateLimitedLog(self.clock)
        limiter.emit_line(self.log, "k", LogLevel.info, "line", {})
        self.assertEqual(self.events[0]["log_level"], LogLevel.info)

    def test_least_recently_logged_forgotten(self) -> None:
        """
        Past C{max_keys}, the key logged longest ago is forgotten (and its count
        reported), not a key that is still logging.
        """
        limiter = RateLimitedLog(self.clock, lines=2, period=60, max_keys=2)
        for key in "abaa":
            limiter.emit_line(self.log, key, LogLevel.warn, key, {})
            self.clock.advance(1)
        limiter.emit_line(self.log, "c", LogLevel.warn, "c", {})
        limiter.emit_line(self.log, "a", LogLevel.warn, "a", {})
        self.assertEqual(self.lines(), ["a", "b", "a", "c"])
        self.assertEqual(limiter.suppressed(), 2)

    def test_burst_and_summaries(self) -> None:
        """
        A burst bounds the lines of all keys (a line it holds back does not count
        against its key); a key's own window and summary are kept beside it.
        """
        limiter = RateLimitedLog(self.clock, lines=2, period=10, burst=3, logger=self.log)
        logged = [
            limiter.emit_line(self.log, k % 2, LogLevel.warn, f"k{k % 2}", {}) for k in range(6)
        ]
        self.assertEqual(logged, [True, True, True, False, False, False])
        self.clock.advance(10)
        self.assertTrue(limiter.emit_line(self.log, 0, LogLevel.warn, "k0", {}))
        self.assertEqual(
            self.lines()[3:],
            [
                "2 more lines not logged in 10 s",
                "1 more warnings like 'k0' suppressed in 10 s",
                "k0",
            ],
        )
