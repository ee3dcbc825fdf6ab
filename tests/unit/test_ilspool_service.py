# -*- test-case-name: tests.unit.test_ilspool_service -*-
"""
Tests of L{lbtwist.service.ilspool}: the spool scanner on a memory store and a
fake clock (inotify off: the rescan timer and pokes drive it), files in a
temporary directory, and the poke protocol on a string transport.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import TryAgain
from lbtwist.core.ilspool import encode_poke
from lbtwist.service import logs
from lbtwist.service.ilspool import PokeFactory, SpoolScanner
from lbtwist.testing import MemoryStore
from tests import traces
from tests.unit.test_store import PROXY


def java_form(line: str) -> bytes:
    """
    C{line} as ContextIL writes it: C{DG.LLLID} first, LF-terminated.
    """
    return ('DG.LLLID="0" ' + line + "\n").encode()


class ScannerTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.patch(logs, "LIMITER", logs.WarningLimiter(clock=self.clock, lines=1000))
        self.logged: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            fmt = event.get("log_format")
            if fmt and str(event.get("log_namespace", "")).startswith("lbtwist.service.ilspool"):
                self.logged.append(fmt.format(**{k: event.get(k) for k in _keys(fmt)}))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.prefix = os.path.join(self.dir, "dglogd.log")
        self.store = MemoryStore(self.clock, proxy_host=PROXY)
        self.lines = [java_form(line) for line in traces.cream_done_ok()]
        self.file = f"{self.prefix}.{traces.DIRECT_JOBID.rsplit('/', 1)[1]}"

    def scanner(self, **kwargs: Any) -> SpoolScanner:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("inotify", False)
        kwargs.setdefault("remove_idle", None)
        scanner = SpoolScanner(self.store, self.prefix, **kwargs)
        scanner.startService()
        self.addCleanup(scanner.stopService)
        self.clock.advance(0)
        return scanner

    def append(self, data: bytes, name: str | None = None) -> int:
        with open(name or self.file, "ab") as f:
            offset = f.tell()
            f.write(data)
        return offset

    def stored_lines(self) -> list[str]:
        return [new.line for new in self.store.backend.events]

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        self.clock.advance(0)


def _keys(fmt: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


class ScannerTests(ScannerTestBase):
    def test_rescan_reads_and_commits(self) -> None:
        """
        Without pokes or inotify the rescan finds the lines; each is stored once,
        and the committed offset is the end of the last complete line.
        """
        scanner = self.scanner(poll_interval=1.0)
        self.append(b"".join(self.lines))
        self.tick()
        self.assertEqual(len(self.stored_lines()), len(self.lines))
        size = os.path.getsize(self.file)
        ino = os.stat(self.file).st_ino
        self.assertEqual(self.store.backend.spool, {self.file: (ino, size)})
        self.tick()
        self.tick()
        self.assertEqual(len(self.stored_lines()), len(self.lines))
        self.assertEqual(scanner.stats.duplicates, 0)
        status = self.successResultOf(self.store.status(traces.DIRECT_JOBID))
        self.assertEqual(status.state, "Cleared")

    def test_partial_line_waits_for_lf(self) -> None:
        """
        A line being appended is left until its LF arrives.
        """
        self.scanner(poll_interval=1.0)
        first, second = self.lines[0], self.lines[1]
        self.append(first + second[:20])
        self.tick()
        self.assertEqual(len(self.stored_lines()), 1)
        self.assertEqual(self.store.backend.spool[self.file][1], len(first))
        self.append(second[20:])
        self.tick()
        self.assertEqual(len(self.stored_lines()), 2)
        self.assertEqual(self.store.backend.spool[self.file][1], len(first) + len(second))

    def test_restart_from_committed_offset(self) -> None:
        """
        A new scanner on the same store reads on from the committed offset:
        nothing twice, nothing left out.
        """
        scanner = self.scanner(poll_interval=1.0)
        self.append(b"".join(self.lines[:3]))
        self.tick()
        self.successResultOf(scanner.stopService())
        self.append(b"".join(self.lines[3:]))
        again = self.scanner(poll_interval=1.0)
        self.tick()
        self.assertEqual(len(self.stored_lines()), len(self.lines))
        self.assertEqual(again.stats.duplicates, 0)
        self.assertEqual(again.stats.accepted, len(self.lines) - 3)

    def test_store_failure_reads_again(self) -> None:
        """
        A failed commit stores neither the events nor the offset; the lines are
        read again after the poll interval and stored once.
        """
        scanner = self.scanner(poll_interval=2.0)
        self.store.backend.fail_next = TryAgain("disk busy")
        self.append(b"".join(self.lines))
        self.tick(2.0)
        self.assertEqual(self.stored_lines(), [])
        self.assertEqual(self.store.backend.spool, {})
        self.assertEqual(scanner.stats.failures, 1)
        self.tick(2.0)
        self.assertEqual(len(self.stored_lines()), len(self.lines))
        self.assertEqual(scanner.stats.duplicates, 0)

    def test_bad_lines_logged_and_passed(self) -> None:
        """
        Lines that are not events, and over-long ones, are logged and passed
        over; the offset moves past them; the good lines are stored.
        """
        scanner = self.scanner(poll_interval=1.0, max_line=4096)
        self.append(self.lines[0] + b"this is not ULM\n" + b"x" * 5000 + b"\n" + self.lines[1])
        self.tick()
        self.assertEqual(len(self.stored_lines()), 2)
        self.assertEqual((scanner.stats.rejected, scanner.stats.too_long), (1, 1))
        self.assertEqual(self.store.backend.spool[self.file][1], os.path.getsize(self.file))
        self.assertTrue(any("line rejected" in line for line in self.logged), self.logged)
        self.assertTrue(any("longer than 4096" in line for line in self.logged), self.logged)

    def test_truncated_and_replaced(self) -> None:
        """
        A file shorter than its committed offset, or a new file under the name,
        is read again from its start (logged); the duplicate rule absorbs what
        was stored before, and counts it.
        """
        scanner = self.scanner(poll_interval=1.0)
        self.append(b"".join(self.lines[:4]))
        self.tick()
        with open(self.file, "wb") as f:
            f.write(b"".join(self.lines[:2]))
        self.tick()
        self.assertEqual(scanner.stats.restarted, 1)
        self.assertEqual(scanner.stats.duplicates, 2)
        replacement = self.file + ".new"
        self.append(b"".join(self.lines[:5]), replacement)
        os.rename(replacement, self.file)
        self.tick()
        self.assertEqual(scanner.stats.restarted, 2)
        self.assertEqual(len(self.stored_lines()), 5)
        self.assertEqual(scanner.stats.duplicates, 6)
        self.assertTrue(any("truncated" in line for line in self.logged), self.logged)

    def test_rewritten_in_place(self) -> None:
        """
        A file rewritten under the same inode (or a new file that got the old
        inode) whose committed offset no longer follows an LF is read from 0.
        """
        scanner = self.scanner(poll_interval=1.0)
        self.append(b"".join(self.lines[:2]))
        self.tick()
        boundary = os.path.getsize(self.file)
        data = b"".join(self.lines[4:8])
        self.assertNotEqual(data[boundary - 1 : boundary], b"\n")
        with open(self.file, "r+b") as f:
            f.write(data)
        self.tick()
        self.assertEqual(scanner.stats.restarted, 1)
        self.assertEqual(len(self.stored_lines()), 6)

    def test_idle_files_removed(self) -> None:
        """
        A fully stored file unchanged for C{remove_idle} seconds is removed at a
        rescan and its offset forgotten; kept files stay.
        """
        self.scanner(poll_interval=1.0, remove_idle=30.0)
        self.append(b"".join(self.lines))
        mtime = os.stat(self.file).st_mtime
        self.clock.advance(mtime - self.clock.seconds())
        self.tick()
        self.assertTrue(os.path.exists(self.file))
        self.tick(31)
        self.assertFalse(os.path.exists(self.file))
        self.assertEqual(self.store.backend.spool, {})
        self.assertEqual(len(self.stored_lines()), len(self.lines))

    def test_appended_as_removed(self) -> None:
        """
        Bytes a producer appended to a file as it was removed (it had it open)
        are read from the removed file at the next rescan.
        """
        scanner = self.scanner(poll_interval=1.0, remove_idle=30.0)
        self.append(b"".join(self.lines[:3]))
        self.clock.advance(os.stat(self.file).st_mtime - self.clock.seconds())
        self.tick()
        held = open(self.file, "ab")  # noqa: SIM115 - the producer's open file
        self.addCleanup(held.close)
        self.tick(31)
        self.assertFalse(os.path.exists(self.file))
        held.write(b"".join(self.lines[3:]))
        held.flush()
        self.tick()
        self.assertEqual(len(self.stored_lines()), len(self.lines))
        self.assertEqual(scanner.stats.duplicates, 0)

    def test_ctl_sidecar_migration(self) -> None:
        """
        A file L&B's interlogger was reading is taken over at the offset of its
        C{.ctl} sidecar, once; an insane sidecar is ignored (logged).
        """
        committed = len(self.lines[0]) + len(self.lines[1])
        self.append(b"".join(self.lines))
        with open(self.file + ".ctl", "w") as f:
            f.write(f"{traces.DIRECT_JOBID}\n{committed}\n{committed}\n")
        other = self.prefix + ".CREAM999"
        self.append(self.lines[0].replace(b"CREAM812461375", b"CREAM999"), other)
        with open(other + ".ctl", "w") as f:
            f.write("x\n3\n3\n")
        self.scanner(poll_interval=1.0)
        self.tick()
        self.assertEqual(len(self.stored_lines()), len(self.lines) - 2 + 1)
        self.assertTrue(any("control file ignored" in line for line in self.logged))

    def test_unreadable_directory(self) -> None:
        """
        A missing spool directory is logged; the scanner keeps trying and reads
        the files once the directory is there.
        """
        self.prefix = os.path.join(self.dir, "later", "dglogd.log")
        self.file = self.prefix + ".CREAM1"
        scanner = self.scanner(poll_interval=1.0)
        self.tick()
        self.assertTrue(any("unreadable" in line for line in self.logged), self.logged)
        os.makedirs(os.path.dirname(self.prefix))
        self.append(b"".join(self.lines))
        self.tick()
        self.assertEqual(scanner.stats.accepted, len(self.lines))

    def test_foreign_owner_skipped(self) -> None:
        """
        Files of owners not allowed to log are not read (logged once).
        """
        scanner = self.scanner(poll_interval=1.0, allowed_uids=[os.getuid() + 12345])
        self.append(b"".join(self.lines))
        self.tick()
        self.tick()
        self.assertEqual(scanner.stats.accepted, 0)
        self.assertEqual(sum("not an allowed producer" in line for line in self.logged), 1)


class PokeTests(ScannerTestBase):
    def connect(self, scanner: SpoolScanner, **kwargs: Any) -> tuple[Any, StringTransport]:
        kwargs.setdefault("peer_credentials", lambda t: (1, os.getuid(), os.getgid()))
        factory = PokeFactory(scanner, clock=self.clock, **kwargs)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_poke_reads_at_once(self) -> None:
        """
        A poke makes the scanner read the file at once (no rescan needed); the
        scanner answers nothing.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, transport = self.connect(scanner)
        offset = self.append(self.lines[0])
        proto.dataReceived(encode_poke(offset, self.lines[0]))
        self.clock.advance(0)
        self.assertEqual(len(self.stored_lines()), 1)
        self.assertEqual(transport.value(), b"")
        self.assertEqual((scanner.stats.pokes, scanner.stats.poke_mismatches), (1, 0))

    def test_poke_text_not_trusted(self) -> None:
        """
        A poke whose text is not in the file at its offset is logged and its
        text never stored; the file is read as it is.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, _ = self.connect(scanner)
        self.append(self.lines[0])
        forged = self.lines[1].replace(b"CREAMExecutor", b"CREAMInterface")
        proto.dataReceived(encode_poke(0, forged))
        self.clock.advance(0)
        self.assertEqual(scanner.stats.poke_mismatches, 1)
        self.assertEqual(self.stored_lines(), [self.lines[0].decode().rstrip("\n")])
        self.assertTrue(any("not in the file" in line for line in self.logged), self.logged)

    def test_cut_poke_reads_file(self) -> None:
        """
        A poke cut short by its producer's end (ContextIL's native poke of a
        line with non-ASCII text sends fewer bytes than the line has, so no LF
        comes) still wakes its file, and the part that came is checked against
        the file: no mismatch.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, _ = self.connect(scanner)
        line = self.lines[0].replace(b"Novakova", "Nov\u00e1kov\u00e1".encode())
        offset = self.append(line)
        proto.dataReceived(encode_poke(offset, line)[:-3])
        proto.connectionLost()
        self.clock.advance(0)
        self.assertEqual(len(self.stored_lines()), 1)
        self.assertEqual((scanner.stats.pokes, scanner.stats.poke_mismatches), (1, 0))
        self.assertFalse(any("incomplete poke" in x for x in self.logged), self.logged)

    def test_cut_poke_stub_logged(self) -> None:
        """
        A connection that ends inside a poke's offset is logged; nothing is read.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, _ = self.connect(scanner)
        self.append(self.lines[0])
        proto.dataReceived(encode_poke(0, self.lines[0])[:5])
        proto.connectionLost()
        self.clock.advance(0)
        self.assertEqual((scanner.stats.pokes, self.stored_lines()), (0, []))
        self.assertTrue(any("5 bytes of an incomplete poke" in x for x in self.logged))

    def test_poke_refused_peer(self) -> None:
        """
        Pokes from peers not allowed to log are refused (connection closed).
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, transport = self.connect(
            scanner, peer_credentials=lambda t: (1, 4242, 4242), allowed_uids=[0]
        )
        self.assertTrue(transport.disconnecting)

    def test_poke_too_long(self) -> None:
        """
        A poke longer than the limit closes its connection (logged).
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, transport = self.connect(scanner, max_line=64)
        proto.dataReceived(encode_poke(0, b"x" * 100))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(scanner.stats.pokes, 0)


class WakeUpTests(ScannerTestBase):
    """
    inotify wake-ups and pokes for the same bytes: one read of the file.
    """

    connect = PokeTests.connect

    def name(self) -> bytes:
        return os.path.basename(self.file).encode()

    def test_late_poke_reads_nothing(self) -> None:
        """
        A poke for bytes inotify already had read is checked against what was
        read and makes no read of the file; a forged one is still logged.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, _ = self.connect(scanner)
        offset = self.append(self.lines[0])
        scanner.notified([self.name()])
        self.clock.advance(0)
        self.assertEqual((scanner.stats.reads, len(self.stored_lines())), (1, 1))
        proto.dataReceived(encode_poke(offset, self.lines[0]))
        self.clock.advance(0)
        forged = self.lines[1][: len(self.lines[0])]
        proto.dataReceived(encode_poke(offset, forged))
        self.clock.advance(0)
        self.assertEqual(scanner.stats.reads, 1)
        self.assertEqual((scanner.stats.late_pokes, scanner.stats.poke_mismatches), (2, 1))
        self.assertEqual(len(self.stored_lines()), 1)
        self.assertTrue(any("not in the file" in line for line in self.logged), self.logged)

    def test_held_reads_bounded(self) -> None:
        """
        What a pass read is held for late pokes up to C{max_line} bytes in all;
        a late poke for bytes not held has the file read again to be checked.
        """
        longest = max(len(line) for line in self.lines)
        scanner = self.scanner(poll_interval=1000.0, max_line=longest + 1)
        proto, _ = self.connect(scanner)
        self.append(b"".join(self.lines[:3]))
        scanner.notified([self.name()])
        self.clock.advance(0)
        self.assertEqual((scanner.stats.reads, len(self.stored_lines())), (1, 3))
        self.assertEqual(scanner._recent, {})
        proto.dataReceived(encode_poke(0, self.lines[0]))
        self.clock.advance(0)
        self.assertEqual((scanner.stats.reads, scanner.stats.idle_reads), (2, 1))
        self.assertEqual((scanner.stats.late_pokes, scanner.stats.poke_mismatches), (0, 0))

    def test_poke_and_inotify_one_read(self) -> None:
        """
        A poke and the inotify events of the same appends (many per file, as a
        burst gives) before the pass: the file is read once.
        """
        scanner = self.scanner(poll_interval=1000.0)
        proto, _ = self.connect(scanner)
        for line in self.lines[:3]:
            offset = self.append(line)
            proto.dataReceived(encode_poke(offset, line))
        scanner.notified([self.name(), b"unrelated", self.name(), self.name() + b".ctl"])
        self.clock.advance(0)
        self.assertEqual((scanner.stats.reads, scanner.stats.idle_reads), (1, 0))
        self.assertEqual(len(self.stored_lines()), 3)
        self.assertEqual(scanner.stats.poke_mismatches, 0)

    def test_names_cache_bounded(self) -> None:
        """
        The cache of inotify entry names is emptied when it is full.
        """
        from lbtwist.service import ilspool

        self.patch(ilspool, "_NAMES_CACHE", 3)
        scanner = self.scanner(poll_interval=1000.0)
        for n in range(3):
            scanner.notified([f"other{n}".encode()])
        self.assertEqual(len(scanner._names), 3)
        scanner.notified([self.name()])
        self.assertEqual(scanner._names, {self.name(): self.file})

    def test_sidecar_of_file_found_by_inotify(self) -> None:
        """
        A file first seen through inotify after the listing is taken over at the
        offset of a C{.ctl} sidecar inotify saw (no look for one otherwise).
        """
        scanner = self.scanner(poll_interval=1000.0)
        committed = len(self.lines[0])
        self.append(b"".join(self.lines[:3]))
        with open(self.file + ".ctl", "w") as f:
            f.write(f"{traces.DIRECT_JOBID}\n{committed}\n{committed}\n")
        scanner.notified([self.name() + b".ctl", self.name()])
        self.clock.advance(0)
        self.assertEqual(len(self.stored_lines()), 2)

    def test_overflows_one_rescan(self) -> None:
        """
        Several inotify queue overflows before the rescan they ask for runs make
        one rescan, not one each.
        """
        scanner = self.scanner(poll_interval=1000.0)
        listed: list[str] = []
        real = os.listdir

        def listdir(path: str) -> list[str]:
            listed.append(path)
            return real(path)

        self.patch(os, "listdir", listdir)
        for _ in range(5):
            scanner.overflowed()
        self.clock.advance(0)
        self.assertEqual((scanner.overflows, len(listed)), (5, 1))


