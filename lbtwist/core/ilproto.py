# -*- test-case-name: tests.unit.test_ilproto -*-
"""
Wire framings of the gLite L&B: the interlogger (IL) framing and the logd framing.

IL framing (relay, L&B store port, proxy store socket): every message is a
17-byte header, the body length formatted C{%16d} followed by LF, then the body.
Strings in a body are C{<decimal length> <bytes>\\n}, integers C{<decimal>\\n}.
A message body is the string C{michal} (the protocol's magic word) followed by
the event line as a string; a reply body is the major code, the minor code and
the error text as a string.

logd framing (the local logger's socket): C{DGLOG}, the length of the line
including its terminating NUL as a 4-byte little-endian integer, the line and a
NUL; the answer is a 4-byte little-endian integer, 0 for stored, otherwise the
L&B or errno code.

Stdlib only: the decoders are incremental (feed bytes, get complete messages)
and strict; anything malformed raises L{ProtocolError}. Servers read with
C{feed_skipping}, which reads an oversize message to its end and reports it in
its place instead of breaking the stream (L{lbtwist.service.framing} builds the
server-side framings on these).
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

HEADER_LENGTH = 17
IL_MAGIC = b"michal"
DGLOG_MAGIC = b"DGLOG"
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

# Reply majors (glite/lb/il_msg.h).
LB_OK = 0
LB_NOMEM = 200
LB_PROTO = 400
LB_AUTH = 500
LB_PERM = 600
LB_DBERR = 700
LB_SYS = 800
LB_TIME = 900

# L&B's own error codes start above this (EDG_WLL_ERROR_BASE).
_LB_ERROR_BASE = 1400

# L&B's header: C{%16d} and LF, i.e. spaces, then at least one digit, 17 bytes in all.
_HEADER_RE = re.compile(rb" *[0-9]+\n\Z")
_HEADER_PREFIX_RE = re.compile(rb" *[0-9]*\Z")
_INT_RE = re.compile(rb"-?[0-9]{1,18}")
_LOGD_SIZE = struct.Struct("<i")

_T = TypeVar("_T")


class ProtocolError(Exception):
    """
    Malformed framing or message body.

    @ivar reason: what is wrong, for logs and error answers.
    @ivar decoded: complete messages decoded in the same L{feed} call before
        the error (to be processed before the connection is given up).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decoded: list[object] = []


class MessageTooBig(ProtocolError):
    """
    A message announces (or reaches) more bytes than the configured maximum.
    """


@attrs.frozen
class ILReply:
    """
    A decoded IL reply.
    """

    major: int
    minor: int
    text: str


# -- IL strings and integers ------------------------------------------------


def _put_string(data: bytes) -> bytes:
    return b"%d %s\n" % (len(data), data)


def _get_int(body: bytes, pos: int, end: bytes) -> tuple[int, int]:
    """
    Read a decimal integer at C{pos} terminated by C{end}; return it and the
    position after the terminator.
    """
    m = _INT_RE.match(body, pos)
    if m is None:
        raise ProtocolError(f"expected an integer at byte {pos}")
    stop = m.end()
    if body[stop : stop + 1] != end:
        raise ProtocolError(f"expected {end!r} after integer at byte {stop}")
    return int(m.group()), stop + 1


def _get_string(body: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _get_int(body, pos, b" ")
    if length < 0:
        raise ProtocolError(f"negative string length {length}")
    stop = pos + length
    if stop >= len(body):
        raise ProtocolError(f"string of {length} bytes runs past the message end")
    if body[stop : stop + 1] != b"\n":
        raise ProtocolError(f"string of {length} bytes not followed by LF")
    return body[pos:stop], stop + 1


def _frame(body: bytes) -> bytes:
    return b"%16d\n" % len(body) + body


def is_il_header_prefix(head: bytes) -> bool:
    """
    Whether C{head} (at most L{HEADER_LENGTH} bytes) can begin an IL header.

    The header is the body length right-aligned in 16 columns (spaces, then
    digits), then LF: nothing else may come before the LF, which must be the
    17th byte.
    """
    if len(head) < HEADER_LENGTH:
        return _HEADER_PREFIX_RE.match(head) is not None
    return _HEADER_RE.match(head, 0, HEADER_LENGTH) is not None


def il_header_length(head: bytes) -> int:
    """
    The body length announced by a complete 17-byte IL header.

    @raise ProtocolError: C{head} is not spaces, digits and LF in L&B's shape,
        or announces no body.
    """
    if len(head) != HEADER_LENGTH or _HEADER_RE.match(head) is None:
        raise ProtocolError(f"bad IL header {head!r}")
    length = int(head)
    if length <= 0:
        raise ProtocolError(f"bad IL message length {length}")
    return length


# -- IL encoders and decoders -------------------------------------------------


def encode_il_msg(event: bytes) -> bytes:
    """
    Frame one event line (kept as given, normally with its trailing LF).
    """
    return _frame(_put_string(IL_MAGIC) + _put_string(event))


def decode_il_msg(body: bytes) -> bytes:
    """
    Decode a message body (without the header) into the event line.

    @raise ProtocolError: wrong magic word, bad string, or trailing bytes.
    """
    magic, pos = _get_string(body, 0)
    if magic != IL_MAGIC:
        raise ProtocolError(f"bad protocol magic word {magic[:32]!r}")
    event, pos = _get_string(body, pos)
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} trailing bytes after the event")
    return event


