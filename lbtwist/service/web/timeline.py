# -*- test-case-name: tests.unit.test_explain_web -*-
"""
The job route's C{?at=T[&by=arrival]} (the status as it was at T) and
C{?explain} (what each event did; admins also see DATE minus arrival per
event and per producer), on the pure replay of L{lbtwist.core.states.explain}.
The route checks the read rights first, as for the status.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from lbtwist.core.states.explain import (
    BY_ARRIVAL,
    BY_DATE,
    effect_dict,
    explain,
    format_effects,
    status_at,
)
from lbtwist.core.states.status import parse_iso

if TYPE_CHECKING:
    from lbtwist.store import IEventStore

#: The parameters this module answers.
PARAMS = frozenset({"at", "by", "explain"})


class BadTimelineRequest(ValueError):
    """
    A parameter of C{?at} or C{?explain} is wrong (the message says which).
    """


def parse_at(text: str) -> int:
    """
    A time of C{?at=}: ISO 8601 (UTC unless an offset is given) or epoch seconds,
    in microseconds.

    @raise BadTimelineRequest: anything else.
    """
    text = text.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            seconds, _, frac = text.partition(".")
            return int(seconds) * 1_000_000 + int((frac or "0")[:6].ljust(6, "0"))
        return parse_iso(text)
    except ValueError:
        raise BadTimelineRequest(f"bad time {text!r}: use ISO 8601 or epoch seconds") from None


async def answer(
    store: IEventStore, jobid: str, params: dict[str, str], fmt: str, admin: bool
) -> tuple[str, bytes]:
    """
    The body of a C{?at} or C{?explain} request for C{jobid} (already authorized).

    @return: C{(format, body)}; the format is C{json}, C{text} or C{html}.
    @raise BadTimelineRequest: bad parameters.
    """
    from lbtwist.service.web import render

    if "explain" in params and "at" in params:
        raise BadTimelineRequest("ask for either at or explain")
    by = params.get("by", "date")
    if by not in (BY_DATE, BY_ARRIVAL) or ("by" in params and "at" not in params):
        raise BadTimelineRequest("by is date or arrival, with at")
    stored = await store.events(jobid)
    # In arrival order (the store hands them in event order).
    pairs = [(s.event, s.arrived) for s in sorted(stored, key=lambda s: s.seqno)]
    if "at" in params:
        status = status_at(pairs, parse_at(params["at"]), by=by)
        if status.jobId is None:
            status.jobId = jobid
        if fmt == "text":
            return fmt, render.status_text(status).encode()
        if fmt == "html":
            return fmt, render.status_html(status, None)
        return "json", render.status_json(status)
    effects = explain(pairs)
    if fmt == "json":
        records = [effect_dict(e, with_skew=admin) for e in effects]
        return fmt, json.dumps({"jobId": jobid, "events": records}, ensure_ascii=False).encode()
    text = f"{jobid}: {effects[-1].to_state if effects else 'Unknown'}\n" + format_effects(
        effects, with_skew=admin
    )
    if fmt == "html":
        return fmt, render._page(f"why {jobid}", render.element("pre", None, text))
    return "text", text.encode()
