# -*- test-case-name: tests.unit.test_ilspool -*-
"""
Tests of L{lbtwist.core.ilspool}: the poke codec and the bookkeeping of one
spool file (pure).
"""

from __future__ import annotations

import struct
import sys

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import LBError, TooBig
from lbtwist.core.ilspool import (
    FileCursor,
    PokeDecoder,
    encode_poke,
    is_spool_name,
    parse_ctl,
    spool_file_of,
)

LINE = b'DG.LLLID="0" DG.USER="u" DG.JOBID="https://ce.example.org:8443/CREAM123" DG.EVNT="x"\n'


class PokeCodecTests(SynchronousTestCase):
    """
    The notification socket's bytes: a native 8-byte offset, then the line.
    """

    def test_encode_host_order(self) -> None:
        """
        The offset goes first, 8 bytes in the machine's byte order (ContextIL's JNI
        side sends a C long as it is in memory), then the line with its LF.
        """
        data = encode_poke(0x0102, b"abc")
        order = "<" if sys.byteorder == "little" else ">"
        self.assertEqual(data, struct.pack(order + "q", 0x0102) + b"abc\n")

    def test_decode_in_pieces(self) -> None:
        """
        Pokes split anywhere, and several in one connection, come out whole.
        """
        data = encode_poke(0, LINE) + encode_poke(len(LINE), b"second line")
        for cut in range(len(data) + 1):
            decoder = PokeDecoder(1024)
            got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
            self.assertEqual(got, [(0, LINE), (len(LINE), b"second line\n")], cut)
            self.assertEqual(decoder.pending, 0)

    def test_incomplete_pending(self) -> None:
        """
        A poke without its LF is held, counted in C{pending}.
        """
        decoder = PokeDecoder(1024)
        self.assertEqual(decoder.feed(encode_poke(5, b"abc")[:-1]), [])
        self.assertEqual(decoder.pending, 11)

    def test_finish_cut_poke(self) -> None:
        """
        At the connection's end, an incomplete poke with its offset and some
        text is handed out as (offset, the text that came); a stub shorter
        than the offset, or a negative offset, is not; the buffer is emptied.
        """
        decoder = PokeDecoder(1024)
        decoder.feed(encode_poke(7, b"abcdef")[:-3])
        self.assertEqual(decoder.finish(), (7, b"abcd"))
        self.assertEqual((decoder.pending, decoder.finish()), (0, None))
        decoder.feed(encode_poke(7, b"abc")[:8])
        self.assertIsNone(decoder.finish())
        decoder.feed(encode_poke(-1, b"abc")[:-1])
        self.assertIsNone(decoder.finish())

    def test_too_long(self) -> None:
        """
        A poke line longer than the limit breaks the connection (E2BIG), whether
        or not its LF came.
        """
        self.assertRaises(TooBig, PokeDecoder(10).feed, encode_poke(0, b"x" * 11))
        self.assertRaises(TooBig, PokeDecoder(10).feed, encode_poke(0, b"x" * 20)[:-1])
        self.assertEqual(PokeDecoder(10).feed(encode_poke(0, b"x" * 9)), [(0, b"x" * 9 + b"\n")])

    def test_negative_offset(self) -> None:
        """
        A negative offset is no poke.
        """
        self.assertRaises(LBError, PokeDecoder(100).feed, encode_poke(-1, b"x"))

    def test_spool_file_of(self) -> None:
        """
        The file a line goes to is the prefix, a dot and the job id's unique part;
        lines without a usable job id name none (no path separators).
        """
        self.assertEqual(spool_file_of("/spool/dglogd.log", LINE), "/spool/dglogd.log.CREAM123")
        self.assertIsNone(spool_file_of("/p", b'DG.USER="u"'))
        self.assertIsNone(spool_file_of("/p", b'DG.JOBID="https://h:1/../etc"'))
        self.assertIsNone(spool_file_of("/p", b'DG.JOBID="https://h:1/a/b"'))
        self.assertIsNone(spool_file_of("/p", b'DG.JOBID="https://h:1/.."'))

    def test_names(self) -> None:
        """
        Spool files are C{<base>.<something>}, sidecars excluded.
        """
        self.assertTrue(is_spool_name("dglogd.log", "dglogd.log.CREAM1"))
        self.assertFalse(is_spool_name("dglogd.log", "dglogd.log.CREAM1.ctl"))
        self.assertFalse(is_spool_name("dglogd.log", "dglogd.log."))
        self.assertFalse(is_spool_name("dglogd.log", "dglogd.logX"))
        self.assertFalse(is_spool_name("dglogd.log", "other"))

    def test_parse_ctl(self) -> None:
        """
        The interlogger's sidecar: job id, logging server bytes, bookkeeping
        server bytes; the last one is the committed offset.
        """
        self.assertEqual(parse_ctl("https://h:9000/x\n10\n250\n"), 250)
        self.assertIsNone(parse_ctl("garbage"))
        self.assertIsNone(parse_ctl("j\n1\nx\n"))
        self.assertIsNone(parse_ctl("j\n1\n-5\n"))