def encode_il_reply(major: int, minor: int, text: str | bytes) -> bytes:
    """
    Frame a reply: C{<major>\\n<minor>\\n<len> <text>\\n}.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    return _frame(b"%d\n%d\n" % (major, minor) + _put_string(data))


def decode_il_reply(body: bytes) -> ILReply:
    """
    Decode a reply body (without the header).

    @raise ProtocolError: on any malformation.
    """
    major, pos = _get_int(body, 0, b"\n")
    minor, pos = _get_int(body, pos, b"\n")
    text, pos = _get_string(body, pos)
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} trailing bytes after the reply")
    return ILReply(major, minor, text.decode("utf-8", "replace"))


def il_major(code: int) -> int:
    """
    The reply major for an L&B/errno code, as L&B's server chooses it.

    Like L&B: 0 is OK, ENOMEM NOMEM, EPERM PERM, L&B's own (format) codes PROTO,
    everything else DBERR with the code as minor. Unlike L&B, E2BIG, EINVAL,
    EEXIST (a registration the job refuses) and EIDRM (an event of a purged job)
    are PROTO too: they are permanent, and a DBERR would be resent forever.
    """
    if code == 0:
        return LB_OK
    if code == errno.ENOMEM:
        return LB_NOMEM
    if code in (errno.EPERM, errno.EACCES):
        return LB_PERM
    if code > _LB_ERROR_BASE or code in (errno.E2BIG, errno.EINVAL, errno.EEXIST, errno.EIDRM):
        return LB_PROTO
    return LB_DBERR


def il_reply_for(code: int, text: str) -> bytes:
    """
    Encode the reply for an L&B/errno code (0 = stored) with C{text}.
    """
    return encode_il_reply(il_major(code), code, text)


class _FrameDecoder(Generic[_T]):
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        # Bytes of an oversize message still to be read and dropped, and its error.
        self._skip = 0
        self._skipped: MessageTooBig | None = None
        self._skipping = False

    @property
    def buffered(self) -> int:
        """
        Bytes received and not yet part of a complete message.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> list[_T]:
        """
        Add received bytes; return the messages they complete, in order.

        @raise ProtocolError: the stream is malformed (L{MessageTooBig} for an
            oversize message); C{decoded} holds the messages completed before
            the error. The decoder stays broken.
        """
        return self._feed(data, False)  # type: ignore[return-value]

    def feed_skipping(self, data: bytes) -> list[_T | MessageTooBig]:
        """
        Like L{feed}, but an oversize message does not break the stream: its
        bytes are read and dropped, and once its last byte is in, a
        L{MessageTooBig} takes its place in the output. The framing stays in
        sync, so the sender can be answered after it has written the message.

        @raise ProtocolError: the stream is malformed otherwise.
        """
        return self._feed(data, True)

    def _feed(self, data: bytes, skipping: bool) -> list[_T | MessageTooBig]:
        if self._error is not None:
            raise ProtocolError(f"stream already broken: {self._error.reason}")
        out: list[_T | MessageTooBig] = []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            if self._skip:
                return out
            data = data[n:]
            assert self._skipped is not None
            out.append(self._skipped)
            self._skipped = None
        self._buffer += data
        self._skipping = skipping
        try:
            while True:
                msg = self._next()
                if msg is None:
                    return out
                out.append(msg)
        except ProtocolError as e:
            self._error = e
            self._buffer.clear()
            e.decoded = list(out)
            raise

    def _oversize(self, total: int, error: MessageTooBig) -> MessageTooBig | None:
        """
        A message of C{total} bytes (header included) is too big: raise
        C{error}, or (when skipping) drop the message's bytes and return
        C{error} once they are all in (L{None} until then).
        """
        if not self._skipping:
            raise error
        buf = self._buffer
        if len(buf) >= total:
            del buf[:total]
            return error
        self._skip = total - len(buf)
        self._skipped = error
        buf.clear()
        return None

    def _next(self) -> _T | MessageTooBig | None:
        raise NotImplementedError()