class InotifyParseTests(SynchronousTestCase):
    def test_names_overflow_and_rest(self) -> None:
        """
        Names come out of complete events; the overflow event (no name, no watch)
        is reported; a cut event is kept for the next read.
        """
        import struct

        from lbtwist.service.ilspool import parse_inotify

        def event(mask: int, name: bytes = b"") -> bytes:
            padded = name + b"\0" * (-len(name) % 16) if name else b""
            return struct.pack("=iIII", 1, mask, 0, len(padded)) + padded

        data = event(0x2, b"dglogd.log.CREAM1") + event(0x4000) + event(0x2, b"x")
        names, flags, rest = parse_inotify(data[:-5])
        self.assertEqual(names, [b"dglogd.log.CREAM1"])
        self.assertTrue(flags & 0x4000)
        self.assertEqual(rest, data[len(data) - 16 - 16 : -5])
        names, flags, rest = parse_inotify(rest + data[-5:])
        self.assertEqual((names, flags, rest), ([b"x"], 0, b""))


class ForgetTests(ScannerTestBase):
    def test_removed_by_others_forgotten(self) -> None:
        """
        A file removed by someone else is forgotten at the next rescan (its cursor
        and its stored offset), so a new file of that name is read from 0.
        """
        scanner = self.scanner(poll_interval=1.0)
        self.append(b"".join(self.lines[:3]))
        self.tick()
        self.assertIn(self.file, self.store.backend.spool)
        os.unlink(self.file)
        self.tick()
        self.assertEqual(self.store.backend.spool, {})
        self.assertNotIn(self.file, scanner.cursors)


