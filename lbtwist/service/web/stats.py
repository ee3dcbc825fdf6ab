# -*- test-case-name: tests.unit.test_stats_web -*-
"""
C{GET /stats} and C{GET /trace} on the query port: L&B's statistics (GET_STATISTICS)
and the tracing of a batch job back to its grid user (TRACE), both also allowed to
super users and holders of ADMIN_ACCESS. The parameters are those of
L{lbtwist.core.stats.StatsRequest} and L{lbtwist.core.trace.TraceRequest}; answers
are JSON, or plain text with C{format=text}. A store without the indexes (the memory
store of tests) answers 501.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from lbtwist.core import stats as core_stats
from lbtwist.core import trace as core_trace
from lbtwist.core.errors import InvalidValue, TooBig
from lbtwist.security.authz import Policy, is_super_user
from lbtwist.security.identity import Identity
from lbtwist.service import logs
from lbtwist.service.web import render

log = Logger()

_FORMAT = frozenset({"format", "json", "text", "html"})

#: Defaults of the limits (the options C{stats-max-jobs}, C{stats-max-buckets}, C{trace-max-jobs}).
DEFAULT_STATS_MAX_JOBS = 100_000
DEFAULT_STATS_MAX_BUCKETS = 1000
DEFAULT_TRACE_MAX_JOBS = 1000


@attrs.frozen
class LifecycleLimits:
    """
    The bounds of one statistics or trace request.
    """

    stats_max_jobs: int = DEFAULT_STATS_MAX_JOBS
    stats_max_buckets: int = DEFAULT_STATS_MAX_BUCKETS
    trace_max_jobs: int = DEFAULT_TRACE_MAX_JOBS
    trace_max_lifetime: int = core_trace.DEFAULT_MAX_LIFETIME


class Refused(Exception):
    """
    An error answer (HTTP code and message), turned into the query port's HTTPError.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def may(action: str, who: Identity, policy: Policy, super_users: tuple[str, ...]) -> bool:
    """
    Whether C{who} may do C{action} (GET_STATISTICS, TRACE): super users and
    ADMIN_ACCESS always may.
    """
    return is_super_user(who, policy, super_users) or policy.permits(action, who)


def _own(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params if k not in _FORMAT]


async def answer_stats(
    store: Any,
    who: Identity,
    params: list[tuple[str, str]],
    fmt: str,
    *,
    now: int,
    policy: Policy,
    super_users: tuple[str, ...],
    limits: LifecycleLimits,
) -> tuple[int, bytes, bytes]:
    """
    The answer of C{GET /stats}.

    @raise Refused: 403 without the right, 400 for bad parameters, 413 over a limit.
    """
    if not may("GET_STATISTICS", who, policy, super_users):
        logs.warn(log, "statistics refused to {dn}: no GET_STATISTICS right", dn=who.dn)
        raise Refused(403, f"{who.dn} may not read statistics (needs GET_STATISTICS)")
    try:
        request = core_stats.StatsRequest.parse(
            _own(params), now=now, max_buckets=limits.stats_max_buckets
        )
    except InvalidValue as e:
        logs.warn(log, "bad statistics request: {message}", message=e.message)
        raise Refused(400, e.message) from None
    if getattr(store, "stats", None) is None:
        raise Refused(501, "this store keeps no statistics")
    try:
        answer = await store.stats(request, limits.stats_max_jobs)
    except TooBig as e:
        logs.warn(log, "statistics request over its limit: {message}", message=e.message)
        raise Refused(413, e.message) from None
    if fmt == "text":
        return 200, render.CONTENT_TYPES["text"], core_stats.render_text(answer).encode("utf-8")
    return 200, render.CONTENT_TYPES["json"], render.to_json(answer)


async def answer_trace(
    store: Any,
    who: Identity,
    params: list[tuple[str, str]],
    fmt: str,
    *,
    policy: Policy,
    super_users: tuple[str, ...],
    limits: LifecycleLimits,
) -> tuple[int, bytes, bytes]:
    """
    The answer of C{GET /trace}.

    @raise Refused: 403 without the right, 400 for bad parameters.
    """
    if not may("TRACE", who, policy, super_users):
        logs.warn(log, "trace refused to {dn}: no TRACE or ADMIN_ACCESS right", dn=who.dn)
        raise Refused(403, f"{who.dn} may not trace jobs (needs TRACE or ADMIN_ACCESS)")
    try:
        request = core_trace.TraceRequest.parse(
            _own(params), max_lifetime=limits.trace_max_lifetime
        )
    except InvalidValue as e:
        logs.warn(log, "bad trace request: {message}", message=e.message)
        raise Refused(400, e.message) from None
    if getattr(store, "trace", None) is None:
        raise Refused(501, "this store keeps no trace index")
    jobs, more = await store.trace(request, limits.trace_max_jobs)
    if fmt == "text":
        text = core_trace.render_text(jobs)
        if more:
            text += f"(more than {limits.trace_max_jobs} jobs: only the first shown)\n"
        return 200, render.CONTENT_TYPES["text"], text.encode("utf-8")
    return 200, render.CONTENT_TYPES["json"], render.to_json({"jobs": jobs, "truncated": more})
