# -*- test-case-name: tests.unit.test_intake -*-
"""
The intake: producers log events over a UNIX socket.

A connection's framing is detected from its first bytes and kept (see
L{lbtwist.service.framing}): C{DGLOG} starts L&B's logd framing, an exact IL header
L&B's IL framing, anything else the line framing (one ULM line per LF, one
answer line per event: C{OK}, C{OK duplicate} or C{ERR <code> <text>}).
Answers go out in order, and a success only once the store's Deferred has
fired, that is after the commit group holding the event is durable. Every
event of one received chunk goes to the store in one call; the store groups
concurrent calls into one transaction.

Producers are authorized by their socket peer credentials (SO_PEERCRED).
Bounds: event size (oversize events are read to their end and answered E2BIG),
unanswered events per connection (past it the connection is not read until
half are answered), connections (when full, the connection idle the longest
is closed to make room; EAGAIN only when none is idle), and time: a connection
that completes no message for C{idle_timeout} seconds while it is owed no
answer (silent, or stuck half-way through a message) is closed.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist.core.errors import (
    BrokenULM,
    InvalidValue,
    LBError,
    MessageIncomplete,
    PermissionDenied,
    TryAgain,
    UnknownJob,
)
from lbtwist.core.events import Event, parse_event
from lbtwist.service import logs
from lbtwist.service.framing import (
    DETECT_BYTES,
    OK,
    OK_DUPLICATE,
    AnswerQueue,
    Framing,
    LineFraming,
    Slot,
    detect_framing,
    make_framing,
)
from lbtwist.store.interface import IEventStore

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_MAX_FIELDS = 100
DEFAULT_REFUSAL_GRACE = 2.0
DEFAULT_IDLE_TIMEOUT = 60.0

#: A line of the line framing that asks for a job's last sequence code
#: (C{?SEQCODE <jobid>}); no ULM line starts with C{?}.
SEQCODE_REQUEST = b"?SEQCODE"

# DG.USER given with a non-empty value (only looked for when parsing failed).
_USER_PRESENT = re.compile(r'(?:^|\s)DG\.USER=(?!""|\s|$)', re.IGNORECASE)

PeerCredentials = Callable[[Any], "tuple[int, int, int] | None"]


def default_producer_uids() -> tuple[int, ...]:
    """
    Who may log over a local socket when no uid is configured: the service's
    own uid and root (the one default of the event, poke and serve sockets).
    """
    return tuple(sorted({os.getuid(), 0}))


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
    @ivar broken: connections closed for broken framing (garbage).
    @ivar idle_closed: connections closed by the idle timeout.
    @ivar evicted: idle connections closed to make room for a new one.
    """

    connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: int = 0
    refused: int = 0
    broken: int = 0
    idle_closed: int = 0
    evicted: int = 0


# -- protocol -----------------------------------------------------------------

#: A handler of a non-event request line of the line framing: called with the
#: protocol and the line, it gives (or fires with) the answer's code and text.
LineRequest = Callable[["IntakeProtocol", bytes], "Deferred[tuple[int, str]] | tuple[int, str]"]


