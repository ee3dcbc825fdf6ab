# -*- test-case-name: tests.unit.test_logs -*-
"""
Tests for L{lbtwist.service.logs}: the warning limiter and the capped twistd log.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.service import logs


class Captured:
    """
    A L{Logger} whose events are kept, and their text.
    """

    def __init__(self, namespace: str = "tests.unit.test_logs") -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(namespace=namespace, observer=self.events.append)  # type: ignore[arg-type]

    def lines(self) -> list[str]:
        return [str(formatEvent(e)) for e in self.events]


class LimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = logs.WarningLimiter(clock=self.clock, lines=3, period=60)
        self.out = Captured()

    def flood(self, n: int, fmt: str = "refused {n}") -> list[bool]:
        return [self.limiter.warn(self.out.log, fmt, n=i) for i in range(n)]

    def test_first_lines_then_counted(self) -> None:
        """
        The first C{lines} warnings of a cause are logged, the rest only counted.
        """
        self.assertEqual(self.flood(10), [True] * 3 + [False] * 7)
        self.assertEqual(self.out.lines(), ["refused 0", "refused 1", "refused 2"])
        self.assertEqual(self.out.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.limiter.suppressed(), 7)

    def test_summary_at_next_window(self) -> None:
        """
        The first warning of a cause after its window logs the count of the
        suppressed ones, then the quota starts again.
        """
        self.flood(10)
        self.clock.advance(59)
        self.assertFalse(self.limiter.warn(self.out.log, "refused {n}", n=99))
        self.clock.advance(1)
        self.assertTrue(self.limiter.warn(self.out.log, "refused {n}", n=100))
        lines = self.out.lines()
        self.assertEqual(
            lines[3:], ["8 more warnings like 'refused {n}' suppressed in 60 s", "refused 100"]
        )
        self.assertEqual(self.limiter.suppressed(), 0)

    def test_flush_summarizes_quiet_causes(self) -> None:
        """
        L{flush} logs the summary of windows that are over even when the cause
        has gone quiet, and only then.
        """
        self.flood(5)
        self.limiter.flush()
        self.assertEqual(len(self.out.events), 3)
        self.clock.advance(60)
        self.limiter.flush()
        self.assertEqual(
            self.out.lines()[-1], "2 more warnings like 'refused {n}' suppressed in 60 s"
        )
        self.limiter.flush()
        self.assertEqual(len(self.out.events), 4)

    def test_summary_service(self) -> None:
        """
        L{logs.SummaryService} flushes every window and, when it stops, logs the
        counts of the windows under way.
        """
        service = logs.SummaryService(self.limiter, self.clock)
        service.startService()
        self.flood(5)
        self.clock.advance(60)
        self.assertEqual(
            self.out.lines()[-1], "2 more warnings like 'refused {n}' suppressed in 60 s"
        )
        self.flood(4)
        self.clock.advance(30)
        self.assertEqual(len(self.out.events), 7)
        service.stopService()
        self.assertEqual(
            self.out.lines()[-1], "1 more warnings like 'refused {n}' suppressed in 60 s"
        )
        self.assertFalse(self.clock.getDelayedCalls())

    def test_no_summary_without_suppression(self) -> None:
        self.flood(3)
        self.clock.advance(60)
        self.limiter.flush()
        self.assertEqual(len(self.out.events), 3)

    def test_causes_counted_apart(self) -> None:
        """
        Each format string (call site) and each logger namespace has its own quota.
        """
        other = Captured("tests.other")
        self.flood(5, "a {n}")
        self.flood(5, "b {n}")
        for i in range(5):
            self.limiter.warn(other.log, "a {n}", n=i)
        self.assertEqual(len(self.out.events), 6)
        self.assertEqual(len(other.events), 3)

    def test_explicit_cause(self) -> None:
        for i in range(5):
            self.limiter.warn(self.out.log, f"line {i}", cause="same")
        self.assertEqual(self.out.lines(), ["line 0", "line 1", "line 2"])

    def test_long_values_cut(self) -> None:
        """
        Hostile values (megabytes of junk) are cut to C{max_value} characters.
        """
        limiter = logs.WarningLimiter(clock=self.clock, max_value=10)
        limiter.warn(self.out.log, "bad {text} {raw!r} {n}", text="x" * 10_000, raw=b"y" * 50, n=7)
        self.assertEqual(self.out.lines(), ["bad xxxxxxxxxx... b'yyyyyyyyyy...' 7"])

    def test_causes_bounded(self) -> None:
        """
        At most C{max_causes} causes are tracked; the oldest is summarized and forgotten.
        """
        limiter = logs.WarningLimiter(clock=self.clock, lines=1, max_causes=4)
        for i in range(10):
            for _ in range(2):
                limiter.warn(self.out.log, f"cause {i}")
        self.assertLessEqual(limiter.tracked(), 4)
        self.assertIn("1 more warnings like 'cause 0' suppressed in 60 s", self.out.lines())

    def test_bad_limits(self) -> None:
        self.assertRaises(ValueError, logs.WarningLimiter, lines=0)
        self.assertRaises(ValueError, logs.WarningLimiter, period=0)

    def test_module_warn_uses_limiter(self) -> None:
        """
        L{logs.warn} goes through L{logs.LIMITER}.
        """
        self.patch(logs, "LIMITER", self.limiter)
        results = [logs.warn(self.out.log, "x {n}", n=i) for i in range(4)]
        self.assertEqual(results, [True, True, True, False])


class FakeTwistdOptions(dict[str, Any]):
    """
    The keys of twistd's C{ServerOptions} that L{logs.install_logger} reads.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(logger=None, logfile=None, syslog=False, nodaemon=False)
        self.update(kw)


class InstallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(logs.configure, None)

    def test_logfile_gets_capped_logger(self) -> None:
        """
        With C{--logfile}, twistd is told to log through L{logs.logger}, which gets
        the caps.
        """
        opts = FakeTwistdOptions(logfile="x.log", nodaemon=True)
        settings = logs.install_logger(opts, 1000, 3)
        self.assertEqual(opts["logger"], "lbtwist.service.logs.logger")
        self.assertEqual(settings, logs.LogSettings("x.log", 1000, 3))
        self.assertEqual(logs._configured, settings)

    def test_daemon_default_file(self) -> None:
        opts = FakeTwistdOptions()
        settings = logs.install_logger(opts, 1000, 3)
        assert settings is not None
        self.assertEqual(settings.path, "twistd.log")

    def test_stdout_syslog_other_logger_untouched(self) -> None:
        """
        Standard output, syslog and another C{--logger} stay twistd's.
        """
        for opts in (
            FakeTwistdOptions(nodaemon=True),
            FakeTwistdOptions(logfile="-", nodaemon=True),
            FakeTwistdOptions(logfile="x.log", syslog=True),
            FakeTwistdOptions(logfile="x.log", logger="some.other.logger"),
        ):
            before = dict(opts)
            self.assertIsNone(logs.install_logger(opts, 1000, 3))
            self.assertEqual(dict(opts), before)
        self.assertIsNone(logs._configured)
        self.assertIsNone(logs.install_logger(object(), 1, 1))

    def test_explicit_logger_configured(self) -> None:
        """
        C{twistd --logger lbtwist.service.logs.logger --logfile X lbproxy}: the caps still apply.
        """
        opts = FakeTwistdOptions(logfile="x.log", logger="lbtwist.service.logs.logger")
        self.assertEqual(logs.install_logger(opts, 5, 2), logs.LogSettings("x.log", 5, 2))

    def test_old_logger_name(self) -> None:
        """
        The name from before the layer packages still works: twistd can import
        it, and it gets the caps (not taken for another logger).
        """
        from twisted.python.reflect import namedAny

        old = "lbtwist.logs.logger"  # relayout: keep
        self.assertIs(namedAny(old), logs.logger)
        opts = FakeTwistdOptions(logfile="x.log", logger=old)
        self.assertEqual(logs.install_logger(opts, 5, 2), logs.LogSettings("x.log", 5, 2))


class LogFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "twistd.log")
        self.addCleanup(logs.configure, None)
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)

    def sizes(self) -> dict[str, int]:
        return {n: os.path.getsize(os.path.join(self.dir, n)) for n in os.listdir(self.dir)}

    def test_rotation_capped(self) -> None:
        """
        The observer of L{logs.logger} rotates at C{max_size} and keeps at most
        C{max_files} rotated files: the log's disk use is bounded.
        """
        logs.configure(logs.LogSettings(self.path, max_size=2000, max_files=3))
        observer = logs.logger()
        log = Logger(namespace="flood", observer=observer)
        for i in range(2000):
            log.warn("junk line {i} {pad}", i=i, pad="z" * 40)
        sizes = self.sizes()
        self.assertEqual(
            sorted(sizes), ["twistd.log", "twistd.log.1", "twistd.log.2", "twistd.log.3"]
        )
        for size in sizes.values():
            # Rotated before the write that passes the size: at most one line over.
            self.assertLessEqual(size, 2000 + 200)
        with open(self.path) as f:
            self.assertIn("junk line 1999", f.read())

    def test_from_environment(self) -> None:
        """
        Without L{logs.configure}, the settings come from the environment.
        """
        env = {
            logs.ENV_LOG_FILE: self.path,
            logs.ENV_LOG_MAX_SIZE: "123",
            logs.ENV_LOG_MAX_FILES: "4",
        }
        self.assertEqual(logs.LogSettings.from_env(env), logs.LogSettings(self.path, 123, 4))
        self.assertEqual(logs.LogSettings.from_env({}), logs.LogSettings())
        for bad in ("0", "-1", "ten"):
            self.assertRaises(ValueError, logs.LogSettings.from_env, {logs.ENV_LOG_MAX_SIZE: bad})
        self.patch(os, "environ", env)
        logs.logger()
        self.assertTrue(os.path.exists(self.path))

    def test_sigusr1_rotates(self) -> None:
        """
        As with twistd's own file log, SIGUSR1 asks for a rotation.
        """
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        logs.configure(logs.LogSettings(self.path, max_size=10_000, max_files=2))
        logs.logger()
        handler = signal.getsignal(signal.SIGUSR1)
        self.assertTrue(callable(handler))
