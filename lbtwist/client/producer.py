# -*- test-case-name: tests.unit.test_producer -*-
"""
Producer library: log events to an lbtwist intake socket.

Two clients speak the line framing of the intake (see C{docs/protocol.md}):
one ULM line and LF per event, answered in order by C{OK}, C{OK duplicate} or
C{ERR <code> <text>}.

  - L{LBProducer}: a blocking client on a plain UNIX socket, for scripts and
    programs without a reactor.
  - L{connect_producer} / L{ProducerProtocol}: the Twisted-native client.
"""

from __future__ import annotations

import selectors
import socket
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from lbtwist.core import errors

if TYPE_CHECKING:
    from lbtwist.core.events import Event

EventOrLine = Union["Event", str, bytes]

#: Longest answer line accepted from the server.
MAX_ANSWER = 64 * 1024

_CODE_CLASSES: dict[int, type[errors.LBError]] = {
    cls.code: cls
    for cls in (
        errors.BrokenULM,
        errors.EventUndefined,
        errors.MessageIncomplete,
        errors.KeyDuplicity,
        errors.KeyMisuse,
        errors.JobIdFormat,
        errors.InvalidValue,
        errors.TooBig,
        errors.PermissionDenied,
        errors.TryAgain,
        errors.NoSpace,
        errors.UnknownJob,
    )
}


class ProtocolError(errors.LBError):
    """
    The server answered something that is not C{OK}, C{OK duplicate} or C{ERR}.
    """


def error_for_code(code: int, text: str) -> errors.LBError:
    """
    Build the typed error for an L&B error code.

    @return: an instance of the L{errors} class for C{code}, or a plain
        L{errors.LBError} carrying C{code} when the code is not known.
    """
    cls = _CODE_CLASSES.get(code)
    if cls is None:
        return errors.LBError(text, code)
    return cls(text)


def parse_answer(answer: str | bytes) -> bool:
    """
    Interpret one answer line of the intake.

    @return: C{True} if the event was a duplicate, C{False} if newly stored.
    @raise errors.LBError: the typed error of an C{ERR} answer.
    """
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    answer = answer.rstrip("\r\n")
    if answer == "OK":
        return False
    if answer == "OK duplicate":
        return True
    if answer.startswith("ERR "):
        code_text, _, text = answer[4:].partition(" ")
        try:
            code = int(code_text)
        except ValueError:
            raise ProtocolError(f"bad answer from server: {answer!r}") from None
        raise error_for_code(code, text)
    raise ProtocolError(f"bad answer from server: {answer!r}")


def encode_line(event_or_line: EventOrLine) -> bytes:
    """
    The bytes that carry one event on the wire: its ULM line, UTF-8, plus LF.

    @raise errors.InvalidValue: the line is blank or contains a line break.
    """
    if isinstance(event_or_line, bytes):
        data = event_or_line
    elif isinstance(event_or_line, str):
        data = event_or_line.encode("utf-8")
    else:
        from lbtwist.core.events import format_event

        data = format_event(event_or_line).encode("utf-8")
    data = data.rstrip(b"\r\n")
    if b"\n" in data or b"\r" in data:
        raise errors.InvalidValue("an event line must not contain line breaks")
    if not data.strip(b" \t"):
        # The intake ignores blank lines without answering them.
        raise errors.InvalidValue("an event line must not be blank")
    return data + b"\n"


