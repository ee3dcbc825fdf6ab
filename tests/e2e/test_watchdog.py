# -*- test-case-name: tests.e2e.test_watchdog -*-
"""
The end-to-end tests' watchdog (L{tests.e2e.harness.E2ECase}): a test that
blocks for ever becomes that test's error, its clean-ups still run, and the run
goes on.
"""

from __future__ import annotations

import os
import select
import signal

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import E2ECase, TestHung


def _blocked_case(name: str, cleaned: list[str]) -> E2ECase:
    """
    One test of a watched case with a short limit (made here, so that trial does
    not collect the case itself).
    """

    class _Blocked(E2ECase):
        hang_timeout = 0.2

        def test_blocks(self) -> None:
            # A read that nobody will ever answer, as a peer that went silent.
            r, w = os.pipe()
            self.addCleanup(os.close, r)
            self.addCleanup(os.close, w)
            self.addCleanup(cleaned.append, "cleaned")
            select.select([r], [], [])

        def test_quick(self) -> None:
            pass

    return _Blocked(name)


class WatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cleaned: list[str] = []
        self.patch(
            os, "environ", {k: v for k, v in os.environ.items() if k != "LBTWIST_E2E_TEST_TIMEOUT"}
        )

    def test_hang_is_this_tests_error(self) -> None:
        result = TestResult()
        _blocked_case("test_blocks", self.cleaned).run(result)
        self.assertEqual(len(result.errors), 1)
        [(_, failure)] = result.errors
        self.assertTrue(failure.check(TestHung))
        self.assertIn("still running after 0.2 s", str(failure.value))
        self.assertEqual(self.cleaned, ["cleaned"])

    def test_timer_and_handler_restored(self) -> None:
        before = signal.getsignal(signal.SIGALRM)
        result = TestResult()
        _blocked_case("test_quick", self.cleaned).run(result)
        self.assertTrue(result.wasSuccessful())
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))
        self.assertIs(signal.getsignal(signal.SIGALRM), before)

    def test_environment_overrides(self) -> None:
        os.environ["LBTWIST_E2E_TEST_TIMEOUT"] = "0.3"
        result = TestResult()
        _blocked_case("test_blocks", self.cleaned).run(result)
        [(_, failure)] = result.errors
        self.assertIn("after 0.3 s", str(failure.value))
