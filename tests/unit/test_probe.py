# -*- test-case-name: tests.unit.test_probe -*-
"""
Tests for L{lbtwist.cli.probe}: the thresholds, the status line and perfdata.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli import probe
from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.cli.probe import CRITICAL, OK, UNKNOWN, WARNING, Thresholds, evaluate

NOW = 1_800_000_000.0
DAY = 86400.0


def report(**changes: Any) -> dict[str, Any]:
    health: dict[str, Any] = {
        "ok": True,
        "problems": [],
        "role": "lbproxy",
        "backlog": 0,
        "backlog_age": 0.0,
        "relay": [],
        "ca": {"cas": 2, "crl_next_update": NOW + 30 * DAY},
        "host_cert": {"not_after": NOW + 300 * DAY},
    }
    health.update(changes)
    return health


T = Thresholds(backlog_warning=60, backlog_critical=600)


class EvaluateTests(SynchronousTestCase):
    def test_ok(self) -> None:
        code, line = evaluate(report(), NOW, T)
        self.assertEqual(code, OK)
        self.assertTrue(
            line.startswith(
                "LBTWIST OK - lbproxy healthy, 0 relay destinations, backlog 0, 2 CAs|"
            ),
            line,
        )
        status, perf = line.split("|")
        self.assertEqual(perf.split()[0], "backlog_age=0s;60;600")
        self.assertIn("cert_days=300;14;3", perf)
        self.assertIn("crl_hours=720;6;1", perf)

    def test_backlog_age(self) -> None:
        """
        The oldest waiting event's age against -w and -c.
        """
        for age, want in ((59.9, OK), (60.5, WARNING), (600.5, CRITICAL)):
            code, line = evaluate(report(backlog=5, backlog_age=age), NOW, T)
            self.assertEqual(code, want, line)
            self.assertIn(f"|backlog_age={age}s;60;600 backlog=5;;;0", line)
        code, line = evaluate(report(backlog=5, backlog_age=61.0), NOW, T)
        self.assertEqual(
            line.split("|")[0], "LBTWIST WARNING - relay backlog of 5 events, oldest 61 s"
        )

    def test_certificate_expiry(self) -> None:
        for days, want in ((20, OK), (10, WARNING), (1, CRITICAL)):
            code, line = evaluate(report(host_cert={"not_after": NOW + days * DAY}), NOW, T)
            self.assertEqual(code, want, line)
        self.assertIn("host certificate expires in 1 days", line)

    def test_crl_next_update(self) -> None:
        for hours, want in ((7, OK), (5, WARNING), (0.5, CRITICAL)):
            health = report(ca={"cas": 1, "crl_next_update": NOW + hours * 3600})
            code, line = evaluate(health, NOW, T)
            self.assertEqual(code, want, line)

    def test_problems_critical(self) -> None:
        """
        Every problem of the report is CRITICAL, whatever the thresholds, and worst wins.
        """
        health = report(ok=False, problems=["store not writable: /x"], backlog_age=61.0)
        code, line = evaluate(health, NOW, T)
        self.assertEqual(code, CRITICAL)
        self.assertIn("store not writable: /x; relay backlog", line)

    def test_thresholds_checked(self) -> None:
        self.assertIsNone(Thresholds().check())
        self.assertIn("backlog", str(Thresholds(backlog_warning=10, backlog_critical=5).check()))
        self.assertIn("certificate", str(Thresholds(cert_warning=1, cert_critical=5).check()))
        self.assertIn("CRL", str(Thresholds(crl_warning=1, crl_critical=5).check()))


class CommandTests(SynchronousTestCase):
    def ctx(self) -> CLIContext:
        return CLIContext(
            env={}, stdout=io.StringIO(), stderr=io.StringIO(), now=lambda: int(NOW * 1e6)
        )

    def test_answer(self) -> None:
        """
        The command fetches the URL and prints one line; the exit status is the plugin's.
        """
        seen: list[str] = []

        def fetch(url: str, timeout: float, context: object) -> dict[str, Any]:
            seen.append(url)
            return report(backlog=1, backlog_age=700.0)

        self.patch(probe, "fetch", fetch)
        ctx = self.ctx()
        code = run(["probe", "-H", "ce.example.org", "-p", "9101", "-w", "60", "-c", "600"], ctx)
        self.assertEqual(code, CRITICAL)
        self.assertEqual(seen, ["http://ce.example.org:9101/health"])
        self.assertEqual(len(ctx.stdout.getvalue().splitlines()), 1)  # type: ignore[attr-defined]

    def test_unreachable(self) -> None:
        def fetch(url: str, timeout: float, context: object) -> dict[str, Any]:
            raise ConnectionRefusedError(111, "Connection refused")

        self.patch(probe, "fetch", fetch)
        ctx = self.ctx()
        self.assertEqual(run(["probe", "-u", "http://x:1/health"], ctx), UNKNOWN)
        self.assertIn("LBTWIST UNKNOWN - cannot read http://x:1/health", ctx.stdout.getvalue())  # type: ignore[attr-defined]

    def test_bad_thresholds(self) -> None:
        ctx = self.ctx()
        self.assertEqual(run(["probe", "-w", "100", "-c", "10"], ctx), UNKNOWN)