class PokeSweepTests(ScannerTestBase):
    """
    The poke connections of Twisted transports: one idle sweep for all of them.
    """

    def connections(self, n: int, **kwargs: Any) -> tuple[PokeFactory, list[Any]]:
        scanner = self.scanner(poll_interval=1000.0)
        kwargs.setdefault("peer_credentials", lambda t: (1, os.getuid(), os.getgid()))
        factory = PokeFactory(scanner, clock=self.clock, idle_timeout=60.0, **kwargs)
        self.timers = len(self.clock.getDelayedCalls())
        made = []
        for _ in range(n):
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            made.append((proto, transport))
        return factory, made

    def test_one_timer_for_all(self) -> None:
        """
        Open poke connections share one idle timer (none per connection); each is
        closed C{idle_timeout} seconds after its last complete poke.
        """
        factory, made = self.connections(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), self.timers + 1)
        self.clock.advance(30)
        busy, busy_transport = made[0]
        offset = self.append(self.lines[0])
        busy.dataReceived(encode_poke(offset, self.lines[0]))
        self.clock.advance(30)
        self.assertEqual([t.disconnecting for _, t in made], [False] + [True] * 4)
        for proto, _transport in made[1:]:
            proto.connectionLost(None)
        self.assertEqual(factory.connections, 1)
        self.clock.advance(30)
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(None)
        self.assertEqual(factory.connections, 0)
        self.assertEqual(sum("closed: idle" in line for line in self.logged), 5)

    def test_broken_poke_releases_its_slot(self) -> None:
        """
        A connection closed for a poke over the limit no longer counts against
        C{max_connections} once gone.
        """
        factory, [(proto, transport)] = self.connections(1, max_line=64)
        proto.dataReceived(encode_poke(0, b"x" * 100))
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(factory.connections, 0)


