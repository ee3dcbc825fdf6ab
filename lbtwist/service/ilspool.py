# -*- test-case-name: tests.unit.test_ilspool_service -*-
"""
The interlogger-compatible intake: L&B's spool files and notification socket.

CREAM logs through L&B's Java C{ContextIL}: each event line is appended to a
per-job file C{<prefix>.<unique>} (C{--il-spool PREFIX}) and, only when the
producer was given a socket, the interlogger's UNIX socket is poked with the
line's offset and text (C{--il-socket ENDPOINT}). L{SpoolScanner} reads every
C{<prefix>.*} file from its committed offset: woken by inotify (where the system
has it) and by pokes, with a full rescan every C{rescan_interval} seconds as the
safety net (every C{poll_interval} seconds without inotify). The offsets of the
files read go into the store in the same transaction as their events, so a
crash at any moment neither loses nor doubles an event.

Files are opened read-only and never locked (ContextIL gives up when it cannot
lock the file). Bad input (lines that are not ULM, over-long lines, files
truncated or replaced, files of users not allowed to log, an unreadable spool
directory) is logged by rate-limited lines; nothing is lost, the service stays up.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Collection
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import main
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbtwist import config
from lbtwist.core.errors import LBError, NoSpace, PermissionDenied, TryAgain
from lbtwist.core.events import Event, parse_event
from lbtwist.core.ilspool import (
    CTL_SUFFIX,
    FileCursor,
    PokeDecoder,
    is_spool_name,
    parse_ctl,
    spool_file_of,
)
from lbtwist.service import logs
from lbtwist.service.intake import default_producer_uids

DEFAULT_RESCAN_INTERVAL = config.DEFAULT_IL_RESCAN_INTERVAL
DEFAULT_POLL_INTERVAL = config.DEFAULT_IL_POLL_INTERVAL
DEFAULT_REMOVE_IDLE = config.DEFAULT_IL_REMOVE_IDLE
DEFAULT_BATCH_EVENTS = config.DEFAULT_IL_BATCH_EVENTS
#: Store calls under way at once (reading goes on while the store commits).
DEFAULT_PASSES = 2
DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_FIELDS = 100

#: inotify events that mean new bytes or a new file in the spool directory (one
#: IN_MODIFY per append; not IN_CLOSE_WRITE, which ContextIL adds to every one).
_IN_MODIFY = 0x002
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_MASK = _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE
#: A name L{SpoolScanner.notified} has not seen yet.
_UNSEEN = object()
#: The kernel's queue of events overflowed: some were lost.
_IN_Q_OVERFLOW = 0x4000
#: The watch is gone (the directory was removed or its file system unmounted).
_IN_IGNORED = 0x8000
_EVENT_HEADER = struct.Struct("=iIII")
#: Bytes of inotify events read at a time.
_INOTIFY_READ = 1 << 16
#: Entries of the scanner's cache of inotify names (cleared when full).
_NAMES_CACHE = 1 << 16
_CONNECTION_LOST = main.CONNECTION_LOST
_CONNECTION_DONE = main.CONNECTION_DONE


def parse_inotify(buffer: bytes) -> tuple[list[bytes], int, bytes]:
    """
    The complete inotify events at the start of C{buffer}.

    @return: the entry names they name, the union of the masks of the events
        naming none (C{IN_Q_OVERFLOW}, C{IN_IGNORED}), and the bytes left over.
    """
    pos = 0
    size = _EVENT_HEADER.size
    end = len(buffer)
    names = []
    flags = 0
    while end - pos >= size:
        _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, pos)
        if end - pos < size + length:
            break
        if length:
            names.append(buffer[pos + size : pos + size + length].rstrip(b"\0"))
        else:
            flags |= mask
        pos += size + length
    return names, flags, buffer[pos:]


@attrs.define
class SpoolStats:
    """
    Counters of the spool intake.

    @ivar accepted: events stored.
    @ivar duplicates: events the store already had (re-read after a crash).
    @ivar rejected: lines that were no valid event, or refused by the store.
    @ivar too_long: lines over the size limit, dropped.
    @ivar restarted: files read again from 0 (truncated or replaced).
    @ivar removed: files removed once stored and idle.
    @ivar pokes: pokes received.
    @ivar poke_mismatches: pokes whose text was not found at their offset.
    @ivar scans: read passes.
    @ivar failures: store failures (the lines are read again).
    @ivar reads: files opened for new bytes.
    @ivar idle_reads: of these, files that had none (woken for bytes already read).
    @ivar late_pokes: pokes for bytes already read (no read made for them).
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    too_long: int = 0
    restarted: int = 0
    removed: int = 0
    pokes: int = 0
    poke_mismatches: int = 0
    scans: int = 0
    failures: int = 0
    reads: int = 0
    idle_reads: int = 0
    late_pokes: int = 0


def validate_line(raw: bytes, max_fields: int, max_line: int) -> Event | LBError:
    """
    The event of one spool line, or why it is none (the intake socket's rules).
    """
    nul = raw.find(b"\0")
    if nul >= 0:
        return LBError(f"NUL byte at position {nul}", 1401)
    try:
        line = raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as e:
        return LBError(f"invalid UTF-8 at byte {e.start}", 1401)
    try:
        event = parse_event(line, max_fields=max_fields, max_size=max_line)
    except LBError as e:
        return e
    if not event.user or event.user == "anonymous":
        return PermissionDenied("DG.USER missing or anonymous")
    return event


