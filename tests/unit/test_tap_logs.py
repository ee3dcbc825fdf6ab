# -*- test-case-name: tests.unit.test_tap_logs -*-
"""
Tests for the log wiring of L{lbtwist.tap}: the capped twistd log installed
through twistd's own option parsing, the warning limiter configured and
flushed by the service, and a flood of rejected events through the intake.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import tap
from lbtwist.service import logs
from lbtwist.service.intake import IntakeProtocol
from tests import traces
from tests.logcapture import capture_log
from tests.unit.test_intake import connect, make_factory


class TwistdOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(logs.configure, None)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def parse(self, *argv: str) -> ServerOptions:
        opts = ServerOptions()
        opts.parseOptions(list(argv))
        return opts

    def test_logfile_capped_by_default(self) -> None:
        """
        C{twistd -n --logfile X lbproxy}: twistd logs through L{logs.logger} with
        the default caps, without any extra flag.
        """
        path = os.path.join(self.dir, "proxy.log")
        opts = self.parse("-n", "--logfile", path, "lbproxy", "--state-dir", self.dir)
        self.assertIs(opts["logger"], logs.logger)
        self.assertEqual(
            logs._configured,
            logs.LogSettings(path, logs.DEFAULT_LOG_MAX_SIZE, logs.DEFAULT_LOG_MAX_FILES),
        )

    def test_caps_from_options_and_config(self) -> None:
        conf = os.path.join(self.dir, "lbserver.conf")
        with open(conf, "w") as f:
            f.write("[lbserver]\nlog-max-files = 3\n")
        path = os.path.join(self.dir, "server.log")
        opts = self.parse(
            "--logfile",
            path,
            "lbserver",
            "--config",
            conf,
            "--state-dir",
            self.dir,
            "--log-max-size",
            "5000",
        )
        self.assertIs(opts["logger"], logs.logger)
        self.assertEqual(logs._configured, logs.LogSettings(path, 5000, 3))
        self.assertEqual(opts.subOptions["log-max-size"], 5000)

    def test_stdout_left_alone(self) -> None:
        opts = self.parse("-n", "lbproxy", "--state-dir", self.dir)
        self.assertIsNone(opts["logger"])
        self.assertIsNone(logs._configured)

    def test_bad_values(self) -> None:
        for name in ("log-max-size", "log-max-files", "warnings-per-minute", "page-events"):
            opts = tap.Options()
            self.assertRaises(
                usage.UsageError, opts.parseOptions, ["--state-dir", self.dir, f"--{name}", "0"]
            )

    def test_defaults(self) -> None:
        opts = tap.Options()
        opts.parseOptions(["--state-dir", self.dir])
        self.assertEqual(opts["page-events"], 500)
        self.assertEqual(opts["log-max-size"], 10_000_000)
        self.assertEqual(opts["log-max-files"], 10)
        self.assertEqual(opts["warnings-per-minute"], 10)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.limiter = logs.WarningLimiter()
        self.patch(logs, "LIMITER", self.limiter)
        self.dir = os.path.abspath(self.mktemp())

    def test_limiter_configured_and_flushed(self) -> None:
        """
        The service sets the limiter's clock and quota, and flushes its summaries
        every window.
        """
        opts = tap.Options()
        opts.parseOptions(["--state-dir", self.dir, "--warnings-per-minute", "2"])
        reactor = MemoryReactorClock()
        top = tap.makeService(opts, reactor)
        self.assertIs(self.limiter.clock, reactor)
        self.assertEqual(self.limiter.lines, 2)
        timers = [s for s in top if isinstance(s, logs.SummaryService)]
        self.assertEqual(
            [(t.step, t.call[0], t.limiter) for t in timers],
            [(logs.WINDOW, self.limiter.flush, self.limiter)],
        )
        self.assertIs(timers[0].clock, reactor)


class FloodTests(SynchronousTestCase):
    def test_rejected_events_rate_limited(self) -> None:
        """
        A producer sending 1,000 broken lines gets 1,000 error answers but the
        log gets C{lines} warnings, then one summary line a minute later.
        """
        clock = Clock()
        self.patch(logs, "LIMITER", logs.WarningLimiter(clock=clock, lines=5))
        seen = capture_log(self)
        # No idle timeout within the minute: only the rejections are logged.
        factory = make_factory(clock=clock, idle_timeout=3600)
        proto, transport = connect(factory)
        proto.dataReceived(b'DATE=junk garbage="\n' * 1000)
        self.assertEqual(factory.stats.errors, 1000)
        self.assertEqual(transport.value().count(b"\n"), 1000)

        def warnings() -> list[dict[str, Any]]:
            return [e for e in seen if e.get("log_namespace") == IntakeProtocol.log.namespace]

        self.assertEqual(len(warnings()), 5)
        clock.advance(60)
        logs.LIMITER.flush()
        self.assertEqual(len(warnings()), 6)
        self.assertEqual(warnings()[-1]["suppressed"], 995)


class StorePortFloodTests(SynchronousTestCase):
    def test_refused_events_rate_limited(self) -> None:
        """
        A peer sending 200 events it may not log gets 200 refusals; the log gets
        C{lines} "event refused" warnings.
        """
        from tests.unit.test_storeport import Server

        clock = Clock()
        self.patch(logs, "LIMITER", logs.WarningLimiter(clock=clock, lines=4))
        seen = capture_log(self)
        s = Server("/DC=org/DC=example/CN=Somebody Else")
        lines = traces.wms_prelude(traces.WMS_JOBID)
        s.send(*([lines[0]] * 200))
        self.assertEqual(len(s.replies()), 200)
        refused = [
            e for e in seen if e.get("log_format", "").startswith("store port: event refused")
        ]
        self.assertEqual(len(refused), 4)


class RelayFloodTests(SynchronousTestCase):
    def test_rejections_rate_limited(self) -> None:
        """
        A destination refusing every event: each is rejected for good (kept in the
        rejected table), the log gets C{lines} warnings about it.
        """
        import errno

        from lbtwist.core import ilproto
        from tests.unit.test_relay import DEST1, JOB_A, Harness, wms_lines

        h = Harness(window=64)
        self.patch(logs, "LIMITER", logs.WarningLimiter(clock=h.clock, lines=3))
        seen = capture_log(self)
        lines = wms_lines(JOB_A)
        h.store_lines(lines)
        h.service.startService()
        self.addCleanup(h.service.stopService)
        conn = h.endpoints[DEST1].current
        conn.take_lines()
        for _ in lines:
            conn.answer(ilproto.LB_PERM, errno.EPERM, "not allowed")
        self.assertEqual(len(self.successResultOf(h.store.rejected())), len(lines))
        rejected = [e for e in seen if "rejected for good" in e.get("log_format", "")]
        self.assertGreater(len(lines), 3)
        self.assertEqual(len(rejected), 3)