class LeanAcceptorTests(ScannerTestBase):
    """
    The lean acceptor of a UNIX poke socket, on real sockets driven by hand (no
    reactor runs: L{MemoryReactorClock} records the readers and timers).
    """

    def setUp(self) -> None:
        super().setUp()
        import shutil
        import socket
        import tempfile

        from twisted.internet.testing import MemoryReactorClock

        sockdir = tempfile.mkdtemp(prefix="lbt-poke-")
        self.addCleanup(shutil.rmtree, sockdir, True)
        self.path = os.path.join(sockdir, "il.sock")
        self.listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(self.listening.close)
        self.listening.bind(self.path)
        self.listening.listen(64)
        self.listening.setblocking(False)
        self.reactor = MemoryReactorClock()
        self.clients: list[Any] = []

    def acceptor(self, **kwargs: Any) -> Any:
        from lbtwist.service.ilspool import _PokeAcceptor

        self.sc = self.scanner(poll_interval=1000.0)
        kwargs.setdefault("peer_credentials", lambda t: (1, os.getuid(), os.getgid()))
        factory = PokeFactory(self.sc, clock=self.reactor, idle_timeout=60.0, **kwargs)
        acceptor = _PokeAcceptor(self.listening, factory, self.reactor)
        acceptor.start()
        self.addCleanup(acceptor.stop)
        return acceptor

    def client(self, data: bytes, close: bool = True) -> Any:
        import socket

        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(self.path)
        c.sendall(data)
        if close:
            c.close()
        else:
            self.addCleanup(c.close)
        return c

    def test_pokes_taken_at_accept(self) -> None:
        """
        Pokes sent and closed before the accept are taken in one read of the
        listening socket: no transport, reader or timer is left per connection,
        and the scanner reads the file.
        """
        acceptor = self.acceptor()
        for line in self.lines[:3]:
            self.client(encode_poke(self.append(line), line))
        acceptor.doRead()
        self.clock.advance(0)
        self.assertEqual(self.sc.stats.pokes, 3)
        self.assertEqual(len(self.stored_lines()), 3)
        self.assertEqual(set(self.reactor.readers), {acceptor})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(acceptor.factory.connections, 0)

    def test_incomplete_poke_watched_then_swept(self) -> None:
        """
        A connection whose poke is not complete at the accept is watched by the
        reactor; once its poke is complete it counts and the connection is closed
        at once (its end is not waited for); one silent for C{idle_timeout} is
        closed by the one sweep.
        """
        acceptor = self.acceptor()
        offset = self.append(self.lines[0])
        poke = encode_poke(offset, self.lines[0])
        c = self.client(poke[:20], close=False)
        acceptor.doRead()
        [conn] = acceptor.watched
        self.assertIn(conn, self.reactor.readers)
        self.assertEqual(acceptor.factory.connections, 1)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        c.sendall(poke[20:])
        conn.doRead()
        self.assertEqual(self.sc.stats.pokes, 1)
        self.assertEqual(set(self.reactor.readers), {acceptor})
        self.assertEqual(acceptor.factory.connections, 0)
        self.assertEqual(c.recv(10), b"")
        silent = self.client(poke[:20], close=False)
        acceptor.doRead()
        self.assertEqual(acceptor.factory.connections, 1)
        self.reactor.advance(60)
        self.assertEqual(set(self.reactor.readers), {acceptor})
        self.assertEqual(acceptor.factory.connections, 0)
        self.assertEqual(silent.recv(10), b"")
        self.assertEqual(sum("closed: idle" in line for line in self.logged), 1)

    def test_cut_poke_at_accept(self) -> None:
        """
        The lean acceptor takes a poke cut short by the producer's close (no LF)
        as a poke of its file: the file is read, the part checked.
        """
        acceptor = self.acceptor()
        line = self.lines[0].replace(b"Novakova", "Nov\u00e1kov\u00e1".encode())
        offset = self.append(line)
        self.client(encode_poke(offset, line)[:-3])
        acceptor.doRead()
        self.clock.advance(0)
        self.assertEqual((self.sc.stats.pokes, self.sc.stats.poke_mismatches), (1, 0))
        self.assertEqual(len(self.stored_lines()), 1)
        self.assertEqual(acceptor.factory.connections, 0)

    def test_complete_poke_closed_unwatched(self) -> None:
        """
        A poke complete at the accept from a producer that has not closed yet
        (ContextIL closes after its send) is closed at once: no reader, no timer.
        """
        acceptor = self.acceptor()
        offset = self.append(self.lines[0])
        c = self.client(encode_poke(offset, self.lines[0]), close=False)
        acceptor.doRead()
        self.assertEqual(self.sc.stats.pokes, 1)
        self.assertEqual(set(self.reactor.readers), {acceptor})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(acceptor.factory.connections, 0)
        self.assertEqual(c.recv(10), b"")

    def test_refused_peer(self) -> None:
        """
        A peer that is not an allowed producer is closed unread (logged).
        """
        acceptor = self.acceptor(peer_credentials=lambda t: (1, 4242, 4242), allowed_uids=[0])
        self.client(encode_poke(self.append(self.lines[0]), self.lines[0]))
        acceptor.doRead()
        self.assertEqual(self.sc.stats.pokes, 0)
        self.assertEqual(acceptor.factory.connections, 0)
        self.assertTrue(any("refused" in line for line in self.logged), self.logged)

    def test_max_connections(self) -> None:
        """
        Connections still open count against C{max_connections}; one more is
        refused (logged).
        """
        acceptor = self.acceptor(max_connections=1)
        self.client(b"\0" * 4, close=False)
        self.client(encode_poke(self.append(self.lines[0]), self.lines[0]))
        acceptor.doRead()
        self.assertEqual(self.sc.stats.pokes, 0)
        self.assertEqual(len(acceptor.watched), 1)
        self.assertTrue(any("1 connections open" in line for line in self.logged), self.logged)

    def test_too_long(self) -> None:
        """
        A poke over the limit closes its connection (logged); its slot is free.
        """
        acceptor = self.acceptor(max_line=64)
        self.client(encode_poke(0, b"x" * 100))
        acceptor.doRead()
        self.assertEqual((self.sc.stats.pokes, acceptor.factory.connections), (0, 0))
        self.assertTrue(any("longer than 64" in line for line in self.logged), self.logged)

    def test_endpoint_takes_over_unix_ports(self) -> None:
        """
        L{PokeEndpoint} gives a UNIX port's connections to the lean acceptor, and
        stopping it stops both; other ports are left as they are.
        """
        from twisted.internet.defer import succeed

        from lbtwist.service.ilspool import PokeEndpoint

        scanner = self.scanner(poll_interval=1000.0)
        factory = PokeFactory(scanner, clock=self.reactor)
        calls: list[str] = []

        class Port:
            def __init__(self, sock: Any) -> None:
                self.socket = sock

            def stopReading(self) -> None:
                calls.append("stopReading")

            def stopListening(self) -> None:
                calls.append("stopListening")

        class Endpoint:
            def __init__(self, port: Any) -> None:
                self.port = port

            def listen(self, factory: Any) -> Any:
                return succeed(self.port)

        port = self.successResultOf(
            PokeEndpoint(Endpoint(Port(self.listening)), self.reactor).listen(factory)
        )
        self.assertEqual(calls, ["stopReading"])
        [acceptor] = self.reactor.readers
        self.assertEqual(acceptor.fileno(), self.listening.fileno())
        port.stopListening()
        self.assertEqual(calls, ["stopReading", "stopListening"])
        self.assertEqual(set(self.reactor.readers), set())
        other = Port(None)
        self.assertIs(
            self.successResultOf(PokeEndpoint(Endpoint(other), self.reactor).listen(factory)),
            other,
        )
