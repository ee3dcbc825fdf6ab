# -*- test-case-name: tests.unit.test_framing -*-
"""
The framings of the intake socket and the store port, on one model.

A connection's framing is detected from its first bytes (L{detect_framing})
and kept: C{DGLOG} is L&B's logd framing, an exact IL header (the body length
right-aligned in 16 columns, then LF) L&B's IL framing, anything else the line
framing (one ULM line per LF). A framing turns received bytes into event
payloads, in order, with an L{LBError} in place of each message that is bad on
its own (it gets an error answer, the stream goes on), and tells when the
stream itself is broken (garbage where a header should be: answered, then
closed).

Oversize messages do not break the stream: their bytes are read and dropped
(an IL or logd message up to its announced length, a line up to its LF) and
only then answered E2BIG, so the producer, still writing, sees no write error
and reads its answer; the connection stays usable.

L{AnswerQueue} holds a connection's answers in order (one L{Slot} per message,
filled when its outcome is known) and applies the one back-pressure rule: past
C{max_inflight} unanswered messages the transport stops reading
(C{pauseProducing}) and reading resumes once at most half of them are left.
The store port and the intake share all of this; the wire primitives are in
L{lbtwist.core.ilproto}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from lbtwist.core import ilproto
from lbtwist.core.errors import BrokenULM, LBError, TooBig

# Room for the IL body around the event line: magic word and length prefixes.
IL_OVERHEAD = 64

#: Answer texts of the line framing for success.
OK = "OK"
OK_DUPLICATE = "OK duplicate"

# What a framing's feed returns: the payloads (or per-message errors) of the
# bytes received, and the error that broke the stream, if any.
Fed = tuple[list["bytes | LBError"], "LBError | None"]


def detect_framing(head: bytes) -> str | None:
    """
    The framing a connection speaks, from its first bytes.

    IL is recognized by L&B's exact header shape (C{%16d} then LF: spaces,
    at least one digit, LF as the 17th byte), so a ULM line that starts with
    a space or a digit stays a line.

    @return: C{"logd"}, C{"IL"} or C{"line"}; C{None} when more bytes are needed.
    """
    if not head:
        return None
    if head[:1] == b"D":
        if head.startswith(ilproto.DGLOG_MAGIC):
            return "logd"
        if ilproto.DGLOG_MAGIC.startswith(head):
            return None
        return "line"
    head = head[: ilproto.HEADER_LENGTH]
    if not ilproto.is_il_header_prefix(head):
        return "line"
    if len(head) < ilproto.HEADER_LENGTH:
        return None
    # Sixteen spaces and LF is a blank line, not a header (L&B wants a length > 0).
    return "IL" if int(head) > 0 else "line"


#: Bytes L{detect_framing} may need to decide.
DETECT_BYTES = ilproto.HEADER_LENGTH


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _too_big(e: ilproto.MessageTooBig) -> LBError:
    return TooBig(e.reason)


class Framing(Protocol):
    """
    A stream decoder and answer encoder of one framing.
    """

    name: str

    def feed(self, data: bytes) -> Fed:
        """
        Add received bytes; return the payloads they complete, in order.
        """

    def encode(self, code: int, text: str) -> bytes:
        """
        The answer for a message: C{code} 0 (with C{text} L{OK} or
        L{OK_DUPLICATE}) or an L&B/errno code and its text.
        """


class LineFraming:
    """
    One ULM line per LF (CR before it dropped, blank lines skipped); answers
    C{OK}, C{OK duplicate} or C{ERR <code> <text>}, one line each.

    A line over C{max_line} bytes is dropped up to its LF and answered E2BIG.
    """

    name = "line"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> Fed:
        out: list[bytes | LBError] = []
        max_line = self.max_line
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return out, None
            self._discarding = False
            out.append(TooBig(f"event line over {max_line} bytes"))
            data = data[end + 1 :]
        buf = self._buffer
        buf += data
        start = 0
        find = buf.find
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            stop = end - 1 if end > start and buf[end - 1] == 13 else end
            if stop - start > max_line:
                out.append(TooBig(f"event line over {max_line} bytes"))
            elif buf[start:stop].strip():
                out.append(bytes(buf[start:stop]))
            start = end + 1
        del buf[:start]
        # A CR may still come before the LF: one byte of slack.
        if len(buf) > max_line + 1:
            buf.clear()
            self._discarding = True
        return out, None

    def encode(self, code: int, text: str) -> bytes:
        if code == 0:
            return _LINE_OK if text == OK else f"{_one_line(text)}\n".encode()
        return f"ERR {code} {_one_line(text)}\n".encode()


_LINE_OK = b"OK\n"


class ILFraming:
    """
    L&B's IL framing: a 17-byte header with the body length, then the body
    (the magic word and the event line as IL strings); answers are IL replies.
    """

    name = "IL"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._decoder = ilproto.ILFrameDecoder(max_line + IL_OVERHEAD)

    def feed(self, data: bytes) -> Fed:
        fatal: LBError | None = None
        try:
            bodies = self._decoder.feed_skipping(data)
        except ilproto.ProtocolError as e:
            bodies = e.decoded  # type: ignore[assignment]
            fatal = BrokenULM(e.reason)
        out: list[bytes | LBError] = []
        for body in bodies:
            if isinstance(body, ilproto.MessageTooBig):
                out.append(_too_big(body))
                continue
            try:
                out.append(ilproto.decode_il_msg(body))
            except ilproto.ProtocolError as e:
                out.append(BrokenULM(f"bad IL message: {e.reason}"))
        return out, fatal

    def encode(self, code: int, text: str) -> bytes:
        if code == 0 and text == OK:
            return _IL_OK
        return ilproto.il_reply_for(code, text)


_IL_OK = ilproto.il_reply_for(0, OK)


class LogdFraming:
    """
    L&B's logd framing: C{DGLOG}, a 4-byte little-endian length, the line and
    a NUL; answers are 4-byte little-endian codes.
    """

    name = "logd"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        # The line may carry its LF (or CRLF) before the NUL.
        self._decoder = ilproto.LogdDecoder(max_line + 2)

    def feed(self, data: bytes) -> Fed:
        fatal: LBError | None = None
        try:
            lines = self._decoder.feed_skipping(data)
        except ilproto.ProtocolError as e:
            lines = e.decoded  # type: ignore[assignment]
            fatal = BrokenULM(e.reason)
        return [
            _too_big(line) if isinstance(line, ilproto.MessageTooBig) else line for line in lines
        ], fatal

    def encode(self, code: int, text: str) -> bytes:
        return ilproto.encode_logd_answer(code)


FRAMINGS: dict[str, type[LineFraming] | type[ILFraming] | type[LogdFraming]] = {
    "line": LineFraming,
    "IL": ILFraming,
    "logd": LogdFraming,
}


def make_framing(name: str, max_line: int) -> Framing:
    """
    The framing called C{name} (from L{detect_framing}) for events up to
    C{max_line} bytes.
    """
    return FRAMINGS[name](max_line)


class Slot:
    """
    One answer of a connection: C{code} is L{None} until the outcome is known.

    @ivar close: close the connection once this answer is written.
    """

    __slots__ = ("close", "code", "text")

    def __init__(self, code: int | None = None, text: str = "", close: bool = False) -> None:
        self.code = code
        self.text = text
        self.close = close

    def set(self, code: int, text: str) -> None:
        self.code = code
        self.text = text


class AnswerQueue:
    """
    A connection's answers, written in the order of the messages, and its
    back-pressure: past C{max_inflight} unanswered messages the transport is
    paused, and resumed once at most half of them are left.

    The bound is checked after each received chunk, so it can be passed by
    the messages of one chunk (at most one read's worth, 64 KiB).

    @ivar framing: encodes the answers (set once the framing is detected).
    @ivar paused: whether reading is paused for back-pressure.
    """

    def __init__(self, transport: Any, max_inflight: int) -> None:
        self.transport = transport
        self.max_inflight = max_inflight
        self.framing: Framing | None = None
        self.paused = False
        self.closed = False
        self._slots: deque[Slot] = deque()

    def __len__(self) -> int:
        return len(self._slots)

    def pending(self) -> Slot:
        """
        Queue the answer of a message whose outcome is not known yet.
        """
        slot = Slot()
        self._slots.append(slot)
        return slot

    def answer(self, code: int, text: str, close: bool = False) -> None:
        """
        Queue a known answer (after the pending ones); C{close} closes the
        connection once it is written.
        """
        self._slots.append(Slot(code, text, close))

    def received(self) -> None:
        """
        Apply back-pressure after a chunk of input has been queued.
        """
        if len(self._slots) > self.max_inflight and not self.paused and not self.closed:
            self.paused = True
            self.transport.pauseProducing()

    def flush(self) -> list[Slot]:
        """
        Write the answers known at the head of the queue, close if one says
        so, and resume reading when few enough are left.

        @return: the slots written (for logging and counters).
        """
        slots = self._slots
        framing = self.framing
        if self.closed or framing is None:
            return []
        done: list[Slot] = []
        close = False
        while slots and slots[0].code is not None:
            slot = slots.popleft()
            done.append(slot)
            if slot.close:
                close = True
                break
        if not done:
            return done
        transport = self.transport
        encode = framing.encode
        transport.write(b"".join([encode(s.code, s.text) for s in done]))  # type: ignore[arg-type]
        if close:
            self.closed = True
            slots.clear()
            transport.loseConnection()
            return done
        write_now(transport)
        if self.paused and len(slots) <= self.max_inflight // 2:
            self.paused = False
            transport.resumeProducing()
        return done

    def lost(self) -> None:
        """
        The connection is gone: nothing more is written.
        """
        self.closed = True
        self._slots.clear()


def write_now(transport: Any) -> None:
    """
    Send what was just written to a socket transport in this reactor turn.

    A descriptor transport (C{FileDescriptor}) only buffers a write and sends it
    when the next poll finds the socket writable, after everything else that
    turn reads and parses: acknowledgements waited behind other connections'
    input. This sends at once what the socket takes (C{doWrite}, as the reactor
    would); the rest stays buffered for the reactor. An error is left to the
    reactor too (the descriptor stays registered for writing, the next poll
    meets the error and closes the connection). Transports without a
    descriptor of their own (TLS, test transports) and closing ones are left
    alone.
    """
    do_write = getattr(transport, "doWrite", None)
    if (
        do_write is None
        or not getattr(transport, "connected", False)
        or getattr(transport, "disconnecting", True)
        or getattr(transport, "_writeDisconnecting", False)
    ):
        return
    do_write()


__all__ = [
    "DETECT_BYTES",
    "OK",
    "OK_DUPLICATE",
    "AnswerQueue",
    "Framing",
    "ILFraming",
    "LineFraming",
    "LogdFraming",
    "Slot",
    "detect_framing",
    "make_framing",
    "write_now",
]
