# -*- test-case-name: tests.unit.test_web -*-
"""
Rendering of statuses, events and job lists: JSON, L&B's C{key=value} text, and
self-contained HTML pages (no external assets), built with L{twisted.web.template}
so that every value is escaped by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import quote

import attrs
from twisted.python.failure import Failure
from twisted.web.template import CharRef, Flattenable, Tag, flattenString, tags

from lbtwist.core.states.status import (
    DONE_CODE_NAMES,
    TEXT_ORDER,
    JobStatus,
    format_iso,
    public_dict,
)
from lbtwist.store.interface import JobSummary, StoredEvent
from lbtwist.store.query import unique_of

#: The formats a response can take.
FORMATS = ("json", "text", "html")

CONTENT_TYPES = {
    "json": b"application/json; charset=utf-8",
    "text": b"text/plain; charset=utf-8",
    "html": b"text/html; charset=utf-8",
}

#: Status fields shown in the main table of a job page, in this order.
MAIN_FIELDS = (
    "jobId",
    "state",
    "cream_state",
    "owner",
    "jobtype",
    "destination",
    "ce_node",
    "done_code",
    "exit_code",
    "reason",
    "cream_reason",
    "cream_failure_reason",
    "localId",
    "cream_id",
    "glite_jobid",
    "cream_jobid",
    "stateEnterTime",
    "lastUpdateTime",
)


# JSON


def status_dict(status: JobStatus) -> dict[str, Any]:
    """
    @return: the JSON object of a status (design section 10): its public fields.
    """
    return public_dict(status)


def event_dict(stored: StoredEvent) -> dict[str, Any]:
    """
    @return: the JSON object of a stored event: type, common fields, own fields by
        catalogue name, C{generated} when the proxy generated it.
    """
    ev = stored.event
    data: dict[str, Any] = {
        "type": ev.type,
        "date": format_iso(ev.date),
        "host": ev.host,
        "source": ev.source,
        "src_instance": ev.src_instance,
        "seqcode": ev.seqcode,
        "user": ev.user,
        "priority": ev.priority,
        "level": ev.level,
        "jobid": ev.jobid,
        "arrived": format_iso(stored.arrived),
    }
    for name, value in ev.fields.items():
        data.setdefault(name, value)
    if ev.generated:
        data["generated"] = True
    return data


@attrs.frozen
class EventsPage:
    """
    One page of a job's history.

    @ivar events: the page's events, in event order.
    @ivar first: the arrival number the page starts at (1: the first page).
    @ivar next_from: the arrival number the next page starts at, C{None} on the last.
    """

    events: Sequence[StoredEvent]
    first: int = 1
    next_from: int | None = None

    @property
    def whole(self) -> bool:
        """
        Whether the page is the whole history.
        """
        return self.first == 1 and self.next_from is None


def events_page_json(page: EventsPage) -> bytes:
    """
    @return: the JSON of a history page: a list of event objects when it is the
        whole history (as for every job before paging), else
        C{{"events": [...], "events_from": first, "next_events_from": next or null}}.
    """
    events = [event_dict(e) for e in page.events]
    if page.whole:
        return to_json(events)
    return to_json(
        {"events": events, "events_from": page.first, "next_events_from": page.next_from}
    )


def summary_dict(job: JobSummary) -> dict[str, Any]:
    """
    @return: the JSON object of one row of a job list.
    """
    return {
        "jobId": job.jobid,
        "owner": job.owner,
        "state": job.state,
        "jobtype": job.jobtype,
        "lastUpdateTime": job.last_update,
    }


def to_json(value: object) -> bytes:
    """
    @return: C{value} as UTF-8 JSON with a final newline.
    """
    return json.dumps(value, ensure_ascii=False, sort_keys=False).encode("utf-8") + b"\n"


def status_json(status: JobStatus) -> bytes:
    """
    @return: L{to_json} of L{status_dict}, the same bytes written without the
        intermediate dicts (the body of every JSON status answer).
    """
    try:
        text = _public_json_text(status)
    except (TypeError, ValueError):
        # A field holding a value of an unexpected type: the general encoder.
        return to_json(status_dict(status))
    return text.encode("utf-8")


# json.dumps(..., ensure_ascii=False) of any value, as to_json writes it.
_encode = json.JSONEncoder(ensure_ascii=False).encode

_TIMES = ("stateEnterTime", "lastUpdateTime")
_DONE_CODES = ("done_code", "cream_done_code")


def _public_value_expr(name: str, kind: str) -> str:
    """
    Python source writing the JSON of C{s.<name>} as L{to_json} of L{public_dict}
    would; values of other types than C{kind} go to the general encoder.
    """
    v = f"s.{name}"
    if name in _TIMES:
        return f"(\"null\" if {v} is None else '\"' + _iso({v}) + '\"')"
    if name == "stateEnterTimes":
        return f'("{{}}" if {v}.__class__ is dict and not {v} else _enc({{k: _iso(t) for k, t in {v}.items()}}))'
    if name in _DONE_CODES:
        return (
            f"('null' if {v} is None else _enc(_done_names.get({v}, {v}))"
            f" if {v}.__class__ is not bool and isinstance({v}, int) else _enc({v}))"
        )
    container = kind.partition("[")[0]
    if container in ("dict", "list"):
        # Copied as to_json_dict copies them (the same JSON for odd values too).
        copied = {"acl": f"[dict(e) for e in {v}]"}.get(name, f"{container}({v})")
        empty = "{}" if container == "dict" else "[]"
        return f'("{empty}" if {v}.__class__ is {container} and not {v} else _enc({copied}))'
    if kind == "bool":
        return f'("true" if {v} is True else "false" if {v} is False else _enc({v}))'
    if kind.startswith("int"):
        return f'("null" if {v} is None else _int({v}) if {v}.__class__ is int else _enc({v}))'
    if kind.startswith("str"):
        return f'("null" if {v} is None else _str({v}) if {v}.__class__ is str else _enc({v}))'
    return f"_enc({v})"


def _make_public_json_text() -> Any:
    fields = {field.name: field for field in attrs.fields(JobStatus)}
    parts = []
    for i, name in enumerate(TEXT_ORDER):
        parts.append(f"        {('{' if i == 0 else ', ') + json.dumps(name) + ': '!r},\n")
        parts.append(f"        {_public_value_expr(name, str(fields[name].type))},\n")
    source = (
        "def _public_json_text(s):\n    return ''.join((\n"
        + "".join(parts)
        + "        '}\\n',\n    ))\n"
    )
    namespace: dict[str, Any] = {
        "_iso": format_iso,
        "_enc": _encode,
        "_str": encode_basestring,
        "_int": int.__repr__,
        "_done_names": DONE_CODE_NAMES,
    }
    exec(compile(source, "<lbtwist.service.web.render _public_json_text>", "exec"), namespace)  # noqa: S102
    return namespace["_public_json_text"]


# The public JSON of a status in one generated expression, as JobStatus.to_json
# writes the stored one: key prefixes written once, each value by the cheapest
# encoder for its type.
_public_json_text = _make_public_json_text()


def error_body(code: int, message: str) -> bytes:
    """
    @return: the JSON body of an error answer.
    """
    return to_json({"error": code, "message": message})


# Text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value).replace("\n", "\\n")


def status_text(status: JobStatus) -> str:
    """
    @return: C{key=value} lines of the non-empty status fields.
    """
    data = public_dict(status)
    lines = []
    for name in TEXT_ORDER:
        value = data.get(name)
        if value is None or value == "" or value == [] or value == {}:
            continue
        lines.append(f"{name}={_text(value)}")
    return "\n".join(lines) + "\n"


def events_text(events: Iterable[StoredEvent]) -> str:
    """
    @return: the events' ULM lines (C{key=value} fields), one per line.
    """
    return "".join(stored.line.rstrip("\r\n") + "\n" for stored in events)


def events_page_text(page: EventsPage) -> str:
    """
    @return: L{events_text} of the page, then C{events_from=<next>} if another
        page follows (as C{cursor=} ends a job list page).
    """
    text = events_text(page.events)
    if page.next_from is not None:
        text += f"events_from={page.next_from}\n"
    return text


def jobs_text(jobs: Iterable[JobSummary], next_cursor: str | None) -> str:
    """
    @return: one C{jobId=... state=...} line per job, then C{cursor=} if there is more.
    """
    lines = []
    for job in jobs:
        fields = summary_dict(job)
        lines.append(" ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None))
    if next_cursor is not None:
        lines.append(f"cursor={next_cursor}")
    return "".join(line + "\n" for line in lines)


# HTML

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; word-break: break-all; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
  vertical-align: top; font-size: 0.9em; }
th { background: #f0f0f0; }
td.v { font-family: monospace; white-space: pre-wrap; word-break: break-all; }
.state { font-size: 1.2em; font-weight: bold; }
.badge { display: inline-block; padding: 0.1em 0.5em; border-radius: 0.3em;
  background: #e8eef8; margin-right: 0.5em; }
tr.generated td { color: #666; font-style: italic; }
"""