class LBProducer:
    """
    Blocking producer on the intake UNIX socket.

    Use as a context manager, or call L{close}::

        with LBProducer("/var/lib/lbtwist/events.sock") as p:
            duplicate = p.log(line)
    """

    def __init__(self, socket_path: str, timeout: float | None = 30.0) -> None:
        """
        Connect to C{socket_path}.

        @param timeout: seconds to wait for the connection and for each answer;
            C{None} waits forever.
        @raise OSError: the socket cannot be reached.
        """
        self.socket_path = socket_path
        self.timeout = timeout
        self._buffer = b""
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(socket_path)
        except OSError as e:
            self._sock.close()
            if e.errno is not None and not e.filename:
                # Name the socket in the error, as open() would.
                raise type(e)(e.errno, e.strerror, socket_path) from None
            raise
        except BaseException:
            self._sock.close()
            raise

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("producer is closed")
        return self._sock

    def _read_answer(self) -> bytes:
        sock = self._socket()
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_ANSWER:
                raise ProtocolError("answer line too long")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server before its answer")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return answer

    def log(self, event_or_line: EventOrLine) -> bool:
        """
        Log one event and wait for its answer.

        @return: C{True} if the server already had this event (duplicate).
        @raise errors.LBError: the server refused the event (typed by code).
        @raise OSError: the connection failed; resending is safe.
        """
        self._socket().sendall(encode_line(event_or_line))
        return parse_answer(self._read_answer())

    def log_many(self, events: Iterable[EventOrLine]) -> list[bool | errors.LBError]:
        """
        Log several events pipelined: all are written before the answers are
        awaited (answers are read while writing so that neither side blocks).

        @return: one item per event, in order: C{True}/C{False} (duplicate or
            not) or the L{errors.LBError} the server answered for it.
        @raise OSError: the connection failed; resending all is safe.
        """
        data = b"".join(encode_line(e) for e in events)
        expected = data.count(b"\n")
        answers: list[bytes] = []
        sock = self._socket()
        sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as sel:
                view = memoryview(data)
                sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0))
                while len(answers) < expected:
                    ready = sel.select(self.timeout)
                    if not ready:
                        raise TimeoutError("no answer from the server")
                    for _, mask in ready:
                        if mask & selectors.EVENT_WRITE:
                            sent = sock.send(view)
                            view = view[sent:]
                            if not view:
                                sel.modify(sock, selectors.EVENT_READ)
                        if mask & selectors.EVENT_READ:
                            chunk = sock.recv(65536)
                            if not chunk:
                                raise ConnectionError("connection closed by the server")
                            self._buffer += chunk
                            while b"\n" in self._buffer and len(answers) < expected:
                                answer, _, self._buffer = self._buffer.partition(b"\n")
                                answers.append(answer)
                            if b"\n" not in self._buffer and len(self._buffer) > MAX_ANSWER:
                                raise ProtocolError("answer line too long")
        finally:
            sock.settimeout(self.timeout)
        results: list[bool | errors.LBError] = []
        for answer in answers:
            try:
                results.append(parse_answer(answer))
            except errors.LBError as e:
                results.append(e)
        return results

    def close(self) -> None:
        """
        Close the connection (idempotent).
        """
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LBProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProducerProtocol(LineOnlyReceiver):
    """
    Twisted client of the intake line framing: L{log} returns a Deferred that
    fires with the answer to that event; answers are matched in order.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_ANSWER

    def __init__(self) -> None:
        self._pending: deque[Deferred[bool]] = deque()
        self._lost: Failure | None = None

    def log(self, event_or_line: EventOrLine) -> Deferred[bool]:
        """
        Send one event.

        @return: fires with C{True} for a duplicate, C{False} for a new event;
            fails with the typed L{errors.LBError} of an C{ERR} answer, or with
            the reason of the connection loss.
        """
        if self._lost is not None:
            return fail(self._lost)
        try:
            data = encode_line(event_or_line)
        except errors.LBError:
            return fail()
        d: Deferred[bool] = Deferred()
        self._pending.append(d)
        assert self.transport is not None
        self.transport.write(data)
        return d

    @property
    def outstanding(self) -> int:
        """
        Number of events sent and not yet answered.
        """
        return len(self._pending)

    def lineReceived(self, line: bytes) -> None:
        if not self._pending:
            assert self.transport is not None
            self.transport.loseConnection()
            return
        d = self._pending.popleft()
        try:
            duplicate = parse_answer(line)
        except errors.LBError:
            d.errback()
        else:
            d.callback(duplicate)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._lost = reason
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(reason)


def connect_producer(
    reactor: object, endpoint: IStreamClientEndpoint | str
) -> Deferred[ProducerProtocol]:
    """
    Connect a L{ProducerProtocol}.

    @param endpoint: a client endpoint, or an endpoint string such as
        C{unix:path=/var/lib/lbtwist/events.sock} (parsed with C{reactor}).
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    return connectProtocol(endpoint, ProducerProtocol())
