# -*- test-case-name: tests.unit.test_jpexport -*-
"""
Job Provenance registrations (C{--jpreg-dir}): a maildir message C{<jobid>\\n<owner DN>}
per stored registration, as L&B's server wrote them for the JP importer.

The store writes a C{jp_pending} row in the same transaction as each RegJob (so a crash
loses none); L{JPRegExporter} reads at most C{batch} of them every C{interval} seconds
(and again at once while there were more), writes their messages on its own thread
(L{lbtwist.service.purge.Maildir}: C{tmp/}, fsync, rename into C{new/}) and then
deletes the rows in one transaction. Intake never waits for it: when the exporter
falls behind, the rows simply wait in the table (nothing is dropped), and a crash
between the files and the delete writes those messages again (at least once).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lbtwist.service.purge import Maildir

log = Logger()

#: Default seconds between two looks at the pending registrations.
DEFAULT_INTERVAL = 1.0
#: Default most registrations exported per batch (the bounded queue).
DEFAULT_BATCH = 500


class JPStore(Protocol):
    def jp_pending(self, after: int, limit: int) -> Deferred[list[tuple[int, str, str]]]: ...

    def jp_done(self, ids: list[int]) -> Deferred[None]: ...


Runner = Any  # (callable) -> Deferred, e.g. deferToThreadPool on a pool of one thread


class JPRegExporter(Service):
    """
    Exports pending Job Provenance registrations to a maildir.

    @param run: runs the file writing off the reactor (a thread); tests pass a
        synchronous one.
    @ivar exported: messages written so far (C{batches}: in how many batches).
    """

    def __init__(
        self,
        store: JPStore,
        clock: IReactorTime,
        directory: str,
        *,
        server: str = "localhost",
        interval: float = DEFAULT_INTERVAL,
        batch: int = DEFAULT_BATCH,
        run: Runner | None = None,
    ) -> None:
        if batch < 1 or interval <= 0:
            raise ValueError("batch and interval must be positive")
        self.store = store
        self.clock = clock
        self.directory = directory
        self.server = server
        self.interval = interval
        self.batch = batch
        self._run = run
        self._pool: Any = None
        self._maildir: Maildir | None = None
        self._call: IDelayedCall | None = None
        self._busy = False
        self.exported = 0
        #: Batches written so far.
        self.batches = 0

    def startService(self) -> None:
        super().startService()
        self._maildir = Maildir(self.directory, self.server)
        if self._run is None:
            from twisted.internet.threads import deferToThreadPool
            from twisted.python.threadpool import ThreadPool

            pool = ThreadPool(minthreads=1, maxthreads=1, name="lbtwist-jpreg")
            pool.start()
            self._pool = pool
            reactor = self.clock

            def run(work: Any) -> Deferred[Any]:
                return deferToThreadPool(reactor, pool, work)  # type: ignore[arg-type]

            self._run = run
        self._schedule(0)

    def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def _schedule(self, delay: float) -> None:
        if self.running and self._call is None:
            self._call = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self._busy or not self.running:
            return
        self._busy = True
        d = Deferred.fromCoroutine(self.export_once())

        def done(more: object) -> None:
            self._busy = False
            self._schedule(0 if more is True else self.interval)

        d.addErrback(lambda f: log.failure("Job Provenance registration export failed", f))
        d.addBoth(done)

    async def export_once(self) -> bool:
        """
        Export one batch.

        @return: whether a full batch was found (more may wait).
        """
        rows = await self.store.jp_pending(0, self.batch)
        if not rows:
            return False
        maildir = self._maildir
        assert maildir is not None and self._run is not None

        def write() -> None:
            for _, jobid, owner in rows:
                maildir.store(f"{jobid}\n{owner}")
            maildir.sync()

        await self._run(write)
        await self.store.jp_done([row[0] for row in rows])
        self.exported += len(rows)
        self.batches += 1
        return len(rows) >= self.batch