class IntakeProtocol(Protocol):
    """
    One producer connection.
    """

    factory: IntakeFactory
    log = Logger()

    def __init__(self) -> None:
        self._head = b""
        self._framing: Framing | None = None
        self._answers: AnswerQueue | None = None
        self._counted = False
        self._broken = False
        self._lost = False
        self._refusal: LBError | None = None
        self._refusal_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
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
            if not f.close_idlest():
                refusal = TryAgain("too many connections")
        if refusal is not None:
            f.stats.refused += 1
            logs.warn(
                self.log,
                "intake connection from {peer} refused: {reason}",
                peer=self.peer,
                reason=refusal.message,
            )
            self._refusal = refusal
            self._refusal_timer = f.clock.callLater(f.refusal_grace, self._refuse, None)
            return
        f.stats.connections += 1
        f.open.add(self)
        self._counted = True
        self._answers = AnswerQueue(self.transport, f.max_inflight)
        self._idle_timer = f.clock.callLater(f.idle_timeout, self._idle)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._answers is not None:
            self._answers.lost()
        for timer in (self._refusal_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._refusal_timer = self._idle_timer = None
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.stats.connections -= 1
            self.factory.open.discard(self)

    def _refuse(self, framing: Framing | None) -> None:
        """
        Answer the refusal in C{framing} (a line when unknown) and close.
        """
        assert self._refusal is not None
        if self._refusal_timer is not None and self._refusal_timer.active():
            self._refusal_timer.cancel()
        self._refusal_timer = None
        self._broken = True
        if framing is None:
            framing = LineFraming(0)
        assert self.transport is not None
        self.transport.write(framing.encode(self._refusal.code, self._refusal.message))
        self.transport.loseConnection()

    # idleness

    @property
    def idle_since(self) -> float | None:
        """
        When the idle timeout started counting (the last complete message or
        the connection), or L{None} when answers are owed or the timer is off.
        """
        answers = self._answers
        timer = self._idle_timer
        if answers is None or len(answers) or answers.paused or timer is None:
            return None
        if not timer.active():
            return None
        return timer.getTime() - self.factory.idle_timeout

    def _idle(self) -> None:
        """
        No complete message for the idle timeout: close, unless answers are
        owed (then the wait is ours, and the timer starts again).
        """
        f = self.factory
        answers = self._answers
        if answers is not None and (len(answers) or answers.paused):
            self._idle_timer = f.clock.callLater(f.idle_timeout, self._idle)
            return
        self._idle_timer = None
        f.stats.idle_closed += 1
        logs.warn(
            self.log,
            "intake connection from {peer} closed: no complete message in {timeout} s",
            peer=self.peer,
            timeout=f.idle_timeout,
        )
        self.close_idle()

    def close_idle(self) -> None:
        """
        Close this connection, which is owed no answer; its slot is free at once.
        """
        self._broken = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self._uncount()
        if self._answers is not None:
            self._answers.lost()
        if self.transport is not None:
            self.transport.loseConnection()

    # input

    def dataReceived(self, data: bytes) -> None:
        if self._broken or self._lost:
            return
        framing = self._framing
        if framing is None:
            self._head += data
            name = detect_framing(self._head[:DETECT_BYTES])
            if name is None:
                return
            framing = make_framing(name, self.factory.max_line)
            if self._refusal is not None:
                self._refuse(framing)
                return
            self._framing = framing
            assert self._answers is not None
            self._answers.framing = framing
            data, self._head = self._head, b""
        items, fatal = framing.feed(data)
        if items:
            timer = self._idle_timer
            if timer is not None:
                timer.reset(self.factory.idle_timeout)
            self._handle(items)
        if fatal is not None:
            self._break(fatal)
        answers = self._answers
        assert answers is not None
        answers.received()
        self._flush()

    def _handle(self, items: Iterable[bytes | LBError]) -> None:
        f = self.factory
        answers = self._answers
        assert answers is not None
        batch: list[tuple[str, Event]] = []
        slots: list[Slot] = []
        requests = (
            f.line_requests if self._framing is not None and self._framing.name == "line" else None
        )
        for item in items:
            if isinstance(item, LBError):
                self._error(item)
                continue
            if requests:
                handler = requests.get(item.split(None, 1)[0])
                if handler is not None:
                    self._request(handler, item)
                    continue
            result = self._validate(item)
            if isinstance(result, LBError):
                self._error(result)
            else:
                slots.append(answers.pending())
                batch.append(result)
        if not batch:
            return
        d: Deferred[Any] = maybeDeferred(f.store.store, batch)
        d.addCallbacks(self._stored, self._storeFailed, (slots,), errbackArgs=(slots,))
        d.addErrback(lambda fail: self.log.failure("intake answer failed", fail))

    def _request(self, handler: LineRequest, line: bytes) -> None:
        """
        Answer a non-event request line in its place in the answer order.
        """
        assert self._answers is not None
        slot = self._answers.pending()

        def answered(answer: tuple[int, str]) -> None:
            slot.set(*answer)
            self._flush()

        def failed(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, LBError):
                self.log.failure("intake request failed", failure)
                error = TryAgain("request failed")
            slot.set(error.code, error.message)
            self._flush()

        maybeDeferred(handler, self, line).addCallbacks(answered, failed)

    def _validate(self, raw: bytes) -> tuple[str, Event] | LBError:
        nul = raw.find(b"\0")
        if nul >= 0:
            return BrokenULM(f"NUL byte at position {nul}")
        raw = raw.rstrip(b"\r\n")
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
        self._error(error, close=True)

    # answers

    def _error(self, error: LBError, close: bool = False) -> None:
        assert self._answers is not None
        self._count_error(error)
        self._answers.answer(error.code, error.message, close)

    def _count_error(self, error: LBError) -> None:
        self.factory.stats.errors += 1
        logs.warn(
            self.log,
            "intake event from {peer} rejected: {code} {text}",
            peer=self.peer,
            code=error.code,
            text=error.message,
        )

    def _stored(self, results: list[object], slots: list[Slot]) -> None:
        stats = self.factory.stats
        if len(results) != len(slots):
            self.log.error(
                "store answered {n} results for {m} events", n=len(results), m=len(slots)
            )
            results = [TryAgain("store error")] * len(slots)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, LBError):
                self._count_error(result)
                slot.set(result.code, result.message)
            elif isinstance(result, BaseException):
                self.log.error("store error: {error!r}", error=result)
                stats.errors += 1
                slot.set(TryAgain.code, "store error")
            elif getattr(result, "duplicate", False):
                stats.duplicates += 1
                slot.set(0, OK_DUPLICATE)
            else:
                stats.accepted += 1
                slot.set(0, OK)
        self._flush()

    def _storeFailed(self, failure: Failure, slots: list[Slot]) -> None:
        error = failure.value
        if not isinstance(error, LBError):
            self.log.failure("store failed", failure)
            error = TryAgain("store error")
        for slot in slots:
            self._count_error(error)
            slot.set(error.code, error.message)
        self._flush()

    def _flush(self) -> None:
        if self._answers is not None and not self._lost:
            self._answers.flush()