_NDASH = CharRef(0x2013)


def _flatten(root: Flattenable) -> bytes:
    """
    C{root} as bytes: everything it holds is synchronous, so the flattening is done
    when L{flattenString} returns.
    """
    done: list[bytes | Failure] = []
    flattenString(None, root).addBoth(done.append)
    [result] = done
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, bytes)
    return result


def _page(title: str, body: Flattenable) -> bytes:
    page = tags.html(lang="en")(
        tags.head(tags.meta(charset="utf-8"), tags.title(title), tags.style(_STYLE)),
        tags.body(body),
    )
    return b"<!DOCTYPE html>\n" + _flatten(page) + b"\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return _text(value)


def job_link(jobid: str) -> str:
    """
    @return: the relative address of a job's page on this server.
    """
    return "/" + quote(unique_of(jobid), safe="")


def _field_rows(data: dict[str, Any], names: Iterable[str]) -> list[Tag]:
    return [tags.tr(tags.th(name), tags.td(class_="v")(_cell(data[name]))) for name in names]


def _event_row(stored: StoredEvent) -> Tag:
    ev = stored.event
    own: list[Flattenable] = []
    for k, v in ev.fields.items():
        if own:
            own.append(tags.br())
        own.append(_cell(f"{k}={v}"))
    row = tags.tr(class_="generated") if ev.generated else tags.tr()
    return row(
        tags.td(_cell(format_iso(ev.date))),
        tags.td(_cell(ev.type)),
        tags.td(_cell(ev.source)),
        tags.td(_cell(ev.host)),
        tags.td(class_="v")(_cell(ev.seqcode)),
        tags.td(class_="v")(own),
    )