class SpoolScanner(Service):
    """
    Reads the spool files C{<prefix>.*} into the store.

    @param store: the L{lbtwist.store.interface.IEventStore} (with C{spool_offsets}
        and C{store(items, offsets)}).
    @param prefix: the producers' file prefix (CREAM's C{LB_IL_PREFIX}).
    @param clock: for timers and file idleness.
    @param rescan_interval: seconds between full rescans of the directory when
        inotify watches it.
    @param poll_interval: seconds between rescans without inotify, and before a
        retry after a store failure.
    @param remove_idle: seconds a fully stored file must be unchanged before it
        is removed; L{None} keeps the files.
    @param batch_events: most lines read per pass (one store call).
    @param max_line: longest line in bytes.
    @param allowed_uids: owners whose files are read (others are logged, skipped).
    @param allowed_gids: groups whose files are read.
    @param inotify: use inotify when the system has it.
    @param reactor: the reactor inotify runs on (default C{clock}).
    @param passes: store calls under way at once (each of at most C{batch_events}
        lines; a file is in at most one).
    """

    log = Logger()

    def __init__(
        self,
        store: Any,
        prefix: str,
        *,
        clock: IReactorTime,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        remove_idle: float | None = DEFAULT_REMOVE_IDLE,
        batch_events: int = DEFAULT_BATCH_EVENTS,
        max_line: int = DEFAULT_MAX_LINE,
        max_fields: int = DEFAULT_MAX_FIELDS,
        allowed_uids: Collection[int] | None = None,
        allowed_gids: Collection[int] = (),
        inotify: bool = True,
        reactor: Any = None,
        passes: int = DEFAULT_PASSES,
    ) -> None:
        self.store = store
        self.prefix = os.path.abspath(prefix)
        self.directory, self.base = os.path.split(self.prefix)
        self.clock = clock
        self.rescan_interval = rescan_interval
        self.poll_interval = poll_interval
        self.remove_idle = remove_idle
        self.batch_events = batch_events
        self.max_line = max_line
        self.max_fields = max_fields
        if allowed_uids is None:
            allowed_uids = default_producer_uids()
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.use_inotify = inotify
        self.passes = passes
        self.reactor = reactor if reactor is not None else clock
        self.stats = SpoolStats()
        #: inotify queue overflows seen (each followed by a rescan).
        self.overflows = 0
        self.cursors: dict[str, FileCursor] = {}
        self._dirty: set[str] = set()
        self._pokes: dict[str, list[tuple[int, bytes]]] = {}
        #: What the last two passes read, per file: C{(inode, start, data)}, to
        #: check pokes for bytes already read without reading them again.
        #: At most C{max_line} bytes are held per pass (C{_recent_bytes}).
        self._recent: dict[str, tuple[int, int, bytes]] = {}
        self._older: dict[str, tuple[int, int, bytes]] = {}
        self._recent_bytes = 0
        #: Spool directory entry names seen by inotify -> their file (or L{None}:
        #: not a spool file), so a burst of events costs a lookup each.
        self._names: dict[bytes, str | None] = {}
        self._overflow_rescan: IDelayedCall | None = None
        #: C{.ctl} sidecars of the spool directory (entry names) as the last
        #: listing and inotify saw them: a file first seen between listings needs
        #: no look for one.
        self._ctl: set[str] = set()
        self._refused: set[tuple[str, int]] = set()
        #: Store calls under way, and the files whose lines they hold (a file is
        #: not read again until its call is answered: one failure rewinds it safely).
        self._calls: list[Deferred[None]] = []
        self._held: set[str] = set()
        self._soon: IDelayedCall | None = None
        self._retry: set[str] = set()
        self._retry_call: IDelayedCall | None = None
        self._rescan_call: IDelayedCall | None = None
        self._inotify: Any = None
        self._draining: list[tuple[str, int, FileCursor]] = []
        self._ready = False
        self._stopping = False

    # -- life -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        d = maybeDeferred(self.store.spool_offsets)
        d.addCallback(self._loaded)
        d.addErrback(self._load_failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in (self._soon, self._rescan_call, self._retry_call, self._overflow_rescan):
            if call is not None and call.active():
                call.cancel()
        self._soon = self._rescan_call = self._retry_call = self._overflow_rescan = None
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None
        if self._draining:
            # Removed files: what was appended to them after their last read.
            self._drain()
        if not self._calls:
            self._log_totals()
            return succeed(None)
        return gatherResults(list(self._calls)).addBoth(lambda _: self._log_totals())

    def _log_totals(self) -> None:
        """
        The counters of this run, once its last store call is answered.
        """
        stats = self.stats
        self.log.info(
            "spool intake stopped: {accepted} events stored ({duplicates} duplicates, "
            "{rejected} rejected); {pokes} pokes ({late} for bytes already read); "
            "{scans} passes, {reads} file reads ({idle} found nothing new); "
            "{overflows} inotify queue overflows",
            accepted=stats.accepted,
            duplicates=stats.duplicates,
            rejected=stats.rejected,
            pokes=stats.pokes,
            late=stats.late_pokes,
            scans=stats.scans,
            reads=stats.reads,
            idle=stats.idle_reads,
            overflows=self.overflows,
        )

    def _load_failed(self, failure: Failure) -> None:
        self.log.failure("spool offsets could not be read; retrying", failure)
        if not self._stopping:
            self._rescan_call = self.clock.callLater(self.poll_interval, self.startService)

    def _loaded(self, rows: dict[str, tuple[int, int]]) -> None:
        if self._stopping:
            return
        gone: dict[str, tuple[int, int] | None] = {}
        for name, (inode, offset) in rows.items():
            try:
                st = os.stat(name)
            except OSError:
                gone[name] = None
                continue
            cursor = FileCursor.at(inode, offset)
            if st.st_ino != inode:
                self._restart(name, cursor, st.st_ino, "replaced")
            self.cursors[name] = cursor
        if gone:
            # Removed while we were down: forget them (no events with it).
            self.store.store([], gone).addErrback(self._forget_failed, ", ".join(gone))
        self._ready = True
        self._start_inotify()
        self.rescan()

    def _start_inotify(self) -> None:
        if not self.use_inotify:
            return
        try:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath

            scanner = self

            class _Notifier(inotify.INotify):
                # Twisted's reader makes FilePath objects and calls for every event
                # (about 100 us each, one per append), 8 KiB at a time; this one
                # reads what is queued (up to 64 KiB: about 1300 events) and hands
                # the names straight to the scanner, and sees the kernel's queue
                # overflows, which Twisted drops (events were lost: list the
                # directory again).
                def doRead(self) -> object:
                    try:
                        data = os.read(self._fd, _INOTIFY_READ)
                    except OSError as e:
                        if e.errno in (errno.EAGAIN, errno.EINTR):
                            return None
                        return _CONNECTION_LOST
                    if not data:
                        return _CONNECTION_DONE
                    self._doRead(data)
                    return None

                def _doRead(self, in_: bytes) -> None:
                    names, flags, self._buffer = parse_inotify(self._buffer + in_)
                    if flags & _IN_Q_OVERFLOW:
                        scanner.overflowed()
                    if flags & _IN_IGNORED:
                        scanner.watch_lost()
                    scanner.notified(names)

            notifier = _Notifier(self.reactor)
            notifier.startReading()
            notifier.watch(FilePath(self.directory), _IN_MASK)
        except Exception as e:
            logs.warn(
                self.log,
                "spool {directory}: no inotify ({error}); new bytes are found by the "
                "rescan every {interval} s",
                directory=self.directory,
                error=e,
                interval=self.poll_interval,
            )
            self._inotify = None
            return
        self._inotify = notifier

    @property
    def watching(self) -> bool:
        """
        Whether inotify watches the spool directory.
        """
        return self._inotify is not None

    # -- wake-ups -----------------------------------------------------------------

    def notified(self, names: list[bytes]) -> None:
        """
        inotify saw changes to these entries of the spool directory.
        """
        if not names:
            return
        cache = self._names
        dirty = self._dirty
        for raw in set(names):
            name = cache.get(raw, _UNSEEN)
            if name is _UNSEEN:
                entry = os.fsdecode(raw)
                if entry.endswith(CTL_SUFFIX):
                    self._ctl.add(entry)
                name = (
                    os.path.join(self.directory, entry) if is_spool_name(self.base, entry) else None
                )
                if len(cache) >= _NAMES_CACHE:
                    cache.clear()
                cache[raw] = name
            if name is not None:
                dirty.add(name)  # type: ignore[arg-type]
        self._schedule()

    def overflowed(self) -> None:
        """
        The kernel's inotify queue overflowed (events were lost): list the
        directory again, once for any number of overflows seen before it runs.
        """
        self.overflows += 1
        if self._overflow_rescan is None or not self._overflow_rescan.active():
            self._overflow_rescan = self.clock.callLater(0, self.rescan)

    def watch_lost(self) -> None:
        """
        The spool directory is no longer watched: rescans find new bytes now.
        """
        if self._inotify is None:
            return
        notifier, self._inotify = self._inotify, None
        self.clock.callLater(0, notifier.loseConnection)
        logs.warn(
            self.log,
            "spool {directory}: inotify watch lost; rescanning every {interval} s",
            directory=self.directory,
            interval=self.poll_interval,
        )
        self.rescan()

    def touch(self, name: str) -> None:
        """
        The file C{name} may have new bytes: read it soon.
        """
        self._dirty.add(name)
        self._schedule()

    def poked(self, offset: int, line: bytes) -> None:
        """
        A producer says it wrote C{line} at C{offset}: check that against the file
        (the poke's text itself is never stored) and read the file.
        """
        self.stats.pokes += 1
        name = spool_file_of(self.prefix, line)
        if name is None:
            self.stats.poke_mismatches += 1
            logs.warn(
                self.log,
                "interlogger poke ignored: its line names no job id usable as a spool file",
            )
            return
        cursor = self.cursors.get(name)
        if cursor is not None and offset + len(line) <= cursor.read:
            # Its bytes were read already (inotify came first): check the poke
            # against what was read, if still held, and read nothing again.
            recent = self._recent.get(name) or self._older.get(name)
            if recent is not None and recent[0] == cursor.inode:
                inode, start, data = recent
                if start <= offset and offset + len(line) <= start + len(data):
                    self.stats.late_pokes += 1
                    self._check_pokes(name, None, start, data, [(offset, line)])
                    return
        pending = self._pokes.setdefault(name, [])
        if len(pending) < self.batch_events:
            # Checked when the file is next read (no file access per poke here).
            pending.append((offset, line))
        self.touch(name)

    def _check_pokes(
        self, name: str, fd: int | None, start: int, data: bytes, pokes: list[tuple[int, bytes]]
    ) -> None:
        """
        Check pokes of C{name} against the file: C{data} is what was just read at
        C{start}; pokes outside it are read from C{fd} (L{None}: the file is gone).
        """
        end = start + len(data)
        for offset, line in pokes:
            if start <= offset and offset + len(line) <= end:
                found = data[offset - start : offset - start + len(line)]
            elif fd is not None:
                try:
                    found = os.pread(fd, len(line), offset)
                except OSError:
                    found = b""
            else:
                found = b""
            if found != line:
                self.stats.poke_mismatches += 1
                logs.warn(
                    self.log,
                    "interlogger poke for {file} at offset {offset}: its line is not in the "
                    "file there; the file is read as it is",
                    file=name,
                    offset=offset,
                )

    def _schedule(self, delay: float = 0.0) -> None:
        if not self._ready or self._stopping or len(self._calls) >= self.passes:
            return
        if self._soon is not None and self._soon.active():
            if delay == 0.0 and self._soon.getTime() > self.clock.seconds():
                self._soon.reset(0)
            return
        self._soon = self.clock.callLater(delay, self._pass)

    def rescan(self) -> None:
        """
        List the spool directory: every spool file whose size or inode is not
        what was read gets read; stored, idle files are removed.
        """
        if self._rescan_call is not None and self._rescan_call.active():
            self._rescan_call.cancel()
        self._rescan_call = None
        if self._stopping:
            return
        interval = self.rescan_interval if self.watching else self.poll_interval
        self._rescan_call = self.clock.callLater(interval, self.rescan)
        if self._draining:
            self._drain()
        try:
            names = os.listdir(self.directory)
            dir_stat = os.stat(self.directory)
        except OSError as e:
            logs.warn(
                self.log,
                "spool directory {directory} unreadable: {error}; trying again in {interval} s",
                directory=self.directory,
                error=e.strerror,
                interval=interval,
            )
            return
        if dir_stat.st_mode & stat.S_IWOTH and not dir_stat.st_mode & stat.S_ISVTX:
            logs.warn(
                self.log,
                "spool directory {directory} is writable by everyone without the sticky "
                "bit: anyone may replace the files (only files of allowed producers are read)",
                directory=self.directory,
            )
        now = self.clock.seconds()
        ctl = {entry for entry in names if entry.endswith(CTL_SUFFIX)}
        self._ctl = ctl
        listed = {os.path.join(self.directory, entry) for entry in names}
        gone: dict[str, tuple[int, int] | None] = {}
        for name in [n for n in self.cursors if n not in listed and n not in self._held]:
            # Removed by someone else: forget it (a new file of that name is new).
            del self.cursors[name]
            gone[name] = None
        if gone:
            self.store.store([], gone).addErrback(self._forget_failed, ", ".join(gone))
        for entry in names:
            if not is_spool_name(self.base, entry):
                continue
            name = os.path.join(self.directory, entry)
            try:
                st = os.stat(name)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            cursor = self.cursors.get(name)
            if cursor is None:
                self.cursors[name] = self._new_cursor(name, st, entry + CTL_SUFFIX in ctl)
                self._dirty.add(name)
            elif cursor.inode != st.st_ino or st.st_size != cursor.read:
                self._dirty.add(name)
            elif (
                self.remove_idle is not None
                and cursor.settled
                and name not in self._dirty
                and now - st.st_mtime >= self.remove_idle
                and name not in self._held
            ):
                self._remove(name, cursor)
        self._schedule()

    def _new_cursor(self, name: str, st: os.stat_result, has_ctl: bool) -> FileCursor:
        """
        A cursor for a file seen for the first time: from the offset in L&B's
        C{.ctl} sidecar when there is a sane one, else from 0.
        """
        offset = 0
        if has_ctl:
            try:
                with open(name + CTL_SUFFIX, encoding="ascii", errors="replace") as f:
                    found = parse_ctl(f.read(4096))
                if found is None:
                    raise ValueError("not an interlogger control file")
                if found > st.st_size:
                    raise ValueError(f"offset {found} beyond the file's {st.st_size} bytes")
                if found:
                    fd = os.open(name, os.O_RDONLY)
                    try:
                        if os.pread(fd, 1, found - 1) != b"\n":
                            raise ValueError(f"offset {found} is not at a line start")
                    finally:
                        os.close(fd)
                offset = found
                self.log.info(
                    "spool {file}: taken over from L&B's interlogger at offset {offset}",
                    file=name,
                    offset=offset,
                )
            except (OSError, ValueError) as e:
                logs.warn(
                    self.log,
                    "spool {file}: control file ignored ({error}); reading from the start",
                    file=name,
                    error=e,
                )
        return FileCursor.at(st.st_ino, offset)

    def _restart(self, name: str, cursor: FileCursor, inode: int, why: str) -> None:
        self.stats.restarted += 1
        logs.warn(
            self.log,
            "spool {file} {why} (committed offset {offset}): read again from its start",
            file=name,
            why=why,
            offset=cursor.committed,
        )
        cursor.restart(inode)

    def _remove(self, name: str, cursor: FileCursor) -> None:
        """
        Remove a stored, idle file. A producer that opened it just before may
        still append to it: the file is kept open and read once more at the next
        rescan (L{_drain}).
        """
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            logs.warn(self.log, "spool {file}: not removed: {error}", file=name, error=e.strerror)
            return
        try:
            if os.fstat(fd).st_ino != cursor.inode:
                raise OSError(errno.ESTALE, "replaced meanwhile")
            os.unlink(name)
        except OSError as e:
            os.close(fd)
            logs.warn(self.log, "spool {file}: not removed: {error}", file=name, error=e.strerror)
            return
        try:
            os.unlink(name + CTL_SUFFIX)
        except OSError:
            pass
        del self.cursors[name]
        self._draining.append((name, fd, cursor))
        self.stats.removed += 1
        self.store.store([], {name: None}).addErrback(self._forget_failed, name)

    def _forget_failed(self, failure: Failure, name: str) -> None:
        # The row stays; the next start forgets it (the file is gone).
        logs.warn(
            self.log,
            "spool {file}: removed, its offset not forgotten yet: {error}",
            file=name,
            error=failure.getErrorMessage(),
        )

    def _drain(self) -> None:
        """
        Read what was appended to removed files after their last read, and close them.
        """
        draining, self._draining = self._draining, []
        items: list[tuple[str, Event]] = []
        for name, fd, cursor in draining:
            try:
                size = os.fstat(fd).st_size
                data = os.pread(fd, size - cursor.read, cursor.read) if size > cursor.read else b""
            except OSError:
                data = b""
            finally:
                os.close(fd)
            if not data:
                continue
            before = len(items)
            self._take(name, cursor, data, items)
            logs.warn(
                self.log,
                "spool {file}: {n} lines appended as it was removed; stored",
                file=name,
                n=len(items) - before,
            )
        if items:
            d = maybeDeferred(self.store.store, items)
            call: Deferred[None] = d.addCallbacks(
                self._count, self._drain_failed, errbackArgs=(len(items),)
            )
            if not call.called:
                self._calls.append(call)
                call.addBoth(self._answered, call)

    def _drain_failed(self, failure: Failure, n: int) -> None:
        self.stats.failures += 1
        self.log.error(
            "spool: {n} lines appended to removed files not stored: {error}",
            n=n,
            error=failure.getErrorMessage(),
        )

    # -- reading ------------------------------------------------------------------

    def _pass(self) -> None:
        """
        Read the dirty files (at most C{batch_events} lines) and store them with
        the new offsets in one call.
        """
        self._soon = None
        if len(self._calls) >= self.passes or self._stopping:
            return
        self.stats.scans += 1
        self._older, self._recent = self._recent, {}
        self._recent_bytes = 0
        items: list[tuple[str, Event]] = []
        offsets: dict[str, tuple[int, int] | None] = {}
        dirty, self._dirty = self._dirty, set()
        held = self._held
        pending = [name for name in dirty if name not in held]
        if len(pending) < len(dirty):
            self._dirty.update(name for name in dirty if name in held)
        while pending and len(items) < self.batch_events:
            name = pending.pop()
            if self._read(name, items, offsets):
                self._dirty.add(name)
        self._dirty.update(pending)
        if not items and not offsets:
            return
        held.update(offsets)
        d = maybeDeferred(self.store.store, items, offsets)
        call: Deferred[None] = d.addCallbacks(
            self._stored, self._failed, (offsets,), errbackArgs=(offsets,)
        )
        call.addErrback(lambda f: self.log.failure("spool intake failed", f))
        if not call.called:
            self._calls.append(call)
            call.addBoth(self._answered, call)
            # Read on while the store commits (the next call joins its next group).
            if self._dirty:
                self._schedule()

    def _answered(self, result: object, call: Deferred[None]) -> object:
        self._calls.remove(call)
        if self._dirty:
            self._schedule()
        return result

    def _read(
        self,
        name: str,
        items: list[tuple[str, Event]],
        offsets: dict[str, tuple[int, int] | None],
    ) -> bool:
        """
        Read new lines of one file into C{items}, its new boundary into C{offsets}.

        @return: whether more is left to read.
        """
        cursor = self.cursors.get(name)
        pokes = self._pokes.pop(name, None)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENOENT:
                logs.warn(self.log, "spool {file} unreadable: {error}", file=name, error=e.strerror)
            if pokes:
                self._check_pokes(name, None, 0, b"", pokes)
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            if st.st_uid not in self.allowed_uids and st.st_gid not in self.allowed_gids:
                if (name, st.st_ino) not in self._refused:
                    self._refused.add((name, st.st_ino))
                    logs.warn(
                        self.log,
                        "spool {file} skipped: owner uid {uid} is not an allowed producer",
                        file=name,
                        uid=st.st_uid,
                    )
                return False
            if cursor is None:
                has_ctl = os.path.basename(name) + CTL_SUFFIX in self._ctl
                cursor = self._new_cursor(name, st, has_ctl)
                self.cursors[name] = cursor
            elif cursor.inode != st.st_ino:
                self._restart(name, cursor, st.st_ino, "replaced")
            elif st.st_size < cursor.read:
                self._restart(name, cursor, st.st_ino, "truncated")
            left = st.st_size - cursor.read
            self.stats.reads += 1
            if left <= 0:
                self.stats.idle_reads += 1
                return False
            budget = min(left, max(self.max_line + 2, 1 << 20))
            start = cursor.read
            if start and cursor.skip_from is None:
                # The byte before a line boundary is an LF, or the file is not the
                # one read so far (replaced, its inode reused).
                data = os.pread(fd, budget + 1, start - 1)
                if data[:1] != b"\n":
                    self._restart(name, cursor, st.st_ino, "replaced")
                    left = st.st_size
                    budget = min(left, max(self.max_line + 2, 1 << 20))
                    data = os.pread(fd, budget, 0)
                else:
                    data = data[1:]
            else:
                data = os.pread(fd, budget, start)
            if self._recent_bytes + len(data) <= self.max_line:
                self._recent_bytes += len(data)
                self._recent[name] = (cursor.inode, cursor.read, data)
            if pokes:
                self._check_pokes(name, fd, cursor.read, data, pokes)
                pokes = None
        finally:
            if pokes:
                self._check_pokes(name, fd, 0, b"", pokes)
            os.close(fd)
        boundary = self._take(name, cursor, data, items)
        if boundary > cursor.committed:
            offsets[name] = (cursor.inode, boundary)
        return len(data) < left

    def _take(
        self, name: str, cursor: FileCursor, data: bytes, items: list[tuple[str, Event]]
    ) -> int:
        """
        Parse the complete lines of C{data} (read at C{cursor.read}) into C{items}.

        @return: the new line boundary.
        """
        taken = cursor.take(data, self.max_line)
        for at in taken.too_long:
            self.stats.too_long += 1
            logs.warn(
                self.log,
                "spool {file} offset {offset}: line longer than {limit} bytes dropped",
                file=name,
                offset=at,
                limit=self.max_line,
            )
        for at, raw in taken.lines:
            result = validate_line(raw, self.max_fields, self.max_line)
            if isinstance(result, LBError):
                self.stats.rejected += 1
                logs.warn(
                    self.log,
                    "spool {file} offset {offset}: line rejected: {code} {text}",
                    file=name,
                    offset=at,
                    code=result.code,
                    text=result.message,
                )
                continue
            items.append((raw.rstrip(b"\r").decode("utf-8"), result))
        return taken.boundary

    def _stored(self, results: list[Any], offsets: dict[str, tuple[int, int] | None]) -> None:
        self._held.difference_update(offsets)
        failed = [r for r in results if isinstance(r, (TryAgain, NoSpace))]
        if failed:
            self._failed(Failure(failed[0]), offsets)
            return
        self._count(results)
        for name, spooled in offsets.items():
            cursor = self.cursors.get(name)
            if cursor is not None and spooled is not None and cursor.inode == spooled[0]:
                cursor.stored(spooled[1])

    def _count(self, results: list[Any]) -> None:
        stats = self.stats
        before = stats.duplicates
        for result in results:
            if isinstance(result, LBError):
                stats.rejected += 1
                logs.warn(
                    self.log,
                    "spool event refused by the store: {code} {text}",
                    code=result.code,
                    text=result.message,
                )
            elif getattr(result, "duplicate", False):
                stats.duplicates += 1
            else:
                stats.accepted += 1
        if stats.duplicates > before:
            # Not expected: offsets go with their events. A file replaced or
            # truncated and read again gets here (logged as such before).
            logs.warn(
                self.log,
                "spool: {n} events read were already stored (duplicates, {total} in all)",
                n=stats.duplicates - before,
                total=stats.duplicates,
            )

    def _failed(self, failure: Failure, offsets: dict[str, tuple[int, int] | None]) -> None:
        self._held.difference_update(offsets)
        self.stats.failures += 1
        logs.warn(
            self.log,
            "spool events not stored ({error}); read again in {delay} s",
            error=failure.getErrorMessage(),
            delay=self.poll_interval,
        )
        for name in offsets:
            cursor = self.cursors.get(name)
            if cursor is not None:
                cursor.rewind()
        self._retry.update(offsets)
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self.clock.callLater(self.poll_interval, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_call = None
        retry, self._retry = self._retry, set()
        self._dirty.update(retry)
        self._schedule()


# -- the notification socket ------------------------------------------------------
#
# A poke is one connection per event (ContextIL: connect, send, close, no reply
# read), so the socket's cost is that of a connection. Over a UNIX socket
# (L{PokeEndpoint}) connections are taken by a lean acceptor: accept, SO_PEERCRED,
# read what is there (usually the whole poke), close as soon as the poke is
# complete (as L&B's interlogger did: one poke per connection; its end is not
# waited for); only a connection whose poke is not complete yet is watched by the
# reactor. Every
# other endpoint goes through Twisted's transports and L{PokeProtocol}. Both share
# the factory's admission (producers only, C{max_connections}) and one idle sweep.


def cut_poke(log: Logger, scanner: SpoolScanner, decoder: PokeDecoder) -> None:
    """
    A poke connection ended inside a poke: what came of it (ContextIL's native
    poke of a line with non-ASCII text is cut short, see L{PokeDecoder.finish})
    is taken as a poke of that much of the line: it wakes its file and is checked
    against the file like any poke (a mismatch is logged there). Only a stub
    without its offset or any text is logged here.
    """
    n = decoder.pending
    cut = decoder.finish()
    if cut is None:
        logs.warn(
            log, "interlogger poke connection closed with {n} bytes of an incomplete poke", n=n
        )
    else:
        scanner.poked(*cut)


class PokeProtocol(Protocol):
    """
    One producer's poke connection: pokes in, nothing out (ContextIL reads no reply).

    @ivar last: when its last complete poke came (for the factory's idle sweep).
    """

    factory: PokeFactory
    log = Logger()

    def __init__(self) -> None:
        self._decoder: PokeDecoder | None = None
        self._admitted = False
        self.last = 0.0

    def connectionMade(self) -> None:
        f = self.factory
        assert self.transport is not None
        if not f.admit(f.peer_credentials(self.transport)):
            self.transport.loseConnection()
            return
        self._admitted = True
        self._decoder = PokeDecoder(f.max_line)
        f.track(self)

    def idle_close(self) -> None:
        """
        Silent for the factory's C{idle_timeout}: close.
        """
        logs.warn(self.log, "interlogger poke connection closed: idle")
        assert self.transport is not None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            pokes = decoder.feed(data)
        except LBError as e:
            logs.warn(self.log, "interlogger poke connection closed: {error}", error=e.message)
            self._decoder = None
            assert self.transport is not None
            self.transport.loseConnection()
            return
        if pokes:
            poked = self.factory.scanner.poked
            for offset, line in pokes:
                poked(offset, line)
            self.last = self.factory.clock.seconds()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._decoder is not None and self._decoder.pending:
            cut_poke(self.log, self.factory.scanner, self._decoder)
        self._decoder = None
        if self._admitted:
            self._admitted = False
            self.factory.release(self)


class PokeFactory(Factory["PokeProtocol"]):
    """
    The notification socket: every poke wakes L{SpoolScanner} for its file.

    Open connections are closed after C{idle_timeout} seconds without a
    complete poke by one sweep timer for all of them (none per connection).
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        scanner: SpoolScanner,
        *,
        clock: IReactorTime,
        max_line: int = DEFAULT_MAX_LINE,
        max_connections: int = 256,
        idle_timeout: float = 60.0,
        allowed_uids: Collection[int] | None = None,
        allowed_gids: Collection[int] = (),
        peer_credentials: Any = None,
    ) -> None:
        from lbtwist.service.intake import so_peercred

        self.scanner = scanner
        self.clock = clock
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        if allowed_uids is None:
            allowed_uids = default_producer_uids()
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.peer_credentials = peer_credentials or so_peercred
        #: Connections admitted and not closed yet.
        self.connections = 0
        #: Connections waiting for bytes (the idle sweep's), with a C{last} time.
        self._open: set[Any] = set()
        self._sweep_call: IDelayedCall | None = None

    def buildProtocol(self, addr: object) -> PokeProtocol:
        proto = PokeProtocol()
        proto.factory = self
        return proto

    def admit(self, peer: tuple[int, int, int] | None) -> bool:
        """
        Whether a new connection of C{peer} (pid, uid, gid) may poke; counted if so.
        """
        if peer is None or (peer[1] not in self.allowed_uids and peer[2] not in self.allowed_gids):
            logs.warn(self.log, "interlogger poke from {peer} refused", peer=peer)
            return False
        if self.connections >= self.max_connections:
            logs.warn(
                self.log, "interlogger poke refused: {n} connections open", n=self.connections
            )
            return False
        self.connections += 1
        return True

    def track(self, conn: Any) -> None:
        """
        C{conn} (with C{last} and C{idle_close()}) waits for bytes: sweep it when idle.
        """
        conn.last = self.clock.seconds()
        self._open.add(conn)
        if self._sweep_call is None:
            self._sweep_call = self.clock.callLater(self.idle_timeout, self._sweep)

    def release(self, conn: Any) -> None:
        """
        An admitted connection is closed.
        """
        self.connections -= 1
        self._open.discard(conn)

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.clock.seconds()
        due: float | None = None
        for conn in list(self._open):
            if now - conn.last >= self.idle_timeout:
                self._open.discard(conn)
                conn.idle_close()
            elif due is None or conn.last < due:
                due = conn.last
        if due is not None and self._open:
            self._sweep_call = self.clock.callLater(
                max(0.0, due + self.idle_timeout - now), self._sweep
            )

    def stopFactory(self) -> None:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None


@implementer(IReadDescriptor)
class _PokeSocket:
    """
    A poke connection taken by L{_PokeAcceptor} whose poke was not complete on
    accept: watched by the reactor until its end.
    """

    __slots__ = ("acceptor", "sock", "decoder", "last", "watched")

    log = Logger()

    def __init__(self, acceptor: _PokeAcceptor, sock: socket.socket) -> None:
        self.acceptor = acceptor
        self.sock: socket.socket | None = sock
        self.decoder = PokeDecoder(acceptor.factory.max_line)
        self.last = 0.0
        self.watched = False

    def getHandle(self) -> socket.socket | None:
        """
        The socket (for L{PokeFactory.peer_credentials}).
        """
        return self.sock

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "interlogger-poke"

    def doRead(self) -> None:
        self.acceptor.read(self)

    def connectionLost(self, reason: Failure) -> None:
        self.acceptor.close(self)

    def idle_close(self) -> None:
        logs.warn(self.log, "interlogger poke connection closed: idle")
        self.acceptor.close(self)


@implementer(IReadDescriptor)
class _PokeAcceptor:
    """
    Takes the connections of a listening UNIX socket for a L{PokeFactory}
    without a transport or protocol each: at most C{accepts} per reactor turn.
    """

    log = Logger()
    #: Seconds accepting pauses when the process is out of file descriptors.
    PAUSE = 0.5
    #: recv() size.
    CHUNK = 1 << 16

    def __init__(
        self, listening: socket.socket, factory: PokeFactory, reactor: Any, accepts: int = 1024
    ) -> None:
        self.listening = listening
        self.factory = factory
        self.reactor = reactor
        self.accepts = accepts
        self.watched: set[_PokeSocket] = set()
        self._paused: IDelayedCall | None = None
        self._reading = False

    def start(self) -> None:
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)

    def stop(self) -> None:
        """
        Stop accepting and close the connections still open.
        """
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        self._paused = None
        for conn in list(self.watched):
            self.close(conn)

    def fileno(self) -> int:
        return self.listening.fileno()

    def logPrefix(self) -> str:
        return "interlogger-pokes"

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False

    def doRead(self) -> None:
        accept = self.listening.accept
        for _ in range(self.accepts):
            try:
                sock, _addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    continue
                # Out of descriptors or memory: level-triggered, the socket would
                # wake the reactor at once again; pause instead.
                logs.warn(
                    self.log,
                    "interlogger poke socket: cannot accept ({error}); pausing {delay} s",
                    error=e.strerror,
                    delay=self.PAUSE,
                )
                if self._reading:
                    self._reading = False
                    self.reactor.removeReader(self)
                    self._paused = self.reactor.callLater(self.PAUSE, self._resume)
                return
            self.serve(sock)

    def _resume(self) -> None:
        self._paused = None
        self.start()

    def serve(self, sock: socket.socket) -> None:
        """
        An accepted connection: check its peer, read what it sent.
        """
        conn = _PokeSocket(self, sock)
        factory = self.factory
        if not factory.admit(factory.peer_credentials(conn)):
            conn.sock = None
            sock.close()
            return
        self.read(conn)
        if conn.sock is not None and not conn.watched:
            conn.watched = True
            self.watched.add(conn)
            self.reactor.addReader(conn)
            factory.track(conn)

    def read(self, conn: _PokeSocket) -> None:
        """
        Take what C{conn} has sent; close it at its end or on a broken poke.
        """
        sock = conn.sock
        if sock is None:
            return
        poked = self.factory.scanner.poked
        while True:
            try:
                data = sock.recv(self.CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                logs.warn(self.log, "interlogger poke connection failed: {error}", error=e.strerror)
                self.close(conn)
                return
            if not data:
                if conn.decoder.pending:
                    cut_poke(self.log, self.factory.scanner, conn.decoder)
                self.close(conn)
                return
            try:
                pokes = conn.decoder.feed(data)
            except LBError as e:
                logs.warn(self.log, "interlogger poke connection closed: {error}", error=e.message)
                self.close(conn)
                return
            for offset, line in pokes:
                poked(offset, line)
            if pokes and not conn.decoder.pending:
                # A poke is one connection (ContextIL sends one and closes; L&B's
                # interlogger read one and closed): done, no need to wait for its end.
                self.close(conn)
                return
            if pokes and conn.watched:
                conn.last = self.factory.clock.seconds()

    def close(self, conn: _PokeSocket) -> None:
        sock = conn.sock
        if sock is None:
            return
        if conn.watched:
            conn.watched = False
            self.watched.discard(conn)
            self.reactor.removeReader(conn)
        conn.sock = None
        sock.close()
        self.factory.release(conn)


@implementer(IListeningPort)
class _LeanPort:
    """
    A listening UNIX port whose connections L{_PokeAcceptor} takes.
    """

    def __init__(self, port: Any, acceptor: _PokeAcceptor) -> None:
        self.port = port
        self.acceptor = acceptor

    def startListening(self) -> None:
        self.port.startListening()

    def stopListening(self) -> Any:
        self.acceptor.stop()
        return self.port.stopListening()

    def getHost(self) -> Any:
        return self.port.getHost()


@implementer(IStreamServerEndpoint)
class PokeEndpoint:
    """
    The notification socket's endpoint: C{endpoint} listens; when that is a UNIX
    socket and the factory a L{PokeFactory}, its connections are taken by the
    lean acceptor (no transport, protocol or timer per poke).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, reactor: Any) -> None:
        self.endpoint = endpoint
        self.reactor = reactor

    def listen(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self.endpoint.listen(factory)
        d.addCallback(self._take_over, factory)
        return d

    def _take_over(self, port: Any, factory: Any) -> Any:
        listening = getattr(port, "socket", None)
        if (
            not isinstance(factory, PokeFactory)
            or not isinstance(listening, socket.socket)
            or listening.family != socket.AF_UNIX
            or not callable(getattr(port, "stopReading", None))
        ):
            return port
        port.stopReading()
        acceptor = _PokeAcceptor(listening, factory, self.reactor)
        acceptor.start()
        return _LeanPort(port, acceptor)


__all__ = [
    "PokeEndpoint",
    "PokeFactory",
    "PokeProtocol",
    "SpoolScanner",
    "SpoolStats",
    "validate_line",
]
