# -*- test-case-name: tests.unit.test_framing -*-
"""
Tests for L{lbtwist.service.framing}.
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core import ilproto
from lbtwist.core.errors import BrokenULM, LBError, TooBig
from lbtwist.service.framing import (
    AnswerQueue,
    ILFraming,
    LineFraming,
    LogdFraming,
    detect_framing,
    make_framing,
)


class DetectionTests(SynchronousTestCase):
    """
    L{detect_framing} recognizes IL by L&B's exact header shape.
    """

    def test_il_header(self) -> None:
        self.assertEqual(detect_framing(b"%16d\n" % 1), "IL")
        self.assertEqual(detect_framing(b"%16d\n" % 123456 + b"body"), "IL")
        self.assertEqual(detect_framing(b"0000000000000003\n"), "IL")

    def test_prefix_needs_more(self) -> None:
        header = b"%16d\n" % 1234
        for n in range(1, len(header)):
            self.assertIsNone(detect_framing(header[:n]), header[:n])

    def test_lines_that_start_like_a_header(self) -> None:
        for head in (
            b" DATE=2024",
            b"\tDATE=",
            b"  12 DATE=",
            b"1DATE",
            b" " * 16 + b"\n",
            b"%15d\n" % 5,
            b"%17d\n" % 5,
            b"%16dX" % 5,
            b"  \n",
        ):
            self.assertEqual(detect_framing(head), "line", head)

    def test_logd(self) -> None:
        self.assertEqual(detect_framing(b"DGLOG\x05"), "logd")
        self.assertIsNone(detect_framing(b"DGL"))
        self.assertEqual(detect_framing(b"DG.JOBID"), "line")

    @given(st.binary(max_size=40))
    def test_any_ulm_like_line_is_a_line(self, data: bytes) -> None:
        line = b" DATE=" + data
        self.assertEqual(detect_framing(line[:17]), "line")

    @given(st.integers(min_value=1, max_value=10**15))
    def test_every_l_and_b_header_is_il(self, length: int) -> None:
        self.assertEqual(detect_framing(b"%16d\n" % length), "IL")


class LineFramingTests(SynchronousTestCase):
    """
    The line framing's decoder and answers.
    """

    def test_lines(self) -> None:
        f = LineFraming(10)
        self.assertEqual(f.feed(b"a=1\r\n\n  \nb=2"), ([b"a=1"], None))
        self.assertEqual(f.feed(b"\n"), ([b"b=2"], None))

    def test_oversize_dropped_to_its_lf(self) -> None:
        f = LineFraming(10)
        items, fatal = f.feed(b"x" * 11)
        self.assertEqual((items, fatal), ([], None))
        items, _ = f.feed(b"y" * 100000)
        self.assertEqual(items, [])
        items, _ = f.feed(b"y\na=1\n")
        self.assertEqual(len(items), 2)
        self.assertIsInstance(items[0], TooBig)
        self.assertEqual(items[1], b"a=1")

    def test_exact_size_with_cr(self) -> None:
        f = LineFraming(10)
        self.assertEqual(f.feed(b"x" * 10 + b"\r"), ([], None))
        self.assertEqual(f.feed(b"\n"), ([b"x" * 10], None))

    def test_answers(self) -> None:
        f = LineFraming(10)
        self.assertEqual(f.encode(0, "OK"), b"OK\n")
        self.assertEqual(f.encode(0, "OK duplicate"), b"OK duplicate\n")
        self.assertEqual(f.encode(7, "too\nbig "), b"ERR 7 too big\n")

    @settings(max_examples=200)
    @given(st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b)))
    def test_round_trip_any_cuts(self, lines: list[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        f = LineFraming(20)
        out: list[bytes | LBError] = []
        for i in range(0, len(data), 7):
            items, fatal = f.feed(data[i : i + 7])
            self.assertIsNone(fatal)
            out += items
        expected: list[object] = []
        for line in lines:
            body = line[:-1] if line.endswith(b"\r") else line
            if len(body) > 20:
                expected.append(TooBig)
            elif body.strip():
                expected.append(body)
        self.assertEqual([type(i) if isinstance(i, LBError) else i for i in out], expected)


class ILFramingTests(SynchronousTestCase):
    """
    The IL framing's decoder and answers.
    """

    def test_events_and_errors_in_order(self) -> None:
        f = ILFraming(20)
        data = (
            ilproto.encode_il_msg(b"a=1\n")
            + b"%16d\n" % 5
            + b"hello"
            + ilproto.encode_il_msg(b"x" * 200)
            + ilproto.encode_il_msg(b"b=2\n")
        )
        items, fatal = f.feed(data)
        self.assertIsNone(fatal)
        self.assertEqual(items[0], b"a=1\n")
        self.assertIsInstance(items[1], BrokenULM)
        self.assertIsInstance(items[2], TooBig)
        self.assertEqual(items[3], b"b=2\n")

    def test_oversize_across_chunks(self) -> None:
        f = ILFraming(20)
        data = ilproto.encode_il_msg(b"x" * 1000) + ilproto.encode_il_msg(b"b=2\n")
        out: list[bytes | LBError] = []
        for i in range(0, len(data), 33):
            items, fatal = f.feed(data[i : i + 33])
            self.assertIsNone(fatal)
            out += items
        self.assertEqual(len(out), 2)
        self.assertIsInstance(out[0], TooBig)
        self.assertEqual(out[1], b"b=2\n")

    def test_garbage_breaks(self) -> None:
        f = ILFraming(20)
        items, fatal = f.feed(ilproto.encode_il_msg(b"a=1\n") + b"garbage garbage garbage")
        self.assertEqual(items, [b"a=1\n"])
        self.assertIsInstance(fatal, BrokenULM)

    def test_answers(self) -> None:
        f = ILFraming(20)
        self.assertEqual(f.encode(0, "OK"), ilproto.encode_il_reply(0, 0, "OK"))
        self.assertEqual(
            f.encode(errno.E2BIG, "big"), ilproto.encode_il_reply(ilproto.LB_PROTO, 7, "big")
        )


class LogdFramingTests(SynchronousTestCase):
    """
    The logd framing's decoder and answers.
    """

    def test_oversize_skipped(self) -> None:
        f = LogdFraming(20)
        data = ilproto.encode_logd(b"x" * 100) + ilproto.encode_logd(b"a=1")
        items, fatal = f.feed(data[:50])
        self.assertEqual((items, fatal), ([], None))
        items, fatal = f.feed(data[50:])
        self.assertIsNone(fatal)
        self.assertIsInstance(items[0], TooBig)
        self.assertEqual(items[1], b"a=1")
        self.assertEqual(f.encode(7, "big"), b"\x07\0\0\0")

    def test_make_framing(self) -> None:
        self.assertIsInstance(make_framing("logd", 5), LogdFraming)
        self.assertIsInstance(make_framing("IL", 5), ILFraming)
        self.assertIsInstance(make_framing("line", 5), LineFraming)


class AnswerQueueTests(SynchronousTestCase):
    """
    Ordered answers and the back-pressure rule.
    """

    def setUp(self) -> None:
        self.transport = StringTransport()
        self.answers = AnswerQueue(self.transport, max_inflight=4)
        self.answers.framing = LineFraming(100)

    def test_in_order(self) -> None:
        first = self.answers.pending()
        self.answers.answer(22, "bad")
        self.answers.flush()
        self.assertEqual(self.transport.value(), b"")
        first.set(0, "OK")
        self.assertEqual(len(self.answers.flush()), 2)
        self.assertEqual(self.transport.value(), b"OK\nERR 22 bad\n")

    def test_pause_past_bound_resume_at_half(self) -> None:
        slots = [self.answers.pending() for _ in range(4)]
        self.answers.received()
        self.assertEqual(self.transport.producerState, "producing")
        slots.append(self.answers.pending())
        self.answers.received()
        self.assertEqual(self.transport.producerState, "paused")
        for slot in slots[:2]:
            slot.set(0, "OK")
        self.answers.flush()
        self.assertEqual(self.transport.producerState, "paused")
        slots[2].set(0, "OK")
        self.answers.flush()
        self.assertEqual(self.transport.producerState, "producing")

    def test_close_after_answer(self) -> None:
        self.answers.answer(1401, "broken", close=True)
        self.answers.answer(0, "OK")
        self.answers.flush()
        self.assertEqual(self.transport.value(), b"ERR 1401 broken\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.answers), 0)

    def test_lost_writes_nothing(self) -> None:
        slot = self.answers.pending()
        self.answers.lost()
        slot.set(0, "OK")
        self.answers.flush()
        self.assertEqual(self.transport.value(), b"")


class _Descriptor(FileDescriptor):
    """
    A socket transport whose socket takes C{room} bytes per write (all if C{None}).
    """

    def __init__(self, reactor: MemoryReactor, room: int | None = None) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.room = room
        self.sent: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:  # type: ignore[override]
        taken = bytes(data) if self.room is None else bytes(data[: self.room])
        self.sent.append(taken)
        return len(taken)

    def fileno(self) -> int:
        return -1


class WriteNowTests(SynchronousTestCase):
    """
    Answers go to the socket in the reactor turn that produced them.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactor()

    def queue(self, transport: _Descriptor) -> AnswerQueue:
        answers = AnswerQueue(transport, max_inflight=4)
        answers.framing = LineFraming(100)
        return answers

    def test_sent_at_once(self) -> None:
        """
        Flushed answers are sent before the reactor polls again; nothing is left
        for it to write.
        """
        transport = _Descriptor(self.reactor)
        answers = self.queue(transport)
        answers.pending().set(0, "OK")
        answers.answer(22, "bad")
        answers.flush()
        self.assertEqual(transport.sent, [b"OK\nERR 22 bad\n"])
        self.assertNotIn(transport, self.reactor.getWriters())
        # A closing answer is the reactor's to write (it then closes).
        answers.answer(1401, "broken", close=True)
        answers.flush()
        self.assertEqual(len(transport.sent), 1)
        self.assertTrue(transport.disconnecting)
        self.assertIn(transport, self.reactor.getWriters())

    def test_rest_left_to_reactor(self) -> None:
        """
        What the socket does not take stays buffered, the descriptor registered
        for writing.
        """
        transport = _Descriptor(self.reactor, room=2)
        answers = self.queue(transport)
        answers.answer(0, "OK")
        answers.answer(0, "OK")
        answers.flush()
        self.assertEqual(transport.sent, [b"OK"])
        self.assertIn(transport, self.reactor.getWriters())
        transport.room = None
        transport.doWrite()
        self.assertEqual(b"".join(transport.sent), b"OK\nOK\n")
