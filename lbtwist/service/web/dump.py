# -*- test-case-name: tests.unit.test_dump_web -*-
"""
C{GET /dump?from=T&to=U}: the events that arrived in C{(T, U]} in L&B's dump
format, for admins (super users or ADMIN_ACCESS), streamed a page at a time
(C{page_events} events read from the store per page, the next page read only
once the connection has taken the last one: memory stays bounded whatever the
store holds). Times: ISO 8601, epoch seconds or C{YYYYMMDDHHMMSS[.uuuuuu]}.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from lbtwist.core.errors import LBError
from lbtwist.core.ulm import parse_date
from lbtwist.core.unparse import dump_line
from lbtwist.service.web.timeline import BadTimelineRequest, parse_at

if TYPE_CHECKING:
    from twisted.web.server import Request

    from lbtwist.store.interface import IEventStore

log = Logger()

#: The route's path.
PATH = ["dump"]

#: Its parameters.
PARAMS = frozenset({"from", "to"})

CONTENT_TYPE = b"text/plain; charset=utf-8"

_COMPACT = re.compile(r"[0-9]{14}(\.[0-9]{1,6})?")


class BadDumpRequest(ValueError):
    """
    A parameter is wrong (the message says which).
    """


def parse_window(params: list[tuple[str, str]]) -> tuple[int | None, int | None]:
    """
    The C{(from, to]} window of the request's parameters.

    @raise BadDumpRequest: an unknown parameter, a bad time, or an empty window.
    """
    found: dict[str, int] = {}
    for name, value in params:
        if name not in PARAMS:
            raise BadDumpRequest(f"unknown parameter {name!r} (known: from, to)")
        try:
            text = value.strip()
            if _COMPACT.fullmatch(text):
                whole, _, frac = text.partition(".")
                found[name] = parse_date(f"{whole}.{frac.ljust(6, '0')}")
            else:
                found[name] = parse_at(text)
        except (BadTimelineRequest, LBError, ValueError) as e:
            raise BadDumpRequest(f"{name}: {e}") from None
    low, high = found.get("from"), found.get("to")
    if low is not None and high is not None and high < low:
        raise BadDumpRequest("the window ends before it starts")
    return low, high


@implementer(IPushProducer)
class _Flow:
    """
    Tells the writer when the connection wants no more for now.
    """

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiting: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def ready(self) -> None:
        if self.paused and not self.stopped:
            self._waiting = Deferred()
            await self._waiting


async def stream(
    store: IEventStore,
    request: Request,
    params: list[tuple[str, str]],
    page_events: int,
) -> int:
    """
    Answer an (authorized) dump request: the headers, then page after page.

    @return: how many events were written.
    @raise BadDumpRequest: before anything is written.
    """
    low, high = parse_window(params)
    request.setResponseCode(200)
    request.setHeader(b"content-type", CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    flow = _Flow()
    request.registerProducer(flow, True)
    count = 0
    after: tuple[int, int] | None = None
    try:
        while not flow.stopped:
            page, after = await store.dump_page(low, high, after, page_events)
            if page:
                request.write("".join(dump_line(s.event, s.arrived) for s in page).encode())
            count += len(page)
            if after is None:
                break
            await flow.ready()
    except Exception:
        # The answer has begun: cut it short, so the client sees it incomplete.
        log.failure("dump failed after {count} events", count=count)
        request.unregisterProducer()
        request.loseConnection()
        return count
    request.unregisterProducer()
    if not flow.stopped:
        request.finish()
    return count
