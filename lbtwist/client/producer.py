# -*- test-case-name: tests.unit.test_producer -*-
"""
Producer library: log events to an lbtwist intake socket.

Two clients speak the line framing of the intake (see C{docs/protocol.md}):
one ULM line and LF per event, answered in order by C{OK}, C{OK duplicate} or
C{ERR <code> <text>}.

  - L{LBProducer}: a blocking client on a plain UNIX socket, for scripts and
    programs without a reactor. This module does not import Twisted, so the
    command line stays light.
  - L{connect_producer} / L{ProducerProtocol}: the Twisted-native client (in
    L{lbtwist.client.txproducer}, importable from here too).

Both retry what is transient - a refused or backlogged connect, a socket being
re-created, a lost connection, an C{ERR 11} (EAGAIN) answer - with capped
exponential backoff and jitter, until nothing has moved for their timeout. A
retry resends the same bytes: the store acknowledges an identical resend as a
duplicate, so an event is never stored twice.
"""

from __future__ import annotations

import _socket
import errno
import time

from lbtwist.core import errors

# Not typing.TYPE_CHECKING: importing typing costs a command-line call more
# than all of this module (type checkers treat the name alike).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType
    from typing import Any

    from lbtwist.client.txproducer import ProducerProtocol as ProducerProtocol
    from lbtwist.client.txproducer import connect_producer as connect_producer
    from lbtwist.core.events import Event

    EventOrLine = Event | str | bytes
else:
    # What a line to send may be, for annotations elsewhere (txproducer).
    EventOrLine = "Event | str | bytes"

#: Longest answer line accepted from the server.
MAX_ANSWER = 64 * 1024

#: Seconds a producer keeps retrying without progress before it gives up.
DEFAULT_TIMEOUT = 60.0

#: Events a producer keeps unanswered on one connection (the intake's bound).
DEFAULT_WINDOW = 1024

#: First retry delay, growth factor and cap of the backoff (seconds).
RETRY_INITIAL = 0.05
RETRY_FACTOR = 2.0
RETRY_MAX = 2.0

#: Connect and transfer errors that are worth retrying: nobody listening (yet),
#: a full listen backlog, a socket being re-created, a connection cut.
RETRY_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EAGAIN,
        errno.ENOENT,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EINTR,
    }
)

#: The request line that asks the intake for a job's last sequence code.
SEQCODE_REQUEST = b"?SEQCODE"

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


class GaveUp(errors.LBError):
    """
    A producer retried for its whole timeout without getting through.

    The code is that of the last error (an errno, or the code of the last
    C{ERR} answer); the message names the socket and that error.

    @ivar socket_path: the intake socket.
    """

    def __init__(self, socket_path: str, timeout: float | None, code: int, text: str) -> None:
        waited = "" if timeout is None else f" after {timeout:g} s"
        super().__init__(f"{socket_path}: gave up{waited}: {text}", code)
        self.socket_path = socket_path


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


def _error_answer(answer: str) -> errors.LBError:
    code_text, _, text = answer[4:].partition(" ")
    try:
        code = int(code_text)
    except ValueError:
        raise ProtocolError(f"bad answer from server: {answer!r}") from None
    return error_for_code(code, text)


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
        raise _error_answer(answer)
    raise ProtocolError(f"bad answer from server: {answer!r}")


def parse_seqcode_answer(answer: str | bytes) -> str:
    """
    Interpret the answer to a sequence-code request: C{OK <code>} or C{ERR ...}.

    @return: the job's last sequence code.
    @raise errors.LBError: the typed error of an C{ERR} answer (L{errors.UnknownJob}
        for a job the store does not know).
    """
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", "replace")
    answer = answer.rstrip("\r\n")
    if answer.startswith("OK ") and answer[3:].strip():
        return answer[3:]
    if answer.startswith("ERR "):
        raise _error_answer(answer)
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


def encode_seqcode_request(jobid: str) -> bytes:
    """
    The request line asking for the last sequence code of C{jobid}.

    @raise errors.InvalidValue: the job id is empty or contains white space.
    """
    if not jobid or any(c.isspace() for c in jobid):
        raise errors.InvalidValue(f"not a job id: {jobid!r}")
    return SEQCODE_REQUEST + b" " + jobid.encode("utf-8") + b"\n"


def retry_delay(
    attempt: int,
    jitter: float,
    *,
    initial: float = RETRY_INITIAL,
    factor: float = RETRY_FACTOR,
    maximum: float = RETRY_MAX,
) -> float:
    """
    The delay before retry number C{attempt} (from 0): C{initial * factor**attempt}
    capped at C{maximum}, scaled by C{0.5 + jitter / 2} so that producers refused
    together do not come back together.

    @param jitter: a number in M{[0, 1)}.
    """
    delay = min(maximum, initial * factor ** min(attempt, 64))
    return delay * (0.5 + jitter / 2)


def is_transient(error: BaseException) -> bool:
    """
    Whether a connect or transfer error is worth a retry.
    """
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    return isinstance(error, OSError) and error.errno in RETRY_ERRNOS


