# -*- test-case-name: tests.unit.test_trace_store -*-
"""
The removal of expired trace rows: every hour, the trace rows (and state entries) of
purged jobs last updated more than C{trace-retention} ago go, C{trace-expire-chunk}
per store transaction, until none is left (docs/lifecycle.md).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Seconds between two runs.
EXPIRY_INTERVAL = 3600.0


class TraceExpiry(Service):
    """
    @param store: a store with C{expire_traces(before, limit) -> Deferred[int]}.
    @param retention: seconds purged jobs stay traceable after their last update.
    @param chunk: trace rows removed per transaction.
    """

    def __init__(
        self,
        store: Any,
        clock: Any,
        *,
        retention: int,
        chunk: int,
        interval: float = EXPIRY_INTERVAL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.chunk = chunk
        self.interval = interval
        self.removed = 0
        self._loop = LoopingCall(self.run)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def _run(self) -> int:
        before = int((self.clock.seconds() - self.retention) * 1_000_000)
        total = 0
        while self.running:
            gone = await self.store.expire_traces(before, self.chunk)
            total += gone
            if gone < self.chunk:
                break
        if total:
            log.info("removed {count} expired trace rows of purged jobs", count=total)
        self.removed += total
        return total

    def run(self) -> Any:
        """
        One run: chunks until none is left (the loop waits for it).
        """
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(self._run())
        d.addErrback(lambda f: log.failure("trace expiry failed", f))
        return d
