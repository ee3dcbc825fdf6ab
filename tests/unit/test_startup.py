# -*- test-case-name: tests.unit.test_startup -*-
"""
Start-up pieces of L{lbtwist.tap}: the development proxy's expiry warning.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import tap
from lbtwist.security import devcerts
from tests.certs import NOW
from tests.logcapture import capture_log


class DevProxyWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture_log(self)
        self.pki = devcerts.make_dev_pki(self.mktemp(), now=NOW)  # proxy valid 12 h
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())

    def warnings(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.warn and "lbtwist certs proxy" in e["log_format"]
        ]

    def test_warns_within_margin_hourly(self) -> None:
        watch = tap.DevProxyWatch(self.pki.user_proxy, self.clock, 6 * 3600)
        watch.startService()
        self.addCleanup(watch.stopService)
        self.assertEqual(self.warnings(), [])
        self.clock.advance(timedelta(hours=5).total_seconds())
        self.assertEqual(self.warnings(), [])
        self.clock.advance(timedelta(hours=2).total_seconds())
        self.assertEqual(len(self.warnings()), 1)
        self.assertAlmostEqual(self.warnings()[0]["hours"], 5.0, places=3)
        self.clock.advance(3600)
        self.assertEqual(len(self.warnings()), 2)

    def test_margin_is_the_option(self) -> None:
        watch = tap.DevProxyWatch(self.pki.user_proxy, self.clock, 13 * 3600)
        watch.startService()
        self.addCleanup(watch.stopService)
        self.assertEqual(len(self.warnings()), 1)
        settings = tap.Options()
        settings.parseOptions(["--state-dir", self.mktemp(), "--dev-proxy-warning", "60"])
        self.assertEqual(settings.settings.dev_proxy_warning, 60.0)