def _history(page: EventsPage) -> list[Tag]:
    shown = page.events
    parts: list[Tag] = []
    if page.whole:
        parts.append(tags.h2(f"Events ({len(shown)})"))
    else:
        last = page.first + len(shown) - 1
        more = "" if page.next_from is None else ", more follow"
        parts.append(tags.h2(f"Events {page.first}", _NDASH, f"{last} by arrival{more}"))
        parts.append(_page_links(page))
    head = tags.tr([tags.th(name) for name in ("date", "type", "source", "host", "seqcode")])
    parts.append(
        tags.table(
            tags.thead(head(tags.th("fields"))),
            tags.tbody([_event_row(stored) for stored in shown]),
        )
    )
    if not page.whole:
        parts.append(_page_links(page))
    return parts


def status_html(status: JobStatus, events: EventsPage | Sequence[StoredEvent] | None) -> bytes:
    """
    @return: a job page: state, CREAM state, the main fields, every other non-empty
        field, and the event history (one page of it, with links to the others).
    """
    page = events if isinstance(events, EventsPage) or events is None else EventsPage(events)
    data = public_dict(status)
    title = str(data.get("jobId") or "job")
    badges = tags.p(tags.span(class_="badge state")(str(data.get("state"))))
    if data.get("cream_state"):
        badges(tags.span(class_="badge")(f"CREAM: {data['cream_state']}"))
    badges(" ", tags.a(href="?format=json")("JSON"), " ", tags.a(href="?format=text")("text"))
    main = [n for n in MAIN_FIELDS if data.get(n) not in (None, "", [], {})]
    parts: list[Flattenable] = [
        tags.h1(title),
        badges,
        tags.table(tags.tbody(_field_rows(data, main))),
    ]
    others = [
        n
        for n in TEXT_ORDER
        if n not in MAIN_FIELDS and data.get(n) not in (None, "", [], {}, False)
    ]
    if others:
        parts.append(
            tags.details(
                tags.summary("All fields"), tags.table(tags.tbody(_field_rows(data, others)))
            )
        )
    if page is not None:
        parts.extend(_history(page))
    return _page(title, parts)


def _page_links(page: EventsPage) -> Tag:
    links: list[Flattenable] = []
    if page.first > 1:
        links.append(tags.a(href="?events_from=1")("first events"))
    if page.next_from is not None:
        if links:
            links.append(" ")
        links.append(tags.a(href=f"?events_from={page.next_from}")("next events"))
    return tags.p(class_="pages")(links)


def jobs_html(jobs: Sequence[JobSummary], next_link: str | None) -> bytes:
    """
    @return: a job list page with a link to each job and to the next page.
    """
    head = tags.tr([tags.th(name) for name in ("job", "state", "type", "owner", "last update")])
    rows = [
        tags.tr(
            tags.td(tags.a(href=job_link(job.jobid))(job.jobid)),
            tags.td(_cell(job.state)),
            tags.td(_cell(job.jobtype)),
            tags.td(_cell(job.owner)),
            tags.td(_cell(job.last_update)),
        )
        for job in jobs
    ]
    parts: list[Flattenable] = [
        tags.h1(f"Jobs ({len(jobs)})"),
        tags.table(tags.thead(head), tags.tbody(rows)),
    ]
    if next_link is not None:
        parts.append(tags.p(tags.a(href=next_link)("next page")))
    return _page("Jobs", parts)
