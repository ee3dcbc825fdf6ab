# -*- test-case-name: tests.unit.test_ilproto -*-
"""
Tests for L{lbtwist.core.ilproto}.
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core import ilproto
from lbtwist.core.ilproto import (
    ILFrameDecoder,
    ILMessageDecoder,
    ILReply,
    ILReplyDecoder,
    LogdDecoder,
    MessageTooBig,
    ProtocolError,
)

_SETTINGS = settings(max_examples=200, deadline=None)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


class ILEncodingTests(SynchronousTestCase):
    """
    Byte layout as L&B's C{encode_il_msg}/C{encode_il_reply} write it.
    """

    def test_message_layout(self) -> None:
        self.assertEqual(
            ilproto.encode_il_msg(b"zprava"),
            b"              18\n6 michal\n6 zprava\n",
        )

    def test_message_keeps_event_lf(self) -> None:
        msg = ilproto.encode_il_msg(b"A=1\n")
        self.assertEqual(msg[17:], b"6 michal\n4 A=1\n\n")
        self.assertEqual(msg[:17], b"%16d\n" % 16)

    def test_reply_layout(self) -> None:
        self.assertEqual(
            ilproto.encode_il_reply(10, 20, "chyba"),
            b"              14\n10\n20\n5 chyba\n",
        )

    def test_decode_reply(self) -> None:
        self.assertEqual(ilproto.decode_il_reply(b"10\n20\n5 chyba\n"), ILReply(10, 20, "chyba"))

    def test_decode_msg(self) -> None:
        self.assertEqual(ilproto.decode_il_msg(b"6 michal\n6 zprava\n"), b"zprava")

    def test_bad_magic(self) -> None:
        e = self.assertRaises(ProtocolError, ilproto.decode_il_msg, b"6 michaX\n1 a\n")
        self.assertIn("magic", e.reason)

    def test_bad_bodies(self) -> None:
        for body in [
            b"",
            b"6 michal\n",
            b"6 michal\n9 short\n",
            b"6 michal\n5 a\nb\n\n",
            b"6 michal\n1 a\nextra",
            b"6 michal\n-1 a\n",
            b"6 michal\nx a\n",
            b"6 michal\n1 ab",
            b"6michal\n1 a\n",
        ]:
            self.assertRaises(ProtocolError, ilproto.decode_il_msg, body)
        for body in [b"", b"0\n", b"0\n0\n", b"0\n0\n3 ab\n", b"a\n0\n0 \n", b"0\n0\n0 \nx"]:
            self.assertRaises(ProtocolError, ilproto.decode_il_reply, body)

    def test_huge_integer_is_protocol_error(self) -> None:
        self.assertRaises(ProtocolError, ilproto.decode_il_reply, b"9" * 5000 + b"\n0\n0 \n")

    def test_majors(self) -> None:
        self.assertEqual(ilproto.il_major(0), ilproto.LB_OK)
        self.assertEqual(ilproto.il_major(errno.ENOMEM), ilproto.LB_NOMEM)
        self.assertEqual(ilproto.il_major(errno.EPERM), ilproto.LB_PERM)
        self.assertEqual(ilproto.il_major(1401), ilproto.LB_PROTO)
        self.assertEqual(ilproto.il_major(errno.E2BIG), ilproto.LB_PROTO)
        self.assertEqual(ilproto.il_major(errno.EAGAIN), ilproto.LB_DBERR)
        self.assertEqual(ilproto.il_major(errno.ENOSPC), ilproto.LB_DBERR)
        self.assertEqual(
            ilproto.il_reply_for(errno.EPERM, "no"),
            ilproto.encode_il_reply(600, errno.EPERM, "no"),
        )


class ILDecoderTests(SynchronousTestCase):
    """
    Incremental IL decoders.
    """

    def test_byte_by_byte(self) -> None:
        stream = ilproto.encode_il_msg(b"one\n") + ilproto.encode_il_msg(b"two\n")
        dec = ILMessageDecoder()
        out: list[bytes] = []
        for i in range(len(stream)):
            out += dec.feed(stream[i : i + 1])
        self.assertEqual(out, [b"one\n", b"two\n"])
        self.assertEqual(dec.buffered, 0)

    def test_header_without_lf(self) -> None:
        e = self.assertRaises(ProtocolError, ILFrameDecoder().feed, b"%16dX" % 3)
        self.assertIn("header", e.reason)

    def test_garbage_fails_early(self) -> None:
        self.assertRaises(ProtocolError, ILFrameDecoder().feed, b"  12x")

    def test_zero_length(self) -> None:
        self.assertRaises(ProtocolError, ILFrameDecoder().feed, b"%16d\n" % 0)

    def test_negative_length(self) -> None:
        self.assertRaises(ProtocolError, ILFrameDecoder().feed, b"%16d\n" % -5)

    def test_oversized(self) -> None:
        e = self.assertRaises(MessageTooBig, ILFrameDecoder(max_size=100).feed, b"%16d\n" % 101)
        self.assertIn("101", e.reason)

    def test_leading_zeros_header(self) -> None:
        self.assertEqual(ILFrameDecoder().feed(b"0000000000000003\nabc"), [b"abc"])

    def test_decoded_before_error(self) -> None:
        good = ilproto.encode_il_msg(b"ok\n")
        e = self.assertRaises(ProtocolError, ILMessageDecoder().feed, good + b"garbage!" * 3)
        self.assertEqual(e.decoded, [b"ok\n"])

    def test_bad_body_in_stream(self) -> None:
        frame = b"%16d\n" % 5 + b"hello"
        self.assertRaises(ProtocolError, ILMessageDecoder().feed, frame)

    def test_broken_stays_broken(self) -> None:
        dec = ILFrameDecoder()
        self.assertRaises(ProtocolError, dec.feed, b"x")
        self.assertRaises(ProtocolError, dec.feed, ilproto.encode_il_msg(b"a"))

    def test_reply_decoder(self) -> None:
        data = ilproto.encode_il_reply(0, 0, "OK") + ilproto.encode_il_reply(700, 2, "no job")
        self.assertEqual(
            ILReplyDecoder().feed(data), [ILReply(0, 0, "OK"), ILReply(700, 2, "no job")]
        )

    @_SETTINGS
    @given(st.lists(st.binary(max_size=300), max_size=5), st.lists(st.integers(0, 10**6)))
    def test_message_round_trip(self, events: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(ilproto.encode_il_msg(e) for e in events)
        dec = ILMessageDecoder()
        out: list[bytes] = []
        for chunk in _chunks(stream, cuts):
            out += dec.feed(chunk)
        self.assertEqual(out, events)

    @_SETTINGS
    @given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1), st.text())
    def test_reply_round_trip(self, major: int, minor: int, text: str) -> None:
        data = ilproto.encode_il_reply(major, minor, text)
        self.assertEqual(ILReplyDecoder().feed(data), [ILReply(major, minor, text)])

    @_SETTINGS
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_fuzz(self, chunks: list[bytes]) -> None:
        for dec in (ILFrameDecoder(1000), ILMessageDecoder(1000), ILReplyDecoder(1000)):
            try:
                for chunk in chunks:
                    dec.feed(chunk)
            except ProtocolError as e:
                self.assertIsInstance(e.reason, str)

    @_SETTINGS
    @given(st.binary(max_size=200))
    def test_fuzz_bodies(self, body: bytes) -> None:
        for decode in (ilproto.decode_il_msg, ilproto.decode_il_reply):
            try:
                decode(body)
            except ProtocolError:
                pass


class LogdTests(SynchronousTestCase):
    """
    logd framing as L&B's C{edg_wll_log_write} sends it.
    """

    def test_layout(self) -> None:
        self.assertEqual(ilproto.encode_logd(b"A=1\n"), b"DGLOG\x05\x00\x00\x00A=1\n\x00")

    def test_answer(self) -> None:
        self.assertEqual(ilproto.encode_logd_answer(0), b"\0\0\0\0")
        self.assertEqual(ilproto.encode_logd_answer(1401), b"\x79\x05\0\0")
        self.assertEqual(ilproto.decode_logd_answer(b"\x79\x05\0\0"), 1401)
        self.assertRaises(ProtocolError, ilproto.decode_logd_answer, b"\0\0")

    def test_decoder(self) -> None:
        data = ilproto.encode_logd(b"one\n") + ilproto.encode_logd(b"two")
        dec = LogdDecoder()
        self.assertEqual(dec.feed(data[:7]), [])
        self.assertEqual(dec.feed(data[7:]), [b"one\n", b"two"])

    def test_bad_magic(self) -> None:
        self.assertRaises(ProtocolError, LogdDecoder().feed, b"DGLOX")
        self.assertRaises(ProtocolError, LogdDecoder().feed, b"X")

    def test_no_nul(self) -> None:
        e = self.assertRaises(ProtocolError, LogdDecoder().feed, b"DGLOG\x02\0\0\0ab")
        self.assertIn("NUL", e.reason)

    def test_bad_size(self) -> None:
        self.assertRaises(ProtocolError, LogdDecoder().feed, b"DGLOG\0\0\0\0")
        self.assertRaises(ProtocolError, LogdDecoder().feed, b"DGLOG\xff\xff\xff\xff")

    def test_oversized(self) -> None:
        self.assertRaises(MessageTooBig, LogdDecoder(max_size=10).feed, b"DGLOG\x0c\0\0\0")
        self.assertEqual(LogdDecoder(max_size=10).feed(ilproto.encode_logd(b"x" * 10)), [b"x" * 10])

    @_SETTINGS
    @given(st.lists(st.binary(max_size=300), max_size=5), st.lists(st.integers(0, 10**6)))
    def test_round_trip(self, lines: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(ilproto.encode_logd(line) for line in lines)
        dec = LogdDecoder()
        out: list[bytes] = []
        for chunk in _chunks(stream, cuts):
            out += dec.feed(chunk)
        self.assertEqual(out, lines)

    @_SETTINGS
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_fuzz(self, chunks: list[bytes]) -> None:
        dec = LogdDecoder(1000)
        try:
            for chunk in [b"DGLOG", *chunks]:
                dec.feed(chunk)
        except ProtocolError as e:
            self.assertIsInstance(e.reason, str)


class HeaderTests(SynchronousTestCase):
    """
    The IL header in L&B's exact shape: C{%16d} and LF.
    """

    def test_prefix(self) -> None:
        header = b"%16d\n" % 42
        for n in range(len(header) + 1):
            self.assertTrue(ilproto.is_il_header_prefix(header[:n]), header[:n])
        for bad in (b" x", b"1 ", b"  12 ", b"%16dx" % 3, b" " * 17, b"%15d\n" % 3):
            self.assertFalse(ilproto.is_il_header_prefix(bad), bad)

    def test_length(self) -> None:
        self.assertEqual(ilproto.il_header_length(b"%16d\n" % 42), 42)
        for bad in (b"%16d\n" % 0, b" " * 16 + b"\n", b"%15d\n" % 3, b"%16d\n" % 3 + b"x"):
            self.assertRaises(ProtocolError, ilproto.il_header_length, bad)


class SkippingTests(SynchronousTestCase):
    """
    C{feed_skipping}: an oversize message is read to its end, dropped and
    reported in its place; the stream stays in sync.
    """

    def test_il_skip_in_one_chunk(self) -> None:
        dec = ILFrameDecoder(max_size=10)
        data = b"%16d\n" % 3 + b"abc" + b"%16d\n" % 20 + b"x" * 20 + b"%16d\n" % 2 + b"de"
        out = dec.feed_skipping(data)
        self.assertEqual(out[0], b"abc")
        self.assertIsInstance(out[1], MessageTooBig)
        self.assertEqual(out[2], b"de")
        self.assertEqual(dec.buffered, 0)

    @_SETTINGS
    @given(st.integers(11, 5000), st.lists(st.integers(0, 10**6)))
    def test_il_skip_any_cuts(self, size: int, cuts: list[int]) -> None:
        dec = ILFrameDecoder(max_size=10)
        stream = b"%16d\n" % size + b"x" * size + b"%16d\n" % 2 + b"de"
        out: list[object] = []
        for chunk in _chunks(stream, cuts):
            out += dec.feed_skipping(chunk)
        self.assertEqual(len(out), 2)
        self.assertIsInstance(out[0], MessageTooBig)
        self.assertEqual(out[1], b"de")

    def test_logd_skip(self) -> None:
        dec = LogdDecoder(max_size=5)
        data = ilproto.encode_logd(b"x" * 50) + ilproto.encode_logd(b"ab")
        self.assertEqual(dec.feed_skipping(data[:20]), [])
        out = dec.feed_skipping(data[20:])
        self.assertIsInstance(out[0], MessageTooBig)
        self.assertEqual(out[1], b"ab")

    def test_strict_feed_still_raises(self) -> None:
        self.assertRaises(MessageTooBig, ILFrameDecoder(max_size=10).feed, b"%16d\n" % 11)