class FileCursorTests(SynchronousTestCase):
    """
    Offsets: complete lines only, boundary committed only once stored.
    """

    def test_partial_last_line_left(self) -> None:
        """
        A last line without its LF is not taken; the boundary stops before it and
        the next read starts there.
        """
        cursor = FileCursor.at(7, 0)
        taken = cursor.take(b"one\ntwo\nthr", 100)
        self.assertEqual(taken.lines, [(0, b"one"), (4, b"two")])
        self.assertEqual((taken.boundary, cursor.read, cursor.committed), (8, 8, 0))
        taken = cursor.take(b"three\n", 100)
        self.assertEqual(taken.lines, [(8, b"three")])
        self.assertEqual(taken.boundary, 14)

    def test_committed_after_store(self) -> None:
        """
        C{committed} moves only when told the lines are stored, never backwards.
        """
        cursor = FileCursor.at(7, 4)
        cursor.take(b"abc\n", 100)
        self.assertEqual(cursor.committed, 4)
        self.assertFalse(cursor.settled)
        cursor.stored(8)
        self.assertEqual(cursor.committed, 8)
        self.assertTrue(cursor.settled)
        cursor.stored(4)
        self.assertEqual(cursor.committed, 8)

    def test_rewind(self) -> None:
        """
        A failed store reads again from the committed offset.
        """
        cursor = FileCursor.at(7, 0)
        cursor.take(b"a\nb\n", 100)
        cursor.rewind()
        self.assertEqual((cursor.read, cursor.boundary), (0, 0))
        self.assertEqual(cursor.take(b"a\nb\n", 100).lines, [(0, b"a"), (2, b"b")])

    def test_too_long_skipped_to_lf(self) -> None:
        """
        A line over the limit is dropped up to its LF, across reads, without the
        boundary ever pointing inside it; the lines after it are taken.
        """
        cursor = FileCursor.at(1, 0)
        taken = cursor.take(b"ok\n" + b"x" * 20, 10)
        self.assertEqual((taken.lines, taken.too_long, taken.boundary), ([(0, b"ok")], [], 3))
        self.assertEqual(cursor.skip_from, 3)
        taken = cursor.take(b"y" * 5, 10)
        self.assertEqual((taken.lines, taken.too_long, taken.boundary), ([], [], 3))
        taken = cursor.take(b"z\nnext\n", 10)
        self.assertEqual(taken.too_long, [3])
        self.assertEqual(taken.lines, [(30, b"next")])
        self.assertEqual(taken.boundary, 35)
        cursor = FileCursor.at(1, 0)
        taken = cursor.take(b"x" * 11 + b"\nok\n", 10)
        self.assertEqual((taken.lines, taken.too_long), ([(12, b"ok")], [0]))

    def test_restart(self) -> None:
        """
        A replaced or truncated file is read from 0 under its new inode.
        """
        cursor = FileCursor.at(1, 50)
        cursor.restart(2)
        self.assertEqual((cursor.inode, cursor.committed, cursor.read), (2, 0, 0))
