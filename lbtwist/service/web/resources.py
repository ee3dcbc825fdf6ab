# -*- test-case-name: tests.unit.test_web -*-
"""
The query resources: C{/<unique>} (status), C{/<unique>/events} and
C{?flags=history} (logging-info), C{/} (job lists), in JSON, text or HTML.

Who asks comes from an injected C{identify(request) -> Identity | None}; what
they may read is decided by L{lbtwist.security.authz.can_read}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlencode

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbtwist.core.seqcode import ordering_key
from lbtwist.core.states.status import PURGED, JobStatus
from lbtwist.security.authz import Policy, can_read, is_super_user
from lbtwist.security.identity import Identity, same_dn
from lbtwist.service.web import dump, render, timeline
from lbtwist.service.web.conditions import ConditionError, parse_conditions, parse_time, parse_value
from lbtwist.store.interface import IEventStore
from lbtwist.store.query import JobCondition, JobQuery, decode_cursor, encode_cursor

log = Logger()

#: Longest request URI accepted (longer: 414).
MAX_URI = 8192

#: Largest and default page of a job list.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

_UNIQUE = re.compile(r"[A-Za-z0-9_.~-]{1,200}")

#: C{text}, C{json}, C{html} and C{format} choose the format (the job list's own
#: parameters are in L{_LIST_PARAM_HANDLERS}).
_FORMAT_PARAMS = frozenset({"format", "text", "json", "html"})
_JOB_PARAMS = frozenset({"flags", "events_from"}) | timeline.PARAMS

#: Events per page of a job's history (the C{page-events} option).
DEFAULT_PAGE_EVENTS = 500

Identify = Callable[[Request], "Identity | None"]


class HTTPError(Exception):
    """
    An error answer: HTTP status and message (sent as C{{"error", "message"}} JSON).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def split_query(raw: bytes) -> list[tuple[str, str]]:
    """
    The C{name=value} pairs of a raw query string, decoded, in order.

    @raise HTTPError: not UTF-8.
    """
    pairs = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        try:
            text = unquote(piece.replace(b"+", b" ").decode("ascii"), errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "query string is not URL-encoded UTF-8") from None
        name, _, value = text.partition("=")
        pairs.append((name, value))
    return pairs


def choose_format(params: Iterable[tuple[str, str]], accept: str) -> str:
    """
    The response format: C{format=}, C{?text}/C{?json}/C{?html}, then C{Accept}
    (JSON unless the client prefers HTML or plain text).

    @raise HTTPError: an unknown C{format=}.
    """
    for name, value in params:
        if name == "format":
            if value not in render.FORMATS:
                raise HTTPError(400, f"format must be one of {', '.join(render.FORMATS)}")
            return value
        if name in render.FORMATS:
            return name
    best, best_q = "json", -1.0
    for item in accept.split(","):
        media, *opts = (p.strip() for p in item.split(";"))
        q = 1.0
        for opt in opts:
            if opt.startswith("q="):
                try:
                    q = float(opt[2:])
                except ValueError:
                    q = 0.0
        kind = {"application/json": "json", "text/html": "html", "text/plain": "text"}.get(
            media.lower()
        )
        if kind is not None and q > best_q:
            best, best_q = kind, q
    return best


@attrs.define
class _ListRequest:
    """
    A job list request while its parameters are read.
    """

    now: int
    owner: str | None
    limit: int
    after: Any = None
    conditions: list[JobCondition] = attrs.Factory(list)
    keep: list[tuple[str, str]] = attrs.Factory(list)


