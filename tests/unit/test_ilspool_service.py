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
