# -*- test-case-name: tests.unit.test_notif_web -*-
"""
The notification routes of the query port (docs/notifications.md):

  - C{POST /notif} registers; C{GET /notif} lists the caller's registrations
    (JSON, HTML, or text with C{?format=text} / C{Accept: text/plain});
  - C{GET}, C{PUT} (change, refresh, bind) and C{DELETE} C{/notif/<unique>};
    C{GET /NOTIF:<unique>} (a registration's id as L&B writes it) is its object too;
  - C{GET /notif/<unique>/messages?after=N&limit=M} (polling; C{after}
    acknowledges what was read);
  - C{GET /notif/<unique>/stream}: Server-Sent Events, resumed from
    C{Last-Event-ID} or C{?after=N}, a keep-alive comment every
    C{keepalive} seconds, paused while the client does not read.

L{NotifRoot} puts them in front of the query tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbtwist.core.notif import (
    SSE_KEEPALIVE,
    Flags,
    registration_id,
    render_message,
    sse_end,
    sse_event,
)
from lbtwist.core.states.status import format_text_time
from lbtwist.security.identity import Identity
from lbtwist.service import logs
from lbtwist.service.notify import NotifyService, Refused
from lbtwist.service.web import render
from lbtwist.service.web.resources import (
    HTTPError,
    QueryResource,
    _header,
    choose_format,
    send_answer,
    split_query,
)
from lbtwist.store.notif import Message, RegState

log = Logger()

#: Default C{limit} of C{/messages}.
DEFAULT_LIMIT = 100

_JSON = render.CONTENT_TYPES["json"]


def _int_param(name: str, value: str) -> int:
    if not (value.isdigit() and len(value) <= 18):
        raise HTTPError(400, f"{name} must be a non-negative integer")
    return int(value)


def reg_dict(state: RegState, base: str, now: float) -> dict[str, Any]:
    """
    The registration object of the HTTP interface.
    """
    reg = state.reg
    return {
        "id": registration_id(reg.unique, base),
        "unique": reg.unique,
        "owner": reg.owner,
        "conditions": reg.conditions.to_dict(),
        "flags": reg.flags.to_dict(),
        "valid_until": reg.valid_until,
        "expired": reg.expired(now),
        "last_seq": state.last_seq,
        "acked": state.acked,
        "queued": state.queued,
        "dropped": state.dropped,
    }


def _base(request: Request) -> str:
    host = _header(request, b"host")
    if not host:
        address = request.getHost()
        host = f"{request.getRequestHostname().decode('idna', 'replace')}:{address.port}"
    return f"https://{host}"


class NotifRoot(Resource):
    """
    The query port's root: the notification routes, then the query tree.
    """

    isLeaf = True

    def __init__(self, query: QueryResource, notif: NotifResource) -> None:
        super().__init__()
        self.query = query
        self.notif = notif

    def __getattr__(self, name: str) -> Any:
        # The query tree's attributes (store, policy, page_events...) as before.
        if name in ("query", "notif"):
            raise AttributeError(name)
        return getattr(self.query, name)

    def render(self, request: Request) -> Any:
        path = request.postpath or []
        head = path[0].decode("utf-8", "replace") if path else ""
        if head in ("notif", "NOTIF") or head.startswith("NOTIF:"):
            return self.notif.render(request)
        return self.query.render(request)


class NotifResource(Resource):
    """
    The C{/notif} routes over a L{NotifyService}.

    @param identify: the caller of a request, L{None} without a usable certificate.
    @ivar streams: the open event streams, by registration unique.
    """

    isLeaf = True

    def __init__(
        self,
        service: NotifyService,
        *,
        clock: IReactorTime,
        identify: Callable[[Request], Identity | None],
        page_events: int = 500,
    ) -> None:
        super().__init__()
        self.service = service
        self.clock = clock
        self.identify = identify
        self.page_events = page_events
        self.streams: dict[str, set[EventStream]] = {}
        service.add_listener(self.wake)

    def wake(self, uniques: set[str]) -> None:
        """
        New messages (or a change) for these registrations: their streams read on.
        """
        for unique in uniques:
            for stream in list(self.streams.get(unique, ())):
                stream.wake()

    def render(self, request: Request) -> Any:
        d = Deferred.fromCoroutine(self._answer(request))
        d.addErrback(
            lambda f: log.failure("notification request {uri!r} failed", f, uri=request.uri)  # type: ignore[arg-type]
        )
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        method = request.method
        try:
            _, _, raw_query = request.uri.partition(b"?")
            params = split_query(raw_query)
            fmt = choose_format(params, _header(request, b"accept"))
            who = self.identify(request)
            if who is None:
                raise HTTPError(403, "no verified client certificate")
            path = [seg.decode("utf-8", "replace") for seg in request.postpath or []]
            if path and path[-1] == "":
                path.pop()
            if path and path[0].startswith("NOTIF:"):
                path = ["notif", path[0][len("NOTIF:") :], *path[1:]]
            if len(path) == 1 and method in (b"GET", b"HEAD"):
                code, ctype, body = await self._list(request, who, fmt)
            elif len(path) == 1 and method == b"POST":
                code, ctype, body = await self._create(request, who)
            elif len(path) == 2 and method in (b"GET", b"HEAD"):
                code, ctype, body = await self._get(request, who, path[1])
            elif len(path) == 2 and method == b"PUT":
                code, ctype, body = await self._change(request, who, path[1])
            elif len(path) == 2 and method == b"DELETE":
                code, ctype, body = await self._drop(request, who, path[1])
            elif len(path) == 3 and path[2] == "messages" and method in (b"GET", b"HEAD"):
                code, ctype, body = await self._messages(who, path[1], params)
            elif len(path) == 3 and path[2] == "stream" and method == b"GET":
                await self._stream(request, who, path[1], params)
                return
            elif len(path) in (1, 2, 3):
                raise HTTPError(405, f"{method.decode('ascii', 'replace')} not allowed here")
            else:
                raise HTTPError(404, "no such resource")
        except Refused as e:
            code, ctype, body = e.code, _JSON, render.error_body(e.code, e.message)
            if e.code == 400:
                logs.warn(log, "notification request refused: {why}", why=e.message)
        except HTTPError as e:
            code, ctype, body = e.code, _JSON, render.error_body(e.code, e.message)
            if e.code == 400:
                logs.warn(log, "notification request refused: {why}", why=e.message)
        except Exception:
            log.failure("notification request {uri!r} failed", uri=request.uri)
            code, ctype, body = 500, _JSON, render.error_body(500, "internal error")
        if gone:
            return
        send_answer(request, code, ctype, body, method)

    def _body(self, request: Request) -> object:
        most = self.service.settings.max_body
        content = request.content
        data = content.read(most + 1) if content is not None else b""
        if len(data) > most:
            raise HTTPError(413, f"request body over {most} bytes (notify-max-body)")
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, f"the body is not JSON: {e}") from None

    def _object(self, request: Request, state: RegState | None, unique: str) -> bytes:
        if state is None:
            raise HTTPError(404, f"no registration {unique!r}")
        return render.to_json(reg_dict(state, _base(request), self.service.now()))

    async def _create(self, request: Request, who: Identity) -> tuple[int, bytes, bytes]:
        state = await self.service.create(who, self._body(request))
        assert state is not None
        return 201, _JSON, self._object(request, state, state.reg.unique)

    async def _get(self, request: Request, who: Identity, unique: str) -> tuple[int, bytes, bytes]:
        self.service.lookup(who, unique, operate=False)
        state = await self.service.notifications.get(unique)
        return 200, _JSON, self._object(request, state, unique)

    async def _change(
        self, request: Request, who: Identity, unique: str
    ) -> tuple[int, bytes, bytes]:
        state = await self.service.change(who, unique, self._body(request))
        self.wake({unique})
        return 200, _JSON, self._object(request, state, unique)

    async def _drop(self, request: Request, who: Identity, unique: str) -> tuple[int, bytes, bytes]:
        await self.service.drop(who, unique)
        self.wake({unique})
        return (
            200,
            _JSON,
            render.to_json({"dropped": registration_id(unique, _base(request))}),
        )

    async def _list(self, request: Request, who: Identity, fmt: str) -> tuple[int, bytes, bytes]:
        states = await self.service.owned(who)
        now = self.service.now()
        base = _base(request)
        objects = [reg_dict(s, base, now) for s in states]
        if fmt == "text":
            return 200, render.CONTENT_TYPES["text"], list_text(objects).encode("utf-8")
        if fmt == "html":
            return 200, render.CONTENT_TYPES["html"], list_html(objects)
        return 200, _JSON, render.to_json({"registrations": objects})

    def _page_params(self, params: list[tuple[str, str]]) -> tuple[int | None, int]:
        after = None
        limit = DEFAULT_LIMIT
        most = self.service.settings.page_messages
        for name, value in params:
            if name == "after":
                after = _int_param("after", value)
            elif name == "limit":
                limit = _int_param("limit", value)
                if not 1 <= limit <= most:
                    raise HTTPError(400, f"limit must be between 1 and {most}")
            elif name not in ("format", "json"):
                raise HTTPError(400, f"unknown parameter {name!r}")
        return after, min(limit, most)

    async def _messages(
        self, who: Identity, unique: str, params: list[tuple[str, str]]
    ) -> tuple[int, bytes, bytes]:
        after, limit = self._page_params(params)
        reg = self.service.lookup(who, unique)
        notifications = self.service.notifications
        after = await self._acknowledge(unique, after)
        got = await notifications.messages(unique, after, limit)
        bodies = await self.render_messages(got, reg.flags)
        current = notifications.registration(unique) or reg
        return (
            200,
            _JSON,
            b'{"messages":[%s],"next":%d,"valid_until":%d,"expired":%s}'
            % (
                b",".join(bodies),
                got[-1].seq if got else after,
                current.valid_until,
                b"true" if current.expired(self.service.now()) else b"false",
            ),
        )

    async def _acknowledge(self, unique: str, after: int | None) -> int:
        """
        Where a read starts: after C{after} (acknowledging the messages up to it,
        never past the newest), or after the acknowledged ones.
        """
        notifications = self.service.notifications
        state = await notifications.get(unique)
        if state is None:
            raise HTTPError(404, f"no registration {unique!r}")
        if after is None:
            return state.acked
        after = min(after, state.last_seq)
        if after > state.acked:
            await notifications.ack(unique, after)
        return after

    async def render_messages(self, messages: list[Message], flags: Flags) -> list[bytes]:
        """
        The messages as the client gets them (L{render_message}), with the
        C{history} flag the job's events up to each (at most C{page_events}).
        """
        out = []
        for m in messages:
            data, upto = render_message(m.seq, m.body, flags)
            if upto is not None:
                jobid = json.loads(data)["jobid"]
                got = await self.service.store.events_range(jobid, 0, min(upto, self.page_events))
                history = render.to_json([render.event_dict(e) for e in got]).strip()
                data = data[:-1] + b',"history":' + history + b"}"
            out.append(data)
        return out

    async def _stream(
        self, request: Request, who: Identity, unique: str, params: list[tuple[str, str]]
    ) -> None:
        after, _ = self._page_params(params)
        last = _header(request, b"last-event-id").strip()
        if last:
            after = _int_param("Last-Event-ID", last)
        reg = self.service.lookup(who, unique)
        if reg.expired(self.service.now()):
            raise Refused(410, f"registration {unique!r} has expired")
        after = await self._acknowledge(unique, after)
        stream = EventStream(self, request, unique, after)
        stream.start()


class EventStream:
    """
    One open C{/stream} answer: an L{IPushProducer} registered with the request,
    reading at most one page of messages at a time and only while the client
    reads (a paused stream reads nothing: what it holds is bounded by one page).
    """

    def __init__(
        self,
        resource: NotifResource,
        request: Request,
        unique: str,
        after: int,
    ) -> None:
        self.resource = resource
        self.request = request
        self.unique = unique
        self.after = after
        self.paused = False
        self.fetching = False
        self.wanted = True
        self.closed = False
        self.sent = 0
        self._keepalive: IDelayedCall | None = None

    def start(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self._close())
        self.resource.streams.setdefault(self.unique, set()).add(self)
        request.write(SSE_KEEPALIVE)
        self._arm()
        self.wake()

    def _arm(self) -> None:
        clock = self.resource.clock
        self._keepalive = clock.callLater(self.resource.service.settings.keepalive, self._tick)

    def _tick(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        if not self.paused:
            self.request.write(SSE_KEEPALIVE)
        self._arm()
        self.wake()  # notices expiry and drops

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.wanted:
            self.wake()

    def stopProducing(self) -> None:
        self._close()

    def wake(self) -> None:
        """
        Read on if the client reads, else remember to.
        """
        self.wanted = True
        if self.closed or self.paused or self.fetching:
            return
        self.wanted = False
        self.fetching = True
        service = self.resource.service
        d = service.notifications.messages(self.unique, self.after, service.settings.page_messages)
        d.addCallback(self._got)
        d.addErrback(self._failed)

    async def _render(self, messages: list[Message]) -> list[bytes]:
        reg = self.resource.service.notifications.registration(self.unique)
        flags = reg.flags if reg is not None else Flags()
        bodies = await self.resource.render_messages(messages, flags)
        return [sse_event(m.seq, m.kind, data) for m, data in zip(messages, bodies, strict=True)]

    def _got(self, messages: list[Message]) -> Deferred[None] | None:
        if self.closed:
            return None
        return Deferred.fromCoroutine(self._render(messages)).addCallback(self._write, messages)

    def _write(self, events: list[bytes], messages: list[Message]) -> None:
        self.fetching = False
        if self.closed:
            return
        if events:
            self.request.write(b"".join(events))
            self.after = messages[-1].seq
            self.sent += len(events)
        service = self.resource.service
        full = len(messages) >= service.settings.page_messages
        if not full:
            reg = service.notifications.registration(self.unique)
            if reg is None:
                self._end("dropped")
                return
            if reg.expired(service.now()):
                self._end("expired")
                return
        if full or self.wanted:
            self.wake()

    def _failed(self, failure: Any) -> None:
        self.fetching = False
        log.failure("notification stream {unique} failed", failure, unique=self.unique)
        self._end("error")

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.request.write(sse_end(reason))
        self.request.unregisterProducer()
        self.request.finish()
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        streams = self.resource.streams.get(self.unique)
        if streams is not None:
            streams.discard(self)
            if not streams:
                del self.resource.streams[self.unique]


# -- listings ---------------------------------------------------------------------


def list_text(objects: list[dict[str, Any]]) -> str:
    """
    The caller's registrations as text, one block per registration (as L&B's
    C{/NOTIF} page lists them).
    """
    lines = []
    for obj in objects:
        lines.append(f"notification ID: {obj['id']}")
        lines.append(
            f"valid: '{format_text_time(obj['valid_until'] * 1_000_000)}' ({obj['valid_until']})"
        )
        lines.append(f"conditions: {json.dumps(obj['conditions'], sort_keys=True)}")
        flags = [name for name, on in obj["flags"].items() if on]
        lines.append(f"flags: {','.join(flags) or '-'}")
        lines.append(
            f"messages: last {obj['last_seq']}, queued {obj['queued']}, dropped {obj['dropped']}"
        )
        lines.append("")
    return "\n".join(lines)


def list_html(objects: list[dict[str, Any]]) -> bytes:
    """
    The caller's registrations as an HTML page.
    """
    e = render.element
    rows = [
        e(
            "tr",
            None,
            e("td", None, e("a", {"href": "/NOTIF:" + obj["unique"]}, obj["id"])),
            e("td", None, format_text_time(obj["valid_until"] * 1_000_000)),
            e("td", None, json.dumps(obj["conditions"], sort_keys=True)),
            e("td", None, ", ".join(n for n, on in obj["flags"].items() if on) or "-"),
            e("td", None, str(obj["last_seq"])),
            e("td", None, str(obj["dropped"])),
        )
        for obj in objects
    ]
    heads = ("Notification", "Valid until", "Conditions", "Flags", "Last message", "Dropped")
    table = e("table", None, e("tr", None, [e("th", None, h) for h in heads]), rows)
    body = e(
        "div",
        None,
        e("h1", None, "Notifications"),
        table if rows else e("p", None, "No registrations."),
    )
    return render._page("Notifications", body)