def sequence_request(
    proto: IntakeProtocol, raw: bytes
) -> Deferred[tuple[int, str]] | tuple[int, str]:
    """
    Answer C{?SEQCODE <jobid>} (line framing only): C{OK <code>} with the
    sequence code of the job's last stored event, C{ERR 2} for a job without
    events, C{ERR 22} for a malformed request. The peer was authorized as a
    producer when it connected (EPERM otherwise, like any line).
    """
    jobid = raw[len(SEQCODE_REQUEST) + 1 :].decode("utf-8", "replace")
    if (
        raw[len(SEQCODE_REQUEST) : len(SEQCODE_REQUEST) + 1] != b" "
        or not jobid
        or any(c.isspace() for c in jobid)
    ):
        error: LBError = InvalidValue("usage: ?SEQCODE <jobid>")
        return error.code, error.message

    def found(code: str | None) -> tuple[int, str]:
        if code is None:
            error = UnknownJob(f"unknown job {jobid}")
            return error.code, error.message
        return 0, f"OK {code}"

    d: Deferred[Any] = maybeDeferred(proto.factory.store.last_seqcode, jobid)
    return d.addCallback(found)


class IntakeFactory(Factory["IntakeProtocol"]):
    """
    Builds L{IntakeProtocol}s and holds their shared bounds, policy and counters.

    @ivar store: the L{lbtwist.store.interface.IEventStore}.
    @ivar clock: for timeouts.
    @ivar max_connections: accepted connections at once (when full, the one
        idle the longest is closed; EAGAIN when none is idle).
    @ivar max_line: largest event in bytes (over: read to its end, E2BIG).
    @ivar max_inflight: unanswered events per connection (over: stop reading
        the connection until at most half are left).
    @ivar allowed_uids: peer uids allowed to log (default: our own and root).
    @ivar allowed_gids: peer gids allowed to log.
    @ivar peer_credentials: C{transport -> (pid, uid, gid) | None}.
    @ivar max_fields: most fields in an event.
    @ivar refusal_grace: seconds a refused connection may take to show its framing.
    @ivar idle_timeout: seconds a connection owed no answer may go without
        completing a message before it is closed.
    @ivar line_requests: handlers of non-event request lines of the line
        framing, by their first word (empty: every line is an event).
    @ivar open: the accepted connections.
    @ivar stats: L{IntakeStats}.
    """

    noisy = False

    def __init__(
        self,
        store: IEventStore,
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
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        line_requests: Mapping[bytes, LineRequest] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_inflight = max_inflight
        if allowed_uids is None:
            allowed_uids = default_producer_uids()
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.peer_credentials = peer_credentials
        self.max_fields = max_fields
        self.refusal_grace = refusal_grace
        self.idle_timeout = idle_timeout
        self.line_requests: dict[bytes, LineRequest] = {
            SEQCODE_REQUEST: sequence_request,
            **(line_requests or {}),
        }
        self.open: set[IntakeProtocol] = set()
        self.stats = IntakeStats()

    def close_idlest(self) -> bool:
        """
        Make room for a connection: close the accepted connection idle the
        longest (owed no answer, no complete message for the longest time).

        @return: whether one was closed.
        """
        idlest: IntakeProtocol | None = None
        oldest = 0.0
        for proto in self.open:
            since = proto.idle_since
            if since is not None and (idlest is None or since < oldest):
                idlest, oldest = proto, since
        if idlest is None:
            return False
        self.stats.evicted += 1
        logs.warn(
            IntakeProtocol.log,
            "intake connection from {peer} closed to make room: idle for {idle:.1f} s",
            peer=idlest.peer,
            idle=self.clock.seconds() - oldest,
        )
        idlest.close_idle()
        return True

    def buildProtocol(self, addr: object) -> IntakeProtocol:
        proto = IntakeProtocol()
        proto.factory = self
        return proto


__all__ = [
    "LineRequest",
    "IntakeFactory",
    "IntakeProtocol",
    "IntakeStats",
    "detect_framing",
    "so_peercred",
]
