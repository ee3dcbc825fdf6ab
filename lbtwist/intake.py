# -*- test-case-name: tests.test_intake -*-
"""
The intake: producers log events over a UNIX socket.

A connection's framing is detected from its first bytes and kept: C{DGLOG}
starts L&B's logd framing, a space or digit L&B's IL framing, anything else
the line framing (one ULM line per LF, one answer line per event: C{OK},
C{OK duplicate} or C{ERR <code> <text>}). Answers go out in order, and a
success only once the store's Deferred has fired, that is after the commit
group holding the event is durable. Every event of one received chunk goes to
the store in one call; the store groups concurrent calls into one transaction.

Producers are authorized by their socket peer credentials (SO_PEERCRED).
Connections, event size and unanswered events per connection are bounded.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist import ilproto
from lbtwist.errors import (
    BrokenULM,
    InvalidValue,
    LBError,
    MessageIncomplete,
    PermissionDenied,
    TooBig,
    TryAgain,
    UnknownJob,
)
from lbtwist.events import Event, parse_event

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_MAX_FIELDS = 100
DEFAULT_REFUSAL_GRACE = 2.0

#: A line of the line framing that asks for a job's last sequence code
#: (C{?SEQCODE <jobid>}); no ULM line starts with C{?}.
SEQCODE_REQUEST = b"?SEQCODE"

# DG.USER given with a non-empty value (only looked for when parsing failed).
_USER_PRESENT = re.compile(r'(?:^|\s)DG\.USER=(?!""|\s|$)', re.IGNORECASE)

# Room for the IL body around the event line: magic word and length prefix.
_IL_OVERHEAD = 64

PeerCredentials = Callable[[Any], "tuple[int, int, int] | None"]


def so_peercred(transport: Any) -> tuple[int, int, int] | None:
    """
    The (pid, uid, gid) of the peer of a UNIX socket transport, or C{None}
    when the transport has no such socket.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    size = struct.calcsize("3i")
    try:
        raw = transport.getHandle().getsockopt(socket.SOL_SOCKET, option, size)
    except (AttributeError, OSError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


@attrs.define
class IntakeStats:
    """
    Counters of one intake factory (for metrics).

    @ivar connections: connections open and accepted now.
    @ivar accepted: events stored (duplicates excluded).
    @ivar duplicates: events acknowledged as duplicates.
    @ivar errors: events answered with an error.
    @ivar refused: connections refused (credentials, connection bound).
    @ivar broken: connections closed for broken framing (oversize, garbage).
    """

    connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: int = 0
    refused: int = 0
    broken: int = 0


@attrs.frozen
class Answer:
    """
    The answer to one event: C{code} 0 is success.
    """

    code: int = 0
    text: str = "OK"
    duplicate: bool = False

    @classmethod
    def for_error(cls, err: LBError) -> Answer:
        return cls(err.code, err.message)


STORED = Answer()
DUPLICATE = Answer(0, "OK duplicate", True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- framings -----------------------------------------------------------------

# A framing's feed returns the event payloads (or per-event errors) of the
# bytes received, and the error that broke the framing, if any.
_Fed = tuple[list["bytes | LBError"], "LBError | None"]


def _framing_error(e: ilproto.ProtocolError) -> LBError:
    if isinstance(e, ilproto.MessageTooBig):
        return TooBig(e.reason)
    return BrokenULM(e.reason)


class _LineFraming:
    name = "line"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> _Fed:
        buf = self._buffer
        buf += data
        out: list[bytes | LBError] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                del buf[:]
                return out, TooBig(f"event line over {self.max_line} bytes")
            if line.strip():
                out.append(line)
        del buf[:start]
        if len(buf) > self.max_line:
            del buf[:]
            return out, TooBig(f"event line over {self.max_line} bytes")
        return out, None

    def encode(self, answer: Answer) -> bytes:
        if answer.code == 0:
            if answer is STORED or answer.text == "OK":
                return b"OK\n"
            if answer.duplicate:
                return b"OK duplicate\n"
            # A request's answer (sequence code): its text as it is.
            return f"{_one_line(answer.text)}\n".encode()
        return f"ERR {answer.code} {_one_line(answer.text)}\n".encode()


class _ILFraming:
    name = "IL"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._decoder = ilproto.ILFrameDecoder(max_line + _IL_OVERHEAD)

    def feed(self, data: bytes) -> _Fed:
        fatal: LBError | None = None
        try:
            bodies = self._decoder.feed(data)
        except ilproto.ProtocolError as e:
            bodies = [b for b in e.decoded if isinstance(b, bytes)]
            fatal = _framing_error(e)
        out: list[bytes | LBError] = []
        for body in bodies:
            try:
                out.append(ilproto.decode_il_msg(body))
            except ilproto.ProtocolError as e:
                out.append(BrokenULM(f"bad IL message: {e.reason}"))
        return out, fatal

    def encode(self, answer: Answer) -> bytes:
        return ilproto.il_reply_for(answer.code, answer.text)


class _LogdFraming:
    name = "logd"

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        # The line may carry its LF (or CRLF) before the NUL.
        self._decoder = ilproto.LogdDecoder(max_line + 2)

    def feed(self, data: bytes) -> _Fed:
        try:
            return list(self._decoder.feed(data)), None
        except ilproto.ProtocolError as e:
            return [b for b in e.decoded if isinstance(b, bytes)], _framing_error(e)

    def encode(self, answer: Answer) -> bytes:
        return ilproto.encode_logd_answer(answer.code)


_Framing = _LineFraming | _ILFraming | _LogdFraming


def detect_framing(head: bytes) -> str | None:
    """
    The framing a connection speaks, from its first bytes.

    @return: C{"logd"}, C{"IL"} or C{"line"}; C{None} when more bytes are needed.
    """
    if not head:
        return None
    first = head[:1]
    if first == b"D":
        if head.startswith(ilproto.DGLOG_MAGIC):
            return "logd"
        if ilproto.DGLOG_MAGIC.startswith(head):
            return None
        return "line"
    if first == b" " or first.isdigit():
        return "IL"
    return "line"


_FRAMINGS: dict[str, type[_LineFraming] | type[_ILFraming] | type[_LogdFraming]] = {
    "line": _LineFraming,
    "IL": _ILFraming,
    "logd": _LogdFraming,
}


# -- protocol -----------------------------------------------------------------


@attrs.define
class _Slot:
    """
    One answer in the connection's output queue; C{answer} is C{None} until known.
    """

    answer: Answer | None = None
    close: bool = False


class IntakeProtocol(Protocol):
    """
    One producer connection.
    """

    factory: IntakeFactory
    log = Logger()

    def __init__(self) -> None:
        self._head = b""
        self._framing: _Framing | None = None
        self._queue: deque[_Slot] = deque()
        self._inflight = 0
        self._counted = False
        self._broken = False
        self._lost = False
        self._refusal: LBError | None = None
        self._refusal_timer: IDelayedCall | None = None
        self.peer: tuple[int, int, int] | None = None

    # connection life

    def connectionMade(self) -> None:
        f = self.factory
        self.peer = f.peer_credentials(self.transport)
        refusal: LBError | None = None
        if self.peer is None:
            refusal = PermissionDenied("producer credentials unavailable")
        else:
            _pid, uid, gid = self.peer
            if uid not in f.allowed_uids and gid not in f.allowed_gids:
                refusal = PermissionDenied(f"producer uid {uid} not allowed")
        if refusal is None and f.stats.connections >= f.max_connections:
            refusal = TryAgain("too many connections")
        if refusal is not None:
            f.stats.refused += 1
            self.log.warn(
                "intake connection from {peer} refused: {reason}",
                peer=self.peer,
                reason=refusal.message,
            )
            self._refusal = refusal
            self._refusal_timer = f.clock.callLater(f.refusal_grace, self._refuse, None)
            return
        f.stats.connections += 1
        self._counted = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._refusal_timer is not None and self._refusal_timer.active():
            self._refusal_timer.cancel()
        self._refusal_timer = None
        if self._counted:
            self._counted = False
            self.factory.stats.connections -= 1

    def _refuse(self, framing: _Framing | None) -> None:
        """
        Answer the refusal in C{framing} (a line when unknown) and close.
        """
        assert self._refusal is not None
        if self._refusal_timer is not None and self._refusal_timer.active():
            self._refusal_timer.cancel()
        self._refusal_timer = None
        self._broken = True
        if framing is None:
            framing = _LineFraming(0)
        assert self.transport is not None
        self.transport.write(framing.encode(Answer.for_error(self._refusal)))
        self.transport.loseConnection()

    # input

    def dataReceived(self, data: bytes) -> None:
        if self._broken or self._lost:
            return
        if self._framing is None:
            self._head += data
            name = detect_framing(self._head[: len(ilproto.DGLOG_MAGIC)])
            if name is None:
                return
            framing = _FRAMINGS[name](self.factory.max_line)
            if self._refusal is not None:
                self._refuse(framing)
                return
            self._framing = framing
            data, self._head = self._head, b""
        items, fatal = self._framing.feed(data)
        self._handle(items)
        if fatal is not None:
            self._break(fatal)
        self._flush()

    def _handle(self, items: Iterable[bytes | LBError]) -> None:
        f = self.factory
        batch: list[tuple[str, Event]] = []
        slots: list[_Slot] = []
        line = isinstance(self._framing, _LineFraming)
        for item in items:
            if line and isinstance(item, bytes) and item.startswith(SEQCODE_REQUEST):
                self._queue.append(self._sequence_request(item))
                continue
            result = item if isinstance(item, LBError) else self._validate(item)
            if isinstance(result, LBError):
                self._queue.append(_Slot(self._error_answer(result)))
            elif self._inflight + len(batch) >= f.max_inflight:
                self._queue.append(
                    _Slot(self._error_answer(TryAgain(f"over {f.max_inflight} unanswered events")))
                )
            else:
                slot = _Slot()
                self._queue.append(slot)
                slots.append(slot)
                batch.append(result)
        if not batch:
            return
        self._inflight += len(batch)
        d: Deferred[Any] = maybeDeferred(f.store.store, batch)
        d.addCallbacks(self._stored, self._storeFailed, (slots,), errbackArgs=(slots,))
        d.addErrback(lambda fail: self.log.failure("intake answer failed", fail))

    def _sequence_request(self, raw: bytes) -> _Slot:
        """
        Answer C{?SEQCODE <jobid>} (line framing only): C{OK <code>} with the
        sequence code of the job's last stored event, C{ERR 2} for a job without
        events, C{ERR 22} for a malformed request. The peer was authorized as a
        producer when it connected (EPERM otherwise, like any line).

        @return: the request's slot in the answer queue.
        """
        slot = _Slot()
        jobid = raw[len(SEQCODE_REQUEST) + 1 :].decode("utf-8", "replace")
        if (
            raw[len(SEQCODE_REQUEST) : len(SEQCODE_REQUEST) + 1] != b" "
            or not jobid
            or any(c.isspace() for c in jobid)
        ):
            slot.answer = self._error_answer(InvalidValue("usage: ?SEQCODE <jobid>"))
            return slot

        def found(code: str | None) -> None:
            if code is None:
                slot.answer = self._error_answer(UnknownJob(f"unknown job {jobid}"))
            else:
                slot.answer = Answer(0, f"OK {code}")
            self._flush()

        def failed(failure: Failure) -> None:
            self.log.failure("sequence code of {jobid} not read", failure, jobid=jobid)
            slot.answer = self._error_answer(TryAgain("store error"))
            self._flush()

        d: Deferred[Any] = maybeDeferred(self.factory.store.last_seqcode, jobid)
        d.addCallbacks(found, failed)
        d.addErrback(lambda fail: self.log.failure("intake answer failed", fail))
        return slot

    def _validate(self, raw: bytes) -> tuple[str, Event] | LBError:
        raw = raw.rstrip(b"\r\n")
        if len(raw) > self.factory.max_line:
            return TooBig(f"event over {self.factory.max_line} bytes")
        nul = raw.find(b"\0")
        if nul >= 0:
            return BrokenULM(f"NUL byte at position {nul}")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return BrokenULM(f"invalid UTF-8 at byte {e.start}")
        try:
            event = parse_event(
                line, max_fields=self.factory.max_fields, max_size=self.factory.max_line
            )
        except MessageIncomplete as e:
            if _USER_PRESENT.search(line) is None:
                return PermissionDenied("DG.USER missing")
            return e
        except LBError as e:
            return e
        if not event.user or event.user == "anonymous":
            return PermissionDenied("DG.USER missing or anonymous")
        return line, event

    def _break(self, error: LBError) -> None:
        """
        Framing is lost: answer C{error} after the pending answers, then close.
        """
        self._broken = True
        self.factory.stats.broken += 1
        self._queue.append(_Slot(self._error_answer(error), close=True))

    # answers

    def _error_answer(self, error: LBError) -> Answer:
        self.factory.stats.errors += 1
        self.log.warn(
            "intake event from {peer} rejected: {code} {text}",
            peer=self.peer,
            code=error.code,
            text=error.message,
        )
        return Answer.for_error(error)

    def _stored(self, results: list[object], slots: list[_Slot]) -> None:
        self._inflight -= len(slots)
        stats = self.factory.stats
        if len(results) != len(slots):
            self.log.error(
                "store answered {n} results for {m} events", n=len(results), m=len(slots)
            )
            results = [TryAgain("store error")] * len(slots)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, LBError):
                slot.answer = self._error_answer(result)
            elif isinstance(result, BaseException):
                self.log.error("store error: {error!r}", error=result)
                slot.answer = self._error_answer(TryAgain("store error"))
            elif getattr(result, "duplicate", False):
                stats.duplicates += 1
                slot.answer = DUPLICATE
            else:
                stats.accepted += 1
                slot.answer = STORED
        self._flush()

    def _storeFailed(self, failure: Failure, slots: list[_Slot]) -> None:
        self._inflight -= len(slots)
        error = failure.value
        if not isinstance(error, LBError):
            self.log.failure("store failed", failure)
            error = TryAgain("store error")
        for slot in slots:
            slot.answer = self._error_answer(error)
        self._flush()

    def _flush(self) -> None:
        out: list[bytes] = []
        close = False
        queue = self._queue
        framing = self._framing
        while queue and queue[0].answer is not None and not close:
            slot = queue.popleft()
            assert slot.answer is not None and framing is not None
            out.append(framing.encode(slot.answer))
            close = slot.close
        if self._lost or self.transport is None:
            return
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.loseConnection()


class IntakeFactory(Factory["IntakeProtocol"]):
    """
    Builds L{IntakeProtocol}s and holds their shared bounds, policy and counters.

    @ivar store: the L{lbtwist.store.interface.IEventStore}.
    @ivar clock: for the grace period of refused connections.
    @ivar max_connections: accepted connections at once (over: EAGAIN).
    @ivar max_line: largest event line in bytes (over: E2BIG, connection closed).
    @ivar max_inflight: unanswered events per connection (over: EAGAIN, not stored).
    @ivar allowed_uids: peer uids allowed to log (default: our own and root).
    @ivar allowed_gids: peer gids allowed to log.
    @ivar peer_credentials: C{transport -> (pid, uid, gid) | None}.
    @ivar max_fields: most fields in an event.
    @ivar refusal_grace: seconds a refused connection may take to show its framing.
    @ivar stats: L{IntakeStats}.
    """

    noisy = False

    def __init__(
        self,
        store: Any,
        *,
        clock: IReactorTime,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_line: int = DEFAULT_MAX_LINE,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        allowed_uids: Collection[int] | None = None,
        allowed_gids: Collection[int] = (),
        peer_credentials: PeerCredentials = so_peercred,
        max_fields: int = DEFAULT_MAX_FIELDS,
        refusal_grace: float = DEFAULT_REFUSAL_GRACE,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_inflight = max_inflight
        if allowed_uids is None:
            allowed_uids = (os.getuid(), 0)
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.peer_credentials = peer_credentials
        self.max_fields = max_fields
        self.refusal_grace = refusal_grace
        self.stats = IntakeStats()

    def buildProtocol(self, addr: object) -> IntakeProtocol:
        proto = IntakeProtocol()
        proto.factory = self
        return proto


__all__ = [
    "Answer",
    "IntakeFactory",
    "IntakeProtocol",
    "IntakeStats",
    "detect_framing",
    "so_peercred",
]
