# -*- test-case-name: tests.unit.test_purge_service -*-
"""
Purging the store: L{Purger} runs one purge in bounded chunks on the store's writer
(between commit groups, so intake goes on), writes the server-side dump (C{-s}) and the
Job Provenance dump export (C{--jpdump-dir}) before each chunk commits, then gives the
space back with incremental vacuum steps; L{PurgeService} runs it every
C{--purge-interval} seconds.

The three ways in share L{Purger}: C{lbtwist purge --state-dir} (offline, on a store it
opens itself), C{POST /admin/purge} on the query port (L{lbtwist.service.web.admin}) and
the periodic service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist.core.errors import TryAgain
from lbtwist.core.events import Event
from lbtwist.core.purge import PurgeRules
from lbtwist.core.ulm import format_date
from lbtwist.core.unparse import dump_line
from lbtwist.store.batch import reparse
from lbtwist.store.purging import VACUUM_PAGES, PurgeChunk, PurgedJob

log = Logger()

#: Default jobs looked at per chunk (the C{purge-chunk} option).
DEFAULT_CHUNK = 100
#: Default most job ids a purge answer lists (the rest are counted).
DEFAULT_LIST_LIMIT = 10_000
#: Where C{-s} dumps go, in the state directory.
DUMP_DIR = "purge-dumps"
#: A chunk lets waiting commit groups go first at most this many times in a row (then
#: it runs anyway: a busy intake cannot starve a purge).
MAX_YIELDS = 3


class PurgeStore(Protocol):
    """
    What a purge needs of the store (L{lbtwist.store.sqlite.SQLiteStore}).
    """

    def purge_chunk(
        self,
        rules: PurgeRules,
        now: int,
        after: tuple[str, str] | None,
        limit: int,
        *,
        dry_run: bool = ...,
        keep_events: bool = ...,
        before_commit: Any = ...,
        may_yield: bool = ...,
    ) -> Deferred[PurgeChunk]: ...

    def vacuum_step(self, pages: int = ...) -> Deferred[int]: ...


@attrs.frozen
class PurgeRequest:
    """
    One purge: the grace periods, and whether it only lists (C{dry_run}) and whether it
    writes a server-side dump of what it purges (C{server_dump}, L&B's C{-s}).
    """

    rules: PurgeRules
    dry_run: bool = False
    server_dump: bool = False


@attrs.frozen
class PurgeReport:
    """
    What a purge did.

    @ivar jobs: the purged (or, dry run, due) job ids, at most the list limit.
    @ivar count: how many jobs were purged (or due).
    @ivar scanned: job rows looked at.
    @ivar chunks: chunks run.
    @ivar undelivered: due jobs kept because events wait in the outbox.
    @ivar dump_file: the server-side dump, if asked for.
    @ivar jp_files: per-job Job Provenance dump files written.
    @ivar free_pages: pages still free in the file after the vacuum steps.
    """

    dry_run: bool
    jobs: tuple[str, ...]
    count: int
    scanned: int
    chunks: int
    undelivered: int
    dump_file: str | None
    jp_files: int
    free_pages: int
    rules: str

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "jobs": list(self.jobs),
            "count": self.count,
            "listed": len(self.jobs),
            "scanned": self.scanned,
            "chunks": self.chunks,
            "undelivered": self.undelivered,
            "server_file": self.dump_file,
            "jp_files": self.jp_files,
            "free_pages": self.free_pages,
            "rules": self.rules,
        }


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dump_text(events: Sequence[tuple[int, str]]) -> str:
    """
    A job's events as C{glite-lb-dump} writes them (L{dump_line}).
    """
    out = []
    for arrived, line in events:
        out.append(dump_line(_event(line), arrived))
    return "".join(out)


def _event(line: str) -> Event:
    return reparse(line)


class DumpFile:
    """
    The server-side dump of one purge: C{<dir>/purge_<date>} in C{glite-lb-dump} format,
    written as C{.purge_<date>.tmp}, appended and fsynced before each chunk commits,
    renamed when the purge ends.
    """

    def __init__(self, directory: str, now: int) -> None:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        name = f"purge_{format_date(now)}"
        path = os.path.join(directory, name)
        n = 0
        while os.path.exists(path):
            n += 1
            path = os.path.join(directory, f"{name}.{n}")
        self.path = path
        self._tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def add(self, jobs: Sequence[PurgedJob]) -> None:
        data = "".join(dump_text(job.events) for job in jobs).encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def finish(self) -> str:
        os.close(self._fd)
        os.rename(self._tmp, self.path)
        _fsync_dir(os.path.dirname(self.path))
        return self.path


class Maildir:
    """
    L&B's maildir (C{lb_maildir}): C{tmp/}, C{new/}, C{work/}, C{post/}; a message is
    written in C{tmp/}, fsynced and moved into C{new/} (the importer moves it to C{work/}
    while it works on it, and to C{post/} for a retry). Names are L&B's
    C{<seconds>.<pid>.<server>} with a counter, so that many messages a second need no wait.
    """

    SUBDIRS = ("tmp", "new", "work", "post")

    def __init__(self, root: str, server: str = "localhost") -> None:
        self.root = root
        self.server = server
        for sub in ("", *self.SUBDIRS):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        self._count = 0

    def store(self, text: str, now: float | None = None) -> str:
        """
        Write one message atomically.

        @return: its path in C{new/}.
        """
        seconds = int(time.time() if now is None else now)
        while True:
            self._count += 1
            name = f"{seconds}.{os.getpid()}_{self._count}.{self.server}"
            tmp = os.path.join(self.root, "tmp", name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            break
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        new = os.path.join(self.root, "new", name)
        os.rename(tmp, new)
        return new

    def sync(self) -> None:
        """
        Make the renames into C{new/} durable.
        """
        _fsync_dir(os.path.join(self.root, "new"))


class JPDumpExport:
    """
    C{glite-lb-lb_dump_exporter}'s work, done by the purge: one dump file per purged
    job (C{<dir>/files/<unique>.<sec>_<usec>}, its events in C{glite-lb-dump} lines) and a
    maildir message per job in C{<dir>} naming it (C{jobid  <id>} and C{file   <path>}
    lines, as the exporter wrote them).
    """

    def __init__(self, directory: str, server: str = "localhost") -> None:
        self.files = os.path.join(directory, "files")
        os.makedirs(self.files, mode=0o750, exist_ok=True)
        self.maildir = Maildir(directory, server)
        self.written = 0

    def add(self, jobs: Sequence[PurgedJob], now: int) -> None:
        from lbtwist.core.jobid import unique_of

        seconds, micro = divmod(now, 1_000_000)
        for job in jobs:
            if not job.events:
                continue
            base = os.path.join(self.files, f"{unique_of(job.jobid)}.{seconds}_{micro}")
            path, n = base, 0
            while os.path.exists(path):
                n += 1
                path = f"{base}.{n}"
            tmp = os.path.join(self.files, "." + os.path.basename(path) + ".tmp")
            lines = "".join(
                f"DG.ARRIVED={format_date(a)} {_unparse(line)}\n" for a, line in job.events
            )
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, lines.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            self.maildir.store(f"jobid  {job.jobid}\nfile   {path}", now / 1_000_000)
            self.written += 1
        _fsync_dir(self.files)
        self.maildir.sync()


def _unparse(line: str) -> str:
    from lbtwist.core.unparse import unparse_event

    return unparse_event(_event(line))


class Purger:
    """
    Runs purges on a store, one at a time.

    @param store: a L{PurgeStore}.
    @param clock: the purge's time (grace periods count back from it).
    @param state_dir: where the server-side dumps go (C{<state_dir>/purge-dumps}).
    @param chunk: job rows looked at per chunk (each chunk one transaction).
    @param jpdump_dir: the Job Provenance dump export (L{JPDumpExport}), or L{None}.
    @param list_limit: most job ids an answer lists.
    @param vacuum_pages: pages each vacuum step gives back.
    @param pause: after each chunk, wait this many times as long as the chunk took on
        the writer (1: the writer at most about half busy with the purge; 0: no pause);
        the same after each vacuum step.
    """

    def __init__(
        self,
        store: PurgeStore,
        clock: IReactorTime,
        *,
        state_dir: str,
        chunk: int = DEFAULT_CHUNK,
        jpdump_dir: str | None = None,
        server: str = "localhost",
        list_limit: int = DEFAULT_LIST_LIMIT,
        vacuum_pages: int = VACUUM_PAGES,
        pause: float = 0.0,
    ) -> None:
        if chunk < 1 or pause < 0:
            raise ValueError("chunk must be positive, pause not negative")
        self.pause = pause
        self.store = store
        self.clock = clock
        self.state_dir = state_dir
        self.chunk = chunk
        self.jpdump_dir = jpdump_dir
        self.server = server
        self.list_limit = list_limit
        self.vacuum_pages = vacuum_pages
        self.running = False

    def run(self, request: PurgeRequest) -> Deferred[PurgeReport]:
        """
        Run one purge.

        @return: its report; fails with L{TryAgain} while another purge runs.
        """
        if self.running:
            d: Deferred[PurgeReport] = Deferred()
            d.errback(Failure(TryAgain("a purge is already running")))
            return d
        self.running = True
        d = Deferred.fromCoroutine(self._run(request))

        def done(result: object) -> object:
            self.running = False
            return result

        d.addBoth(done)
        return d

    async def _run(self, request: PurgeRequest) -> PurgeReport:
        now = int(self.clock.seconds() * 1_000_000)
        real = not request.dry_run
        dump = (
            DumpFile(os.path.join(self.state_dir, DUMP_DIR), now)
            if real and request.server_dump
            else None
        )
        jp = JPDumpExport(self.jpdump_dir, self.server) if real and self.jpdump_dir else None

        def before_commit(jobs: Sequence[PurgedJob]) -> None:
            if dump is not None:
                dump.add(jobs)
            if jp is not None:
                jp.add(jobs, now)

        listed: list[str] = []
        count = scanned = chunks = undelivered = yields = 0
        after: tuple[str, str] | None = None
        try:
            while True:
                chunk = await self.store.purge_chunk(
                    request.rules,
                    now,
                    after,
                    self.chunk,
                    dry_run=request.dry_run,
                    keep_events=dump is not None or jp is not None,
                    before_commit=before_commit if (dump or jp) else None,
                    may_yield=yields < MAX_YIELDS,
                )
                if chunk.yielded:
                    yields += 1
                    continue
                yields = 0
                chunks += 1
                if self.pause and chunk.seconds > 0 and chunk.after is not None:
                    await deferLater(self.clock, chunk.seconds * self.pause)
                scanned += chunk.scanned
                undelivered += chunk.undelivered
                count += len(chunk.purged)
                room = self.list_limit - len(listed)
                if room > 0:
                    listed.extend(job.jobid for job in chunk.purged[:room])
                if chunk.after is None:
                    break
                after = chunk.after
        finally:
            path = dump.finish() if dump is not None else None
        free = 0
        if real and count:
            free = await self._vacuum()
        report = PurgeReport(
            dry_run=request.dry_run,
            jobs=tuple(listed),
            count=count,
            scanned=scanned,
            chunks=chunks,
            undelivered=undelivered,
            dump_file=path,
            jp_files=jp.written if jp is not None else 0,
            free_pages=free,
            rules=request.rules.describe(),
        )
        log.info(
            "purge{dry}: {count} jobs of {scanned} looked at in {chunks} chunks ({rules});"
            " kept for undelivered events: {undelivered}; dump: {dump}",
            dry=" (dry run)" if request.dry_run else "",
            count=count,
            scanned=scanned,
            chunks=chunks,
            rules=report.rules,
            undelivered=undelivered,
            dump=path or "none",
        )
        return report

    async def _vacuum(self) -> int:
        """
        Incremental vacuum steps (each on the writer, between commit groups) until no
        free page is left, at most as many as the free pages after the first step call
        for (commits meanwhile free pages of their own: they are not chased). After
        each step the purge pauses C{pause} times as long as the step took (from asking
        to its answer), as after a chunk: a vacuum of a large purge keeps the writer no
        busier than the purge did.
        """
        free = await self._vacuum_step()
        steps = free // self.vacuum_pages + 1
        while free > 0 and steps > 0:
            free = await self._vacuum_step()
            steps -= 1
        return free

    async def _vacuum_step(self) -> int:
        started = self.clock.seconds()
        free = await self.store.vacuum_step(self.vacuum_pages)
        took = self.clock.seconds() - started
        if self.pause and took > 0 and free > 0:
            await deferLater(self.clock, took * self.pause)
        return free


class PurgeService(Service):
    """
    Runs a purge every C{interval} seconds (the first one C{interval} after start);
    a purge still running when the next is due is not doubled.
    """

    def __init__(
        self, purger: Purger, clock: IReactorTime, interval: float, request: PurgeRequest
    ) -> None:
        self.purger = purger
        self.clock = clock
        self.interval = interval
        self.request = request
        self._call: IDelayedCall | None = None
        self.runs = 0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        if not self.running:
            return
        if self.purger.running:
            self._schedule()
            return
        self.runs += 1
        d = self.purger.run(self.request)
        d.addErrback(lambda f: log.failure("periodic purge failed", f))

        def again(_: object) -> None:
            if self.running:
                self._schedule()

        d.addBoth(again)


class _WallClock:
    """
    The time of day, for a purge run outside the reactor (the offline command).
    """

    def seconds(self) -> float:
        return time.time()


def offline_purge(
    state_dir: str,
    request: PurgeRequest,
    *,
    chunk: int = DEFAULT_CHUNK,
    jpdump_dir: str | None = None,
    vacuum: bool = False,
    list_limit: int = DEFAULT_LIST_LIMIT,
    clock: Any = None,
) -> PurgeReport:
    """
    Purge the store of C{state_dir} with no service running (C{lbtwist purge
    --state-dir}): the store is opened with its lock (refused, EBUSY, while a service
    holds it), the purge runs at once, chunk after chunk. C{vacuum} then rewrites the
    file so that it gives space back from now on (stores made before incremental
    vacuum).

    @raise FileNotFoundError: there is no store in C{state_dir}.
    @raise lbtwist.core.errors.LBError: the store is in use.
    """
    from lbtwist.store import store_path
    from lbtwist.store.batch import run_now
    from lbtwist.store.purging import vacuum_full
    from lbtwist.store.sqlite import SQLiteStore

    path = store_path(state_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no lbtwist store", path)
    wall: Any = clock if clock is not None else _WallClock()
    store = SQLiteStore(path, clock=wall, runner=run_now, lock=True)
    store.start()
    try:
        purger = Purger(
            store,  # type: ignore[arg-type]
            wall,
            state_dir=state_dir,
            chunk=chunk,
            jpdump_dir=jpdump_dir,
            list_limit=list_limit,
        )
        results: list[Any] = []
        purger.run(request).addBoth(results.append)
        outcome = results[0]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        if vacuum and not request.dry_run:
            vacuum_full(store.backend.conn)
        return outcome  # type: ignore[no-any-return]
    finally:
        store.close()