def _describe(error: BaseException) -> tuple[int, str]:
    if isinstance(error, errors.LBError):
        return error.code, f"ERR {error.code} {error.message}"
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno, error.strerror or str(error)
    return errno.ETIMEDOUT if isinstance(error, TimeoutError) else errno.EIO, (
        str(error) or type(error).__name__
    )


def connect_unix(path: str, timeout: float | None) -> _socket.socket:
    """
    One connect attempt to the UNIX socket C{path}.

    With a timeout the socket is non-blocking underneath, so a full listen
    backlog fails at once with EAGAIN (and is retried by the caller). The
    socket is the C module's own (C{_socket}): the C{socket} module's wrapper
    adds nothing used here and costs a command-line call its imports.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _random() -> float:
    # random is imported only when a retry needs its jitter.
    import random

    return random.random()


class LBProducer:
    """
    Blocking producer on the intake UNIX socket.

    Use as a context manager, or call L{close}::

        with LBProducer("/var/lib/lbtwist/events.sock") as p:
            duplicate = p.log(line)

    The connection is made on first use and remade as needed.
    """

    def __init__(
        self,
        socket_path: str,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        window: int = DEFAULT_WINDOW,
        retry_initial: float = RETRY_INITIAL,
        retry_factor: float = RETRY_FACTOR,
        retry_max: float = RETRY_MAX,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        jitter: Callable[[], float] | None = None,
        connect: Callable[[str, float | None], Any] = connect_unix,
    ) -> None:
        """
        @param timeout: seconds a call keeps retrying (and waiting for answers)
            without progress before it raises L{GaveUp}; C{None} retries forever.
        @param window: most events unanswered at once on the connection.
        @param retry_initial: the first retry delay; it grows by C{retry_factor}
            per retry up to C{retry_max}.
        @param clock: monotonic seconds; C{sleep}, C{jitter} (default
            C{random.random}) and C{connect} (one attempt: C{(path, timeout) ->
            socket}) are injected by tests.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self.socket_path = socket_path
        self.timeout = timeout
        self.window = window
        self.retry_initial = retry_initial
        self.retry_factor = retry_factor
        self.retry_max = retry_max
        self._clock = clock
        self._sleep = sleep
        self._jitter = _random if jitter is None else jitter
        self._connect = connect
        self._buffer = b""
        self._sock: Any = None
        self._closed = False

    # connection

    def _deadline(self) -> float | None:
        return None if self.timeout is None else self._clock() + self.timeout

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, deadline - self._clock())

    def _socket(self, deadline: float | None) -> Any:
        """
        The connected socket, connecting once if there is none.

        @raise OSError: this connect attempt failed.
        """
        if self._closed:
            raise errors.LBError("producer is closed", errno.EBADF)
        if self._sock is None:
            try:
                self._sock = self._connect(self.socket_path, self._remaining(deadline))
            except OSError as e:
                if e.errno is not None and not e.filename:
                    # Name the socket in the error, as open() would.
                    raise type(e)(e.errno, e.strerror, self.socket_path) from None
                raise
            self._buffer = b""
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def _backoff(self, attempt: int, deadline: float | None, last: BaseException) -> None:
        """
        Wait before retry C{attempt}, or raise L{GaveUp} if it would come after
        the deadline.
        """
        delay = retry_delay(
            attempt,
            self._jitter(),
            initial=self.retry_initial,
            factor=self.retry_factor,
            maximum=self.retry_max,
        )
        remaining = self._remaining(deadline)
        if remaining is not None and remaining < delay:
            # The next try would come after the deadline.
            code, text = _describe(last)
            raise GaveUp(self.socket_path, self.timeout, code, text)
        self._sleep(delay)

    def _read_answer(self, sock: Any, deadline: float | None) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_ANSWER:
                raise ProtocolError("answer line too long")
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no answer from the server")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no answer from the server") from None
            if not chunk:
                raise ConnectionError("connection closed by the server before its answer")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return answer

    def _request(self, data: bytes, parse: Callable[[bytes], Any]) -> Any:
        """
        Send one request line and return C{parse(answer)}, retrying what is
        transient (C{parse} raising L{errors.TryAgain} included).
        """
        deadline = self._deadline()
        attempt = 0
        while True:
            try:
                sock = self._socket(deadline)
                sock.settimeout(self._remaining(deadline))
                sock.sendall(data)
                return parse(self._read_answer(sock, deadline))
            except errors.TryAgain as e:
                last: BaseException = e
                # Over a bound of the intake: come back later on a fresh connection.
                self._drop()
            except OSError as e:
                self._drop()
                if not is_transient(e):
                    raise
                last = e
            self._backoff(attempt, deadline, last)
            attempt += 1

    def log(self, event_or_line: EventOrLine) -> bool:
        """
        Log one event and wait for its answer, retrying transient failures.

        @return: C{True} if the server already had this event (duplicate).
        @raise errors.LBError: the server refused the event (typed by code).
        @raise GaveUp: still failing transiently after the timeout.
        @raise OSError: the socket cannot be used at all (e.g. EACCES).
        """
        return self._request(encode_line(event_or_line), parse_answer)  # type: ignore[no-any-return]

    def sequence_code(self, jobid: str) -> str:
        """
        Ask the intake for the last sequence code stored for C{jobid}.

        @raise errors.UnknownJob: the proxy knows no such job.
        @raise errors.PermissionDenied: this uid may not log to the proxy.
        @raise GaveUp: still failing transiently after the timeout.
        """
        return self._request(encode_seqcode_request(jobid), parse_seqcode_answer)  # type: ignore[no-any-return]

    def log_many(self, events: Iterable[EventOrLine]) -> list[bool | errors.LBError]:
        """
        Log several events pipelined, at most L{window} unanswered at once
        (answers are read while writing so that neither side blocks). Events
        answered C{ERR 11} and events left unanswered by a lost connection are
        resent after a backoff.

        @return: one item per event, in order: C{True}/C{False} (duplicate or
            not) or the L{errors.LBError} the server answered for it (L{GaveUp}
            for an event still failing transiently after the timeout).
        @raise OSError: the socket cannot be used at all (e.g. EACCES).
        """
        datas = [encode_line(e) for e in events]
        results: list[bool | errors.LBError | None] = [None] * len(datas)
        todo = list(range(len(datas)))
        last: BaseException = TimeoutError("no answer from the server")
        attempt = 0
        deadline = self._deadline()
        while todo:
            before = len(todo)
            try:
                sock = self._socket(deadline)
                again = self._pipeline(sock, datas, todo, results)
                if again is not None:
                    last = again
            except OSError as e:
                self._drop()
                if not is_transient(e):
                    raise
                last = e
            todo = [i for i in todo if results[i] is None]
            if not todo:
                break
            if len(todo) < before:
                # Progress: the timeout counts again from now.
                attempt = 0
                deadline = self._deadline()
            try:
                self._backoff(attempt, deadline, last)
            except GaveUp as e:
                for i in todo:
                    results[i] = e
                break
            attempt += 1
        return [r for r in results if r is not None]

    def _pipeline(
        self,
        sock: Any,
        datas: Sequence[bytes],
        todo: Sequence[int],
        results: list[bool | errors.LBError | None],
    ) -> errors.TryAgain | None:
        """
        Send the events C{todo} (indexes into C{datas}) and file their answers in
        C{results}; those answered C{ERR 11} stay C{None}.

        @return: the last C{ERR 11} answer, if any.
        @raise OSError: the connection failed (or no progress for the timeout).
        """
        # select.poll, not selectors: the same readiness for one socket
        # without the imports (a command-line call pays for each).
        import select

        again: errors.TryAgain | None = None
        sent: list[int] = []  # indexes sent and not answered: sent[head:]
        head = 0
        out = bytearray()
        position = 0
        deadline = self._deadline()
        poller = select.poll()
        readable = select.POLLIN
        sock.setblocking(False)
        try:
            poller.register(sock, readable)
            writing = False
            while True:
                while b"\n" in self._buffer and head < len(sent):
                    answer, _, self._buffer = self._buffer.partition(b"\n")
                    index = sent[head]
                    head += 1
                    deadline = self._deadline()
                    try:
                        results[index] = parse_answer(answer)
                    except errors.TryAgain as e:
                        again = e
                    except errors.LBError as e:
                        results[index] = e
                if b"\n" not in self._buffer and len(self._buffer) > MAX_ANSWER:
                    raise ProtocolError("answer line too long")
                if head == len(sent):
                    sent, head = [], 0
                while position < len(todo) and len(sent) - head < self.window:
                    index = todo[position]
                    out += datas[index]
                    sent.append(index)
                    position += 1
                if head == len(sent):
                    break
                if bool(out) != writing:
                    writing = bool(out)
                    poller.modify(sock, readable | (select.POLLOUT if writing else 0))
                remaining = self._remaining(deadline)
                # poll() takes whole milliseconds: round up, as selectors does.
                ready = poller.poll(None if remaining is None else -(-remaining * 1000 // 1))
                if not ready:
                    raise TimeoutError("no answer from the server")
                for _, mask in ready:
                    # An error or hang-up reports both ways, as selectors does.
                    if mask & ~readable and out:
                        del out[: sock.send(out)]
                    if mask & ~select.POLLOUT:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("connection closed by the server")
                        self._buffer += chunk
        finally:
            if self._sock is sock:
                sock.setblocking(True)
        if again is not None:
            # The intake may close after an EAGAIN refusal: start afresh.
            self._drop()
        return again

    def close(self) -> None:
        """
        Close the connection (idempotent); the producer cannot be used after.
        """
        self._closed = True
        self._drop()

    def __enter__(self) -> LBProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def __getattr__(name: str) -> Any:
    # The Twisted client lives in its own module so that importing this one
    # does not load Twisted (the command line must stay light).
    if name in ("ProducerProtocol", "connect_producer"):
        from lbtwist.client import txproducer

        return getattr(txproducer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
