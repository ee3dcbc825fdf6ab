"""
The global log publisher's events during a test, for the tests' checks of what
the service logs.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer


def capture_log(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Events of the global log publisher from now until C{case}'s test ends.
    """
    events: list[dict[str, Any]] = []
    observer = implementer(ILogObserver)(lambda e: events.append(e))  # type: ignore[misc]
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events