class ILFrameDecoder(_FrameDecoder[bytes]):
    """
    Incremental IL frame decoder yielding message bodies.

    @ivar max_size: the largest body accepted.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(max_size)

    def _next(self) -> bytes | MessageTooBig | None:
        buf = self._buffer
        # Check what we have of the header early so garbage fails fast.
        head = bytes(buf[:HEADER_LENGTH])
        if len(head) < HEADER_LENGTH:
            if not is_il_header_prefix(head):
                raise ProtocolError(f"bad IL header {head!r}")
            return None
        length = il_header_length(head)
        if length > self.max_size:
            return self._oversize(
                HEADER_LENGTH + length,
                MessageTooBig(f"IL message of {length} bytes exceeds {self.max_size}"),
            )
        if len(buf) < HEADER_LENGTH + length:
            return None
        body = bytes(buf[HEADER_LENGTH : HEADER_LENGTH + length])
        del buf[: HEADER_LENGTH + length]
        return body


class _DecodingILDecoder(_FrameDecoder[_T]):
    _decode: Callable[[bytes], _T]

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(max_size)
        self._frames = ILFrameDecoder(max_size)

    def feed(self, data: bytes) -> list[_T]:
        if self._error is not None:
            raise ProtocolError(f"stream already broken: {self._error.reason}")
        out: list[_T] = []
        try:
            try:
                bodies = self._frames.feed(data)
            except ProtocolError as e:
                for body in e.decoded:
                    assert isinstance(body, bytes)
                    out.append(type(self)._decode(body))
                raise
            for body in bodies:
                out.append(type(self)._decode(body))
        except ProtocolError as e:
            self._error = e
            e.decoded = list(out)
            raise
        return out

    @property
    def buffered(self) -> int:
        return self._frames.buffered


class ILMessageDecoder(_DecodingILDecoder[bytes]):
    """
    Incremental decoder of IL messages yielding event lines (strict).
    """

    _decode = staticmethod(decode_il_msg)


class ILReplyDecoder(_DecodingILDecoder[ILReply]):
    """
    Incremental decoder of IL replies (strict).
    """

    _decode = staticmethod(decode_il_reply)


# -- logd framing ---------------------------------------------------------------


def encode_logd(line: bytes) -> bytes:
    """
    Frame one line for the logd socket: C{DGLOG}, size, line, NUL.
    """
    return DGLOG_MAGIC + _LOGD_SIZE.pack(len(line) + 1) + line + b"\0"


def encode_logd_answer(code: int) -> bytes:
    """
    The 4-byte little-endian answer (0 = stored).
    """
    return _LOGD_SIZE.pack(code)


def decode_logd_answer(data: bytes) -> int:
    """
    Decode a 4-byte answer.

    @raise ProtocolError: if C{data} is not exactly 4 bytes.
    """
    if len(data) != _LOGD_SIZE.size:
        raise ProtocolError(f"logd answer must be 4 bytes, got {len(data)}")
    return int(_LOGD_SIZE.unpack(data)[0])


class LogdDecoder(_FrameDecoder[bytes]):
    """
    Incremental logd decoder yielding lines without their trailing NUL.

    @ivar max_size: the largest line accepted (NUL excluded).
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(max_size)

    def _next(self) -> bytes | MessageTooBig | None:
        buf = self._buffer
        magic = bytes(buf[: len(DGLOG_MAGIC)])
        if not DGLOG_MAGIC.startswith(magic):
            raise ProtocolError(f"bad logd header {magic!r}")
        start = len(DGLOG_MAGIC) + _LOGD_SIZE.size
        if len(buf) < start:
            return None
        (size,) = _LOGD_SIZE.unpack(buf[len(DGLOG_MAGIC) : start])
        if size <= 0:
            raise ProtocolError(f"bad logd message size {size}")
        if size - 1 > self.max_size:
            return self._oversize(
                start + size,
                MessageTooBig(f"logd message of {size} bytes exceeds {self.max_size}"),
            )
        if len(buf) < start + size:
            return None
        if buf[start + size - 1] != 0:
            raise ProtocolError("logd message not terminated by NUL")
        line = bytes(buf[start : start + size - 1])
        del buf[: start + size]
        return line