def _query(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    request.conditions.extend(parse_conditions(value, now=request.now))


def _owner(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    request.owner = None if value in ("*", "") else value


def _alternatives(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    alts = tuple(("=", parse_value(name, v, now=request.now)) for v in value.split(","))
    request.conditions.append(JobCondition(name, alts))


def _since(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    moment = parse_time(value, now=request.now)
    request.conditions.append(JobCondition("lastUpdateTime", ((">=", moment),)))


def _until(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    moment = parse_time(value, now=request.now)
    request.conditions.append(JobCondition("lastUpdateTime", (("<", moment),)))


def _limit(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    if not value.isdigit() or not 1 <= int(value) <= max_limit:
        raise HTTPError(400, f"limit must be 1 to {max_limit}")
    request.limit = int(value)


def _cursor(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    request.after = decode_cursor(value)


def _bare_conditions(request: _ListRequest, name: str, value: str, max_limit: int) -> None:
    # An unencoded & inside ?query= splits it: take the rest as conditions.
    bare = value == "" and any(c in name for c in "<>!")
    text = name if bare else f"{name}={value}"
    try:
        request.conditions.extend(parse_conditions(text, now=request.now))
    except ConditionError as e:
        raise HTTPError(400, f"unknown parameter {name!r} ({e})") from None


#: Each job list parameter and how it narrows the query: C{(request, name,
#: value, max_limit)}; names not listed are read as L&B conditions.
_LIST_PARAM_HANDLERS: dict[str, Callable[[_ListRequest, str, str, int], None]] = {
    "query": _query,
    "owner": _owner,
    "state": _alternatives,
    "jobtype": _alternatives,
    "since": _since,
    "until": _until,
    "limit": _limit,
    "cursor": _cursor,
}


def _authorize_list(
    who: Identity, privileged: bool, owner: str | None, conditions: Iterable[JobCondition]
) -> None:
    """
    Who may list what: anyone their own jobs; super users and READ_ALL holders
    any owner's, and they alone may name an owner in conditions.

    @raise HTTPError: 403.
    """
    if privileged:
        return
    if any(cond.field == "owner" for cond in conditions):
        raise HTTPError(403, "only super users may query by owner")
    if owner is None or not same_dn(owner, who.dn):
        raise HTTPError(403, "only super users may list other users' jobs")


def send_answer(request: Request, code: int, ctype: bytes, body: bytes, method: bytes) -> None:
    """
    Finish C{request} with a whole answer: C{code}, C{body} of type C{ctype}, not
    to be cached or sniffed, an HTML page kept from loading anything; the body
    left out for a C{HEAD} request.

    @param method: the request's method.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", ctype)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if ctype.startswith(b"text/html"):
        request.setHeader(
            b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"
        )
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    if method != b"HEAD":
        request.write(body)
    request.finish()


class QueryResource(Resource):
    """
    The whole query tree (a leaf: it dispatches on the path itself).

    @param store: an L{lbtwist.store.interface.IEventStore} (C{find_status},
        C{events}, C{query_jobs}).
    @param clock: provides C{seconds()} (relative times in queries).
    @param identify: the caller of a request, L{None} without a usable certificate.
    """

    isLeaf = True

    #: Admin requests, C{POST /admin/<name>}: C{admin(request, who, path, params)} giving
    #: C{(code, content type, body)} (L{lbtwist.service.web.admin}); L{None}: none.
    admin: Callable[..., Any] | None = None
    #: The limits of C{/stats} and C{/trace} (L{lbtwist.service.web.stats.LifecycleLimits}).
    lifecycle: Any = None

    def __init__(
        self,
        store: IEventStore,
        *,
        clock: IReactorTime,
        policy: Policy,
        super_users: Iterable[str],
        identify: Identify,
        max_uri: int = MAX_URI,
        max_limit: int = MAX_LIMIT,
        page_events: int = DEFAULT_PAGE_EVENTS,
    ) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.policy = policy
        self.super_users = tuple(super_users)
        self.identify = identify
        self.max_uri = max_uri
        self.max_limit = max_limit
        self.page_events = page_events

    def render_GET(self, request: Request) -> Any:
        d = Deferred.fromCoroutine(self._answer(request))
        d.addErrback(
            lambda f: log.failure("query {uri!r} failed", f, uri=request.uri)  # type: ignore[arg-type]
        )
        return NOT_DONE_YET

    render_POST = render_GET

    def now(self) -> int:
        """
        @return: the clock's time in microseconds.
        """
        return int(self.clock.seconds() * 1_000_000)

    async def _answer(self, request: Request) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        fmt = "json"
        try:
            if len(request.uri) > self.max_uri:
                raise HTTPError(414, f"request URI longer than {self.max_uri} bytes")
            _, _, raw_query = request.uri.partition(b"?")
            params = split_query(raw_query)
            fmt = choose_format(params, _header(request, b"accept"))
            who = self.identify(request)
            if who is None:
                raise HTTPError(403, "no verified client certificate")
            path = [seg.decode("utf-8", "replace") for seg in request.postpath or []]
            if path == dump.PATH:
                await self._dump(request, who, params)
                return
            if self.admin is not None and path[:1] == ["admin"]:
                code, ctype, body = await self.admin(request, who, path[1:], params)
            elif request.method == b"POST":
                raise HTTPError(405, "POST is for /admin/ requests only")
            elif path in (["stats"], ["trace"]):
                code, ctype, body = await self._lifecycle(path[0], who, params, fmt)
            elif path in ([], [""]):
                code, ctype, body = await self._jobs(request, who, params, fmt)
            elif len(path) == 1 or (len(path) == 2 and path[1] in ("", "events")):
                history = len(path) == 2 and path[1] == "events"
                code, ctype, body = await self._job(who, path[0], params, fmt, history)
            else:
                raise HTTPError(404, "no such resource")
        except HTTPError as e:
            code, ctype, body = _error(fmt, e.code, e.message)
        except Exception:
            log.failure("query {uri!r} failed", uri=request.uri)
            code, ctype, body = _error(fmt, 500, "internal error")
        if gone:
            return
        send_answer(request, code, ctype, body, request.method)

    async def _lifecycle(
        self, name: str, who: Identity, params: list[tuple[str, str]], fmt: str
    ) -> tuple[int, bytes, bytes]:
        # GET /stats and GET /trace (lbtwist.service.web.stats).
        from lbtwist.service.web import stats

        limits = self.lifecycle or stats.LifecycleLimits()
        try:
            if name == "stats":
                return await stats.answer_stats(
                    self.store,
                    who,
                    params,
                    fmt,
                    now=self.now(),
                    policy=self.policy,
                    super_users=self.super_users,
                    limits=limits,
                )
            return await stats.answer_trace(
                self.store,
                who,
                params,
                fmt,
                policy=self.policy,
                super_users=self.super_users,
                limits=limits,
            )
        except stats.Refused as e:
            raise HTTPError(e.code, e.message) from None

    async def _job(
        self, who: Identity, unique: str, params: list[tuple[str, str]], fmt: str, history: bool
    ) -> tuple[int, bytes, bytes]:
        events_from = 1
        for name, value in params:
            if name not in _JOB_PARAMS and name not in _FORMAT_PARAMS:
                raise HTTPError(400, f"unknown parameter {name!r}")
            if name == "events_from":
                if not (value.isdigit() and len(value) <= 18 and int(value) >= 1):
                    raise HTTPError(400, "events_from must be an arrival number (1, 2, ...)")
                events_from = int(value)
            if name == "flags":
                flags = {f.strip().lower() for f in value.split(",") if f.strip()}
                if flags - {"history"}:
                    raise HTTPError(400, f"unknown flags {value!r} (known: history)")
                history = history or "history" in flags
        if not _UNIQUE.fullmatch(unique):
            raise HTTPError(404, f"no job {unique!r}")
        # One read of the store for both (a single trip to its reader thread).
        found: tuple[str, JobStatus] | None = await self.store.find_status(unique)
        if found is None:
            raise HTTPError(404, f"no job {unique!r}")
        jobid, status = found
        if status.state == PURGED:
            raise HTTPError(410, f"job {jobid} was purged")
        decision = can_read(who, status, self.policy, self.super_users)
        if not decision:
            if not status.owner and await self._logged_by(jobid, who):
                # Events but no RegJob yet: tell the one who logged them, not a 403.
                raise HTTPError(404, f"job {jobid} not registered yet (events but no RegJob)")
            raise HTTPError(403, f"{who.dn} may not read {jobid}: {decision.reason}")
        if status.jobId is None:
            status.jobId = jobid
        asked = {name: value for name, value in params if name in timeline.PARAMS}
        if asked:
            admin = is_super_user(who, self.policy, self.super_users)
            try:
                fmt, body = await timeline.answer(self.store, jobid, asked, fmt, admin)
            except timeline.BadTimelineRequest as e:
                raise HTTPError(400, str(e)) from None
            return 200, render.CONTENT_TYPES[fmt], body
        page = None
        if history or fmt == "html":
            page = await self.history_page(jobid, events_from)
        if fmt == "html":
            return 200, render.CONTENT_TYPES["html"], render.status_html(status, page)
        if history:
            assert page is not None
            if fmt == "text":
                return 200, render.CONTENT_TYPES["text"], render.events_page_text(page).encode()
            return 200, render.CONTENT_TYPES["json"], render.events_page_json(page)
        if fmt == "text":
            return 200, render.CONTENT_TYPES["text"], render.status_text(status).encode()
        return 200, render.CONTENT_TYPES["json"], render.status_json(status)

    async def _dump(self, request: Request, who: Identity, params: list[tuple[str, str]]) -> None:
        """
        C{GET /dump}: admins only; streamed by L{dump.stream}.
        """
        if not is_super_user(who, self.policy, self.super_users):
            raise HTTPError(403, f"{who.dn} may not dump the store (ADMIN_ACCESS)")
        try:
            await dump.stream(self.store, request, params, self.page_events)
        except dump.BadDumpRequest as e:
            raise HTTPError(400, str(e)) from None

    async def _logged_by(self, jobid: str, who: Identity) -> bool:
        """
        Whether C{who} logged one of the (first page of) events of C{jobid}: read only
        when a job without owner is refused.
        """
        events = await self.store.events_range(jobid, 0, self.page_events)
        return any(e.event.user and same_dn(e.event.user, who.dn) for e in events)

    async def history_page(self, jobid: str, events_from: int) -> render.EventsPage:
        """
        One page of a job's history: at most C{page_events} events from arrival
        number C{events_from} on, read from the store as such (one more is read
        to learn whether another page follows), shown in event order.
        """
        limit = self.page_events
        got = await self.store.events_range(jobid, events_from - 1, limit + 1)
        more = len(got) > limit
        events = sorted(got[:limit], key=lambda s: ordering_key(s.event, s.seqno))
        return render.EventsPage(
            events=events,
            first=events_from,
            next_from=got[limit].seqno if more else None,
        )

    def list_query(
        self, who: Identity, params: list[tuple[str, str]]
    ) -> tuple[JobQuery, list[tuple[str, str]]]:
        """
        Build the store query of a job list request: each parameter through its
        entry of L{_LIST_PARAM_HANDLERS} (other names are read as L&B conditions),
        then one authorization step.

        @return: the query and the parameters to repeat in the next page's link.
        @raise HTTPError: bad or forbidden parameters.
        """
        request = _ListRequest(
            now=self.now(), owner=who.dn, limit=min(DEFAULT_LIMIT, self.max_limit)
        )
        privileged = is_super_user(who, self.policy, self.super_users) or self.policy.permits(
            "READ_ALL", who
        )
        try:
            for name, value in params:
                if name in _FORMAT_PARAMS:
                    continue
                if value == "" and name in render.FILTER_FIELDS:
                    # A field of the list page's filter form left empty: no filter.
                    continue
                handler = _LIST_PARAM_HANDLERS.get(name)
                if handler is None:
                    handler = _bare_conditions
                if name != "cursor":
                    request.keep.append((name, value))
                handler(request, name, value, self.max_limit)
        except ConditionError as e:
            raise HTTPError(400, str(e)) from None
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        conditions = tuple(request.conditions)
        if sum(len(c.alternatives) for c in conditions) > 32:
            raise HTTPError(400, "more than 32 conditions")
        _authorize_list(who, privileged, request.owner, conditions)
        return JobQuery(request.owner, conditions, request.limit, request.after), request.keep

    async def _jobs(
        self, request: Request, who: Identity, params: list[tuple[str, str]], fmt: str
    ) -> tuple[int, bytes, bytes]:
        query, keep = self.list_query(who, params)
        page = await self.store.query_jobs(query)
        cursor = encode_cursor(page.next) if page.next is not None else None
        if fmt == "html":
            link = None
            if cursor is not None:
                link = "/?" + urlencode([*keep, ("cursor", cursor)])
            return 200, render.CONTENT_TYPES["html"], render.jobs_html(page.jobs, link, keep)
        if fmt == "text":
            return 200, render.CONTENT_TYPES["text"], render.jobs_text(page.jobs, cursor).encode()
        return (
            200,
            render.CONTENT_TYPES["json"],
            render.to_json({"jobs": [render.summary_dict(j) for j in page.jobs], "cursor": cursor}),
        )


def _error(fmt: str, code: int, message: str) -> tuple[int, bytes, bytes]:
    """
    An error answer: an HTML page for browsers (C{fmt} C{html}: they asked for
    it by C{Accept} or C{?format=html}), else the JSON body.
    """
    if fmt == "html":
        return code, render.CONTENT_TYPES["html"], render.error_html(code, message)
    return code, render.CONTENT_TYPES["json"], render.error_body(code, message)


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
