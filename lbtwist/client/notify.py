# -*- test-case-name: tests.unit.test_notify_client -*-
"""
The notification client (docs/notifications.md): registrations over HTTPS and a
consumer of a registration's message stream.

L{NotifyClient} asks the query port for the request/answer operations (new,
show, bind/change/refresh, drop, list, a page of messages) with the TLS
context and credentials of L{lbtwist.client.query} (one L{QueryClient}
underneath: its agent, its certificate checks, its failure descriptions).

L{NotificationStream} reads C{GET /notif/<unique>/stream} (Server-Sent
Events) and hands every message, in sequence order and once, to a callback;
it reconnects with C{Last-Event-ID} and a backoff when the connection breaks
(a restarted service, a network cut, a silent peer), and polls
C{/notif/<unique>/messages} instead when the server has no stream or when
asked to. A callback that returns a L{Deferred} pauses the stream until it
fires, so a slow consumer never makes the client buffer without bound.
L{stream} wraps it as an asynchronous iterator (C{async for message in
stream(...)}).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import attrs
from OpenSSL import SSL
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone, readBody
from twisted.web.http_headers import Headers

from lbtwist.client.query import QueryClient, QueryError, base_url
from lbtwist.core.errors import LBError
from lbtwist.core.jobid import parse_endpoint
from lbtwist.core.notif import (  # noqa: F401 (the consumer's defaults live with the core)
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_INTERVAL,
    NOTIF_SERVER_ENV,
)

log = Logger()

#: What precedes the unique part of a notification id's path.
NOTIF_MARK = "NOTIF:"
#: A registration's unique part: URL-safe characters only.
_UNIQUE = re.compile(r"[A-Za-z0-9._~-]{1,128}")

DEFAULT_RETRY_MAX = 30.0

#: HTTP answers after which a consumer stops for good (the others are retried).
_PERMANENT = frozenset((400, 401, 403, 404))
#: HTTP answers that mean "this server has no stream": poll instead.
_NO_STREAM = frozenset((405, 406, 501))

SSE_TYPE = b"text/event-stream"


def lb_time(epoch: int) -> str:
    """
    A time as L&B's notification tools print it: C{'YYYY-MM-DD HH:MM:SS UTC'}.
    """
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("'%Y-%m-%d %H:%M:%S UTC'")


@attrs.frozen
class NotifId:
    """
    A notification id, L&B's C{https://<host>:<port>/NOTIF:<unique>}.
    """

    host: str
    port: int
    unique: str

    @classmethod
    def parse(cls, text: str, *, endpoint: str | None = None) -> NotifId:
        """
        Parse a notification id; C{NOTIF:<unique>} or the bare unique part
        need C{endpoint} (C{host:port}) to say where it lives.

        @raise QueryError: malformed.
        """
        body = text.strip()
        unique = body
        host_port: tuple[str, int] | None = None
        if body.startswith("https://"):
            parts = urlsplit(body)
            path = parts.path.lstrip("/")
            if not path.startswith(NOTIF_MARK) or parts.query or parts.fragment:
                raise QueryError(f"bad notification ID {text!r} (not https://host:port/NOTIF:...)")
            unique = path[len(NOTIF_MARK) :]
            try:
                host_port = parse_endpoint(parts.netloc)
            except LBError:
                raise QueryError(f"bad notification ID {text!r} (bad server)") from None
        elif body.startswith(NOTIF_MARK):
            unique = body[len(NOTIF_MARK) :]
        if not _UNIQUE.fullmatch(unique):
            raise QueryError(f"bad notification ID {text!r}")
        if endpoint:
            host_port = server_of(endpoint)
        if host_port is None:
            raise QueryError(
                f"notification ID {text!r} names no server: give https://host:port/NOTIF:... "
                f"or --endpoint"
            )
        return cls(host_port[0], host_port[1], unique)

    @property
    def base(self) -> str:
        return base_url(self.host, self.port)

    @property
    def path(self) -> str:
        """
        The registration's route on the query port.
        """
        return "/notif/" + quote(self.unique, safe="")

    def __str__(self) -> str:
        return f"{self.base}/{NOTIF_MARK}{self.unique}"


def server_of(text: str) -> tuple[str, int]:
    """
    A server given as C{host:port} (or C{https://host:port/}).

    @raise QueryError: malformed.
    """
    try:
        return parse_endpoint(text)
    except LBError as e:
        raise QueryError(e.message) from None


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryError(f"unexpected answer from the server ({key!r} is not a number)")
    return int(value)


@attrs.frozen
class Registration:
    """
    A registration as the server describes it.
    """

    id: str
    unique: str
    owner: str | None
    conditions: dict[str, Any]
    flags: dict[str, Any]
    valid_until: int
    last_seq: int
    dropped: int

    @classmethod
    def from_json(cls, data: Any) -> Registration:
        """
        @raise QueryError: not a registration object.
        """
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise QueryError("unexpected answer from the server (no registration)")
        unique = data.get("unique")
        if not isinstance(unique, str):
            unique = data["id"].rpartition(NOTIF_MARK)[2]
        conditions = data.get("conditions") or {}
        flags = data.get("flags") or {}
        owner = data.get("owner")
        return cls(
            id=data["id"],
            unique=unique,
            owner=owner if isinstance(owner, str) else None,
            conditions=dict(conditions) if isinstance(conditions, dict) else {},
            flags=dict(flags) if isinstance(flags, dict) else {},
            valid_until=_int(data, "valid_until"),
            last_seq=_int(data, "last_seq", 0),
            dropped=_int(data, "dropped", 0),
        )


@attrs.frozen
class Notification:
    """
    One message of a registration's queue: a job's status (C{kind}
    C{"status"}) or a gap marker (C{kind} C{"gap"}: C{dropped} messages were
    dropped by the queue's bound before this one).
    """

    seq: int
    kind: str
    jobid: str | None = None
    status: dict[str, Any] | None = None
    history: list[Any] | None = None
    jdl: str | None = None
    dropped: int = 0

    @classmethod
    def from_json(cls, data: Any, *, seq: int | None = None) -> Notification:
        """
        @param seq: the sequence number if the transport carried it (SSE C{id:}).
        @raise QueryError: not a message object.
        """
        if not isinstance(data, dict):
            raise QueryError("unexpected message from the server (not a JSON object)")
        number = _int(data, "seq", seq)
        kind = data.get("kind", "status")
        if kind == "gap":
            return cls(seq=number, kind="gap", dropped=_int(data, "dropped", 0))
        status = data.get("status")
        if not isinstance(status, dict):
            raise QueryError(f"unexpected message {number} from the server (no status)")
        jobid = data.get("jobid") or status.get("jobId")
        history = data.get("history")
        jdl = data.get("jdl")
        return cls(
            seq=number,
            kind=str(kind),
            jobid=str(jobid) if jobid else None,
            status=status,
            history=history if isinstance(history, list) else None,
            jdl=jdl if isinstance(jdl, str) else None,
        )


@attrs.frozen
class MessagePage:
    """
    One answer of C{GET /notif/<unique>/messages}.
    """

    messages: list[Notification]
    next: int
    valid_until: int | None
    expired: bool


def registration_body(
    *,
    jobids: Sequence[str] = (),
    owner: str | None = None,
    network_server: str | None = None,
    vo: str | None = None,
    destination: str | None = None,
    states: Sequence[str] = (),
    flags: Mapping[str, bool] | None = None,
    validity: int | None = None,
) -> dict[str, Any]:
    """
    The JSON body of C{POST /notif} (and of a change): only what is given.

    @param owner: a DN, or C{"self"} for the caller's own.
    """
    conditions: dict[str, Any] = {}
    if jobids:
        conditions["jobid"] = list(jobids)
    if owner:
        conditions["owner"] = owner
    if network_server:
        conditions["network_server"] = network_server
    if vo:
        conditions["vo"] = vo
    if destination:
        conditions["destination"] = destination
    if states:
        conditions["states"] = list(states)
    body: dict[str, Any] = {}
    if conditions:
        body["conditions"] = conditions
    if flags and any(flags.values()):
        body["flags"] = {k: bool(v) for k, v in flags.items() if v}
    if validity is not None:
        body["validity"] = validity
    return body


def _detail(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


def notif_error(code: int, body: bytes, what: str) -> QueryError:
    """
    The L{QueryError} of an HTTP error answer about C{what} (a notification
    id, or what was asked for).
    """
    detail = _detail(body)
    if code == 404:
        text = f"404 no such notification {what}"
    elif code == 410:
        text = f"410 notification {what} has expired"
    elif code == 403:
        text = f"403 not allowed ({what})" + (f": {detail}" if detail else "")
    elif code == 400:
        text = f"400 bad request ({detail or what})"
    else:
        text = f"HTTP {code} for {what}" + (f": {detail}" if detail else "")
    return QueryError(text, status=code)


class _ConnectFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotifyClient:
    """
    The request/answer operations on registrations (the contract in
    docs/notifications.md), over one L{QueryClient}.
    """

    def __init__(self, query: QueryClient) -> None:
        self.query = query
        self.reactor = query.reactor

    async def request(
        self,
        method: bytes,
        bases: Sequence[str],
        path: str,
        *,
        what: str,
        body: Any = None,
        accept: bytes = b"application/json",
    ) -> tuple[int, Headers, bytes]:
        """
        One request to the first of C{bases} that accepts a connection.

        @return: the status code, headers and body of the answer (any code).
        @raise QueryError: no server could be reached, or TLS failed.
        """
        refused: list[str] = []
        for base in bases:
            try:
                return await self._once(method, base + path, body, accept)
            except _ConnectFailed as e:
                refused.append(e.message)
        raise QueryError(f"cannot connect to any server for {what}: {'; '.join(refused)}")

    async def _once(
        self, method: bytes, url: str, body: Any, accept: bytes
    ) -> tuple[int, Headers, bytes]:
        headers = Headers({b"Accept": [accept], b"User-Agent": [b"lbtwist"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        self.query.verify_log.clear()
        try:
            d = self.query.agent.request(method, url.encode("ascii"), headers, producer)
            d.addTimeout(self.query.timeout, self.reactor)
            response = await d
            data = await readBody(response)
        except Exception:
            connect, message = self.query._describe(Failure(), url)
            if connect:
                raise _ConnectFailed(message) from None
            raise QueryError(message) from None
        return response.code, response.headers, data

    async def _json(
        self, method: bytes, bases: Sequence[str], path: str, what: str, body: Any = None
    ) -> Any:
        code, _, data = await self.request(method, bases, path, what=what, body=body)
        if not 200 <= code < 300:
            raise notif_error(code, data, what)
        try:
            return json.loads(data)
        except ValueError:
            raise QueryError(f"{what}: the server's answer is not JSON") from None

    async def create(self, bases: Sequence[str], body: Mapping[str, Any]) -> Registration:
        """
        C{POST /notif}: a new registration.
        """
        data = await self._json(b"POST", bases, "/notif", "a new notification", dict(body))
        return Registration.from_json(data)

    async def show(self, nid: NotifId, bases: Sequence[str] | None = None) -> Registration:
        data = await self._json(b"GET", bases or [nid.base], nid.path, str(nid))
        return Registration.from_json(data)

    async def update(
        self, nid: NotifId, body: Mapping[str, Any], bases: Sequence[str] | None = None
    ) -> Registration:
        """
        C{PUT /notif/<unique>}: C{{}} binds, C{{"validity": s}} refreshes,
        C{conditions}/C{flags} change.
        """
        data = await self._json(b"PUT", bases or [nid.base], nid.path, str(nid), dict(body))
        return Registration.from_json(data)

    async def drop(self, nid: NotifId, bases: Sequence[str] | None = None) -> None:
        await self._json(b"DELETE", bases or [nid.base], nid.path, str(nid))

    async def registrations(self, bases: Sequence[str]) -> list[Registration]:
        """
        C{GET /notif}: the caller's registrations.
        """
        data = await self._json(b"GET", bases, "/notif", "the notification list")
        items = data.get("registrations") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise QueryError("unexpected answer from the server (no registration list)")
        return [Registration.from_json(item) for item in items]

    async def messages(
        self, nid: NotifId, after: int, limit: int, bases: Sequence[str] | None = None
    ) -> MessagePage:
        """
        C{GET /notif/<unique>/messages?after=N&limit=M}; C{after} acknowledges.
        """
        path = f"{nid.path}/messages?{urlencode({'after': after, 'limit': limit})}"
        data = await self._json(b"GET", bases or [nid.base], path, str(nid))
        return page_of(data, after)


def page_of(data: Any, after: int) -> MessagePage:
    """
    A L{MessagePage} from the JSON of C{/messages}.

    @raise QueryError: not such an answer.
    """
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise QueryError("unexpected answer from the server (no message list)")
    messages = [Notification.from_json(m) for m in data["messages"]]
    valid = data.get("valid_until")
    return MessagePage(
        messages=messages,
        next=_int(data, "next", messages[-1].seq if messages else after),
        valid_until=int(valid) if isinstance(valid, int | float) else None,
        expired=bool(data.get("expired")),
    )


# Server-Sent Events.


class SSEError(Exception):
    """
    The event stream broke a limit or the format.
    """


@attrs.frozen
class SSEEvent:
    """
    One dispatched event: its C{id:} (L{None} if it had none), C{event:}
    (C{"message"} by default) and C{data:} lines joined by LF.
    """

    id: str | None
    event: str
    data: str


class SSEDecoder:
    """
    An incremental decoder of C{text/event-stream} (the WHATWG format: LF, CR
    or CRLF line ends, C{:} comments, C{data}, C{event}, C{id}, C{retry}).

    @ivar retry: the last C{retry:} the server sent (milliseconds), or None.
    @ivar comments: how many comment lines (keep-alives) were read.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be at least 1")
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self.retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """
        @return: the events completed by C{chunk}.
        @raise SSEError: an event (or one line) longer than the bound.
        """
        out: list[SSEEvent] = []
        data = self._buffer + chunk
        start = 0
        if self._skip_lf and data[:1] == b"\n":
            start = 1
        self._skip_lf = False
        n = len(data)
        while start < n:
            lf = data.find(b"\n", start)
            cr = data.find(b"\r", start, lf if lf >= 0 else n)
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            line = data[start:end]
            if end == cr:
                if end + 1 < n:
                    start = end + 2 if data[end + 1 : end + 2] == b"\n" else end + 1
                else:
                    start = end + 1
                    self._skip_lf = True
            else:
                start = end + 1
            event = self._line(line)
            if event is not None:
                out.append(event)
        self._buffer = data[start:]
        if len(self._buffer) + self._size > self.max_event_bytes:
            raise SSEError(f"an event of more than {self.max_event_bytes} bytes")
        return out

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            self.comments += 1
            return None
        line = raw.decode("utf-8", "replace")
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(raw)
            if self._size > self.max_event_bytes:
                raise SSEError(f"an event of more than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return SSEEvent(self._id, event or "message", "\n".join(data))


def sse_messages(event: SSEEvent) -> Notification | None:
    """
    The message an C{event: status|gap} carries (None for other events).

    @raise QueryError: a status or gap event whose data is not a message.
    """
    if event.event not in ("status", "gap", "message"):
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        raise QueryError(
            f"unexpected event from the server (data not JSON): {event.data[:80]!r}"
        ) from None
    seq = int(event.id) if event.id is not None and event.id.isdigit() else None
    return Notification.from_json(data, seq=seq)


# The consumer.

#: What a consumer callback returns: nothing, or a Deferred to wait for.
OnMessage = Callable[[Notification], "Deferred[Any] | None"]


class StreamEnded(Exception):
    """
    The registration ended: it expired or was dropped (C{reason}).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Retry(Exception):
    """
    A failure worth another attempt (the service restarting, a cut).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _SSEBody(Protocol):
    """
    Feeds a response body to the decoder and the stream.
    """

    def __init__(self, stream: NotificationStream, decoder: SSEDecoder) -> None:
        self.stream = stream
        self.decoder = decoder
        self.done: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.stream._activity()
        try:
            events = self.decoder.feed(data)
        except SSEError as e:
            self.stream._broken(str(e))
            return
        self.stream._events(events)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason if reason is not None else Failure(ResponseDone())
        self.done.callback(None)


class NotificationStream:
    """
    Consume a registration: every message after C{after}, in order and once,
    to C{on_message}; across reconnections (C{Last-Event-ID}), with a backoff
    between attempts, and by polling when there is no stream.

    @ivar last_seq: the last sequence number handed over (and acknowledged on
        the next request).
    @ivar connects: how many times a stream (or poll) was answered.
    @ivar duplicates: messages skipped because they were handed over already.
    """

    def __init__(
        self,
        client: NotifyClient,
        nid: NotifId,
        on_message: OnMessage,
        *,
        after: int = 0,
        clock: Any = None,
        bases: Sequence[str] | None = None,
        mode: str = "auto",
        retry: Callable[[int], float] | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_connect: Callable[[int], None] | None = None,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> None:
        """
        @param mode: C{"stream"}, C{"poll"} or C{"auto"} (stream, polling if
            the server has none).
        @param retry: attempt number (0 first) -> seconds to wait before it;
            default L{backoffPolicy} up to L{DEFAULT_RETRY_MAX} seconds.
        @param idle_timeout: a stream silent this long (no message, no
            keep-alive) is dropped and opened again.
        @param on_connect: called with L{last_seq} whenever a stream or a
            poll is answered.
        @param on_retry: called with why and the seconds until the next
            attempt whenever an attempt failed or a stream broke.
        """
        if mode not in ("auto", "stream", "poll"):
            raise ValueError(f"unknown mode {mode!r}")
        if page_size < 1 or idle_timeout <= 0 or poll_interval <= 0:
            raise ValueError("page_size, idle_timeout and poll_interval must be positive")
        self.client = client
        self.nid = nid
        self.on_message = on_message
        self.last_seq = after
        self.clock = clock if clock is not None else client.reactor
        self.bases = list(bases) if bases else [nid.base]
        self.mode = mode
        self.retry = retry or backoffPolicy(initialDelay=0.5, maxDelay=DEFAULT_RETRY_MAX)
        self.idle_timeout = idle_timeout
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.max_message_bytes = max_message_bytes
        self.on_connect = on_connect
        self.on_retry = on_retry
        self.connects = 0
        self.duplicates = 0
        self._failures = 0
        self._stopping = False
        self._ended: str | None = None
        self._error: BaseException | None = None
        self._wait: Deferred[Any] | None = None
        self._body: _SSEBody | None = None
        self._idle: IDelayedCall | None = None
        self._backlog: deque[Notification] = deque()
        self._busy = False
        self._paused = False
        self._drained: Deferred[None] | None = None
        self._finished: Deferred[str] | None = None

    def start(self) -> Deferred[str]:
        """
        Start consuming.

        @return: fires with why it ended (C{"stopped"}, or the registration's
            end: C{"expired"}, C{"dropped"}); fails with L{QueryError} on a
            permanent error (unknown registration, not allowed, bad TLS) or
            with what C{on_message} raised.
        """
        assert self._finished is None, "started already"
        self._finished = Deferred.fromCoroutine(self._run())
        return self._finished

    def stop(self) -> None:
        """
        Stop: the connection is closed, no further message is handed over.
        """
        self._stopping = True
        self._backlog.clear()
        self._interrupt()
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _interrupt(self) -> None:
        if self._wait is not None and not self._wait.called:
            self._wait.cancel()
        self._body_transport("stopProducing")

    # The loop.

    async def _run(self) -> str:
        while True:
            if self._stopping:
                return "stopped"
            try:
                if self.mode == "poll":
                    ended = await self._poll()
                else:
                    ended = await self._stream()
            except _Retry as e:
                if self._error is not None:
                    raise self._error from None
                if self._stopping:
                    return "stopped"
                delay = self.retry(self._failures)
                self._failures += 1
                log.info(
                    "notification stream {nid}: {why}; again in {delay:.1f}s",
                    nid=str(self.nid),
                    why=e.message,
                    delay=delay,
                )
                if self.on_retry is not None:
                    self.on_retry(e.message, delay)
                await self._sleep(delay)
                continue
            except CancelledError:
                if self._stopping:
                    return "stopped"
                raise
            if self._error is not None:
                raise self._error
            if ended is not None:
                return ended

    async def _sleep(self, seconds: float) -> None:
        d: Deferred[None] = Deferred()
        call = self.clock.callLater(seconds, d.callback, None)
        self._wait = d
        try:
            await d
        except CancelledError:
            if call.active():
                call.cancel()
        finally:
            self._wait = None

    async def _request(self, path: str, headers: dict[bytes, bytes]) -> Any:
        """
        Start a GET of C{path}; returns the response (body not read).

        @raise _Retry: the server could not be reached.
        @raise QueryError: TLS failed (not retried).
        """
        url = self.bases[0] + path
        all_headers = Headers({b"User-Agent": [b"lbtwist"]})
        for name, value in headers.items():
            all_headers.addRawHeader(name, value)
        self.client.query.verify_log.clear()
        d = self.client.query.agent.request(b"GET", url.encode("ascii"), all_headers, None)
        self._wait = d
        try:
            return await d
        except CancelledError:
            raise
        except Exception:
            failure = Failure()
            connect, message = self.client.query._describe(failure, url)
            if not connect and failure.check(SSL.Error) is not None:
                if self.client.query.verify_log.errors or self.client.query.verify_log.rejected:
                    raise QueryError(message) from None
            raise _Retry(message) from None
        finally:
            self._wait = None

    async def _read_error(self, response: Any) -> None:
        """
        Turn a non-2xx answer into an end, an error or a retry.
        """
        try:
            body = await readBody(response)
        except Exception:
            body = b""
        code = response.code
        if code == 410:
            self._ended = "expired"
            return
        if code in _PERMANENT:
            raise notif_error(code, body, str(self.nid))
        raise _Retry(str(notif_error(code, body, str(self.nid))))

    def _answered(self) -> None:
        self._failures = 0
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect(self.last_seq)

    async def _stream(self) -> str | None:
        after = str(self.last_seq).encode()
        response = await self._request(
            f"{self.nid.path}/stream?after={self.last_seq}",
            {b"Accept": SSE_TYPE, b"Last-Event-ID": after, b"Cache-Control": b"no-cache"},
        )
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if response.code in _NO_STREAM or (
            response.code == 200 and not kind.lower().startswith(SSE_TYPE)
        ):
            if self.mode == "auto":
                log.info("{nid}: no event stream, polling", nid=str(self.nid))
                self.mode = "poll"
                response.deliverBody(_Discard())
                return None
        if response.code != 200:
            await self._read_error(response)
            return self._ended
        self._answered()
        body = _SSEBody(self, SSEDecoder(self.max_message_bytes))
        self._body = body
        self._activity()
        response.deliverBody(body)
        await body.done
        reason = body.reason
        self._body = None
        self._cancel_idle()
        await self._drain()
        if self._ended is not None or self._stopping or self._error is not None:
            return self._ended
        why = "the server closed the stream"
        if reason is not None and not reason.check(ResponseDone):
            why = f"stream lost ({reason.getErrorMessage() or reason.value!r})"
        raise _Retry(why)

    async def _poll(self) -> str | None:
        while not self._stopping:
            try:
                page = await self.client.messages(
                    self.nid, self.last_seq, self.page_size, self.bases
                )
            except QueryError as e:
                if e.status == 410:
                    return "expired"
                if e.status in _PERMANENT:
                    raise
                raise _Retry(str(e)) from None
            self._answered()
            for message in page.messages:
                if self._stopping:
                    return None
                await self._hand_over(message)
            if page.expired:
                return "expired"
            if len(page.messages) < self.page_size:
                await self._sleep(self.poll_interval)
        return None

    async def _hand_over(self, message: Notification) -> None:
        if message.seq <= self.last_seq:
            self.duplicates += 1
            return
        result = self.on_message(message)
        if isinstance(result, Deferred):
            await result
        self.last_seq = message.seq

    # The stream's events, in the reactor's callbacks.

    def _activity(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        else:
            self._idle = self.clock.callLater(self.idle_timeout, self._silent)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _silent(self) -> None:
        self._idle = None
        log.info(
            "notification stream {nid}: silent for {s}s, reconnecting",
            nid=str(self.nid),
            s=self.idle_timeout,
        )
        self._body_transport("stopProducing")

    def _broken(self, why: str) -> None:
        self._error = QueryError(f"{self.nid}: {why}")
        self._backlog.clear()
        self._body_transport("stopProducing")

    def _events(self, events: list[SSEEvent]) -> None:
        for event in events:
            if self._ended is not None or self._error is not None:
                return
            if event.event == "end":
                self._ended = _end_reason(event.data)
                continue
            try:
                message = sse_messages(event)
            except QueryError as e:
                self._broken(str(e))
                return
            if message is not None:
                self._backlog.append(message)
        self._pump()

    def _pump(self) -> None:
        while self._backlog and not self._busy and not self._stopping:
            message = self._backlog.popleft()
            if message.seq <= self.last_seq:
                self.duplicates += 1
                continue
            try:
                result = self.on_message(message)
            except BaseException as e:
                self._fail(e)
                return
            if isinstance(result, Deferred):
                self._busy = True
                self._pause()
                result.addCallbacks(self._taken, self._refused, callbackArgs=(message.seq,))
                return
            self.last_seq = message.seq
        if not self._backlog and not self._busy:
            self._resume()
            if self._drained is not None:
                d, self._drained = self._drained, None
                d.callback(None)

    def _taken(self, _: object, seq: int) -> None:
        self._busy = False
        self.last_seq = seq
        self._pump()

    def _refused(self, failure: Failure) -> None:
        self._busy = False
        self._fail(failure.value if failure.value is not None else RuntimeError("failed"))

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._backlog.clear()
        self._body_transport("stopProducing")
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _body_transport(self, method: str) -> None:
        """
        Call C{pauseProducing}, C{resumeProducing} or C{stopProducing} of the
        stream's body (an L{IPushProducer}), if a body is being read.
        """
        transport: Any = self._body.transport if self._body is not None else None
        if transport is not None:
            getattr(transport, method)()

    def _pause(self) -> None:
        if not self._paused and self._body is not None:
            self._paused = True
            self._body_transport("pauseProducing")

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._body_transport("resumeProducing")

    async def _drain(self) -> None:
        """
        Wait until the messages already read are handed over.
        """
        self._paused = False
        if (self._backlog or self._busy) and not self._stopping and self._error is None:
            self._drained = Deferred()
            await self._drained


def _end_reason(data: str) -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return data.strip() or "ended"
    if isinstance(value, dict):
        for key in ("reason", "why", "state"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return "ended"


class _Discard(Protocol):
    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


class NotificationIterator:
    """
    A registration's messages as an asynchronous iterator (L{stream}); at
    most C{max_buffered} messages wait for the reader, then the stream pauses.
    Ends (C{StopAsyncIteration}) when the registration expires or is dropped
    or on L{close}; raises the stream's permanent error.
    """

    def __init__(self, make: Callable[[OnMessage], NotificationStream], max_buffered: int) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.max_buffered = max_buffered
        self._queue: deque[Notification] = deque()
        self._reader: Deferred[Notification | None] | None = None
        self._room: Deferred[None] | None = None
        self._end: Failure | None = None
        self._done = False
        self.stream = make(self._offer)
        self._finished: Deferred[str] | None = None
        self.ended: str | None = None

    def __aiter__(self) -> NotificationIterator:
        return self

    def _offer(self, message: Notification) -> Deferred[None] | None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.callback(message)
            return None
        self._queue.append(message)
        if len(self._queue) >= self.max_buffered:
            self._room = Deferred()
            return self._room
        return None

    def _finish(self, result: str | Failure) -> None:
        self._done = True
        if isinstance(result, Failure):
            self._end = result
        else:
            self.ended = result
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.callback(None)

    async def __anext__(self) -> Notification:
        if self._finished is None:
            self._finished = self.stream.start()
            self._finished.addBoth(self._finish)
        if self._queue:
            message = self._queue.popleft()
            if self._room is not None and len(self._queue) < self.max_buffered:
                room, self._room = self._room, None
                room.callback(None)
            return message
        if not self._done:
            self._reader = Deferred()
            got = await self._reader
            if got is not None:
                return got
        if self._end is not None:
            self._end.raiseException()
        raise StopAsyncIteration

    def close(self) -> None:
        """
        Stop the stream; the iteration ends.
        """
        self.stream.stop()
        if self._finished is None:
            self._done = True

    async def aclose(self) -> None:
        self.close()


def stream(
    client: NotifyClient,
    nid: NotifId,
    *,
    after: int = 0,
    max_buffered: int = 64,
    **options: Any,
) -> NotificationIterator:
    """
    C{async for message in stream(client, nid, after=N): ...}: the messages
    of registration C{nid} after sequence C{after} (see L{NotificationStream}
    for C{options}).
    """
    return NotificationIterator(
        lambda on_message: NotificationStream(client, nid, on_message, after=after, **options),
        max_buffered,
    )


async def collect(iterator: AsyncIterator[Notification], n: int) -> list[Notification]:
    """
    The next C{n} messages of C{iterator} (fewer if it ends first).
    """
    found: list[Notification] = []
    while len(found) < n:
        try:
            found.append(await iterator.__anext__())
        except StopAsyncIteration:
            break
    return found
