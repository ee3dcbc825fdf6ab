# -*- test-case-name: tests.unit.test_web -*-
"""
Rendering of statuses, events and job lists: JSON, L&B's C{key=value} text, and
self-contained HTML pages (no external assets), built by L{element} so that every
value is escaped by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import quote

import attrs

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
    @return: the JSON object of a status (docs/reference.md, Queries): its public fields.
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
#
# Pages are built as strings by the few functions below, each value escaped as it is
# put in: L{escape} for text (C{&}, C{<}, C{>}), L{escape_attribute} for attribute
# values (and C{"}), and L{Markup} marks what is HTML already, so nothing reaches a
# page unescaped unless this module made it. The output is what
# L{twisted.web.template} writes for the same tree (void elements as C{<br />}),
# at a fraction of its cost: flattening 500 event rows took about 30 ms.


class Markup(str):
    """
    HTML that may be put into a page as it is: made by L{element} or L{escape}.
    """

    __slots__ = ()


def escape(value: object) -> Markup:
    """
    @return: C{value} (a string, or anything as C{str()} writes it) as HTML text;
        L{Markup} is returned unchanged.
    """
    if isinstance(value, Markup):
        return value
    text = value if isinstance(value, str) else str(value)
    return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def escape_attribute(value: object) -> str:
    """
    @return: C{value} as the text of a double-quoted attribute value.
    """
    text = value if isinstance(value, str) else str(value)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


#: Elements without content, written C{<br />}.
_VOID = frozenset({"br", "meta", "hr", "img", "input", "link"})
_NAME = re.compile(r"[a-z][a-z0-9]*")

Content = str | Iterable["Content"] | None


def _content(children: Iterable[Content], out: list[str]) -> None:
    for child in children:
        if child is None:
            continue
        if isinstance(child, str):
            out.append(escape(child))
        else:
            _content(child, out)


def element(name: str, attributes: Mapping[str, str] | None = None, *children: Content) -> Markup:
    """
    One HTML element: C{<name attr="value">children</name>}.

    @param name: a lower-case element name (a constant of the caller, never input).
    @param attributes: attribute names (constants) and values (escaped here).
    @param children: strings (escaped unless L{Markup}), nested iterables of them,
        or C{None} (nothing).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad element name {name!r}")
    out = ["<", name]
    for key, value in (attributes or {}).items():
        if not _NAME.fullmatch(key.replace("-", "")):
            raise ValueError(f"bad attribute name {key!r}")
        out.append(f' {key}="{escape_attribute(value)}"')
    inner: list[str] = []
    _content(children, inner)
    if not inner and name in _VOID:
        out.append(" />")
    else:
        out.append(">")
        out.extend(inner)
        out.append(f"</{name}>")
    return Markup("".join(out))


_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; max-width: 80em; }
h1 { font-size: 1.2em; overflow-wrap: anywhere; }
h2 { font-size: 1.1em; }
a { color: #1a4f9c; }
nav { margin-bottom: 0.5em; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left;
  vertical-align: top; font-size: 0.9em; overflow-wrap: break-word; }
th { background: #f0f0f0; }
td.v { font-family: monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
table.jobs td:first-child { overflow-wrap: anywhere; min-width: 8em; }
time { white-space: nowrap; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f7f7f7;
  border: 1px solid #ddd; padding: 0.5em; font-size: 0.85em; }
details.seq summary { font-family: monospace; cursor: pointer; white-space: nowrap; }
details.seq code { display: block; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0.1em 0.5em; border-radius: 0.3em;
  background: #e8eef8; margin: 0 0.5em 0.3em 0; }
.state { font-weight: bold; }
p .state { font-size: 1.2em; }
.state-done-ok { background: #d4f0d4; color: #145214; }
.state-done-failed, .state-aborted { background: #f8d4d4; color: #7a1010; }
.state-cancelled { background: #eee0c0; color: #5a4200; }
td.state-done-ok, td.state-done-failed, td.state-aborted, td.state-cancelled {
  font-weight: bold; }
ol.timeline { list-style: none; padding: 0; margin: 0.5em 0; }
ol.timeline li { border-left: 3px solid #9ab; padding: 0.1em 0 0.4em 0.7em; }
ol.timeline li.current { border-left-color: #1a4f9c; font-weight: bold; }
ol.timeline .after { color: #666; font-size: 0.9em; }
form.filter { display: flex; flex-wrap: wrap; gap: 0.4em 0.8em; align-items: end;
  margin: 0.5em 0; }
form.filter label { display: flex; flex-direction: column; font-size: 0.85em; }
form.filter input, form.filter select { max-width: 16em; }
tr.generated td { color: #666; font-style: italic; }
@media (max-width: 40em) {
  body { margin: 0.4em; }
  th, td { padding: 0.2em 0.3em; font-size: 0.8em; }
  form.filter input, form.filter select { max-width: 11em; }
  table.jobs th:nth-child(5), table.jobs td:nth-child(5),
  table.jobs th:nth-child(6), table.jobs td:nth-child(6),
  table.events th:nth-child(4), table.events td:nth-child(4) { display: none; }
}
"""

_NDASH = Markup("&#8211;")


def _page(title: str, body: Content) -> bytes:
    page = element(
        "html",
        {"lang": "en"},
        element(
            "head",
            None,
            element("meta", {"charset": "utf-8"}),
            element("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
            element("title", None, title),
            element("style", None, _STYLE),
        ),
        element("body", None, body),
    )
    return ("<!DOCTYPE html>\n" + page + "\n").encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return _text(value)


def human_date(iso: str) -> str:
    """
    @param iso: a time as L{format_iso} writes it (C{2024-03-14T09:26:53.001000Z}).
    @return: the same time for people, to the second, in one line
        (C{2024-03-14 09:26:53}); other text is returned unchanged.
    """
    if len(iso) >= 19 and iso[10] == "T" and iso.endswith("Z"):
        return iso[:10] + " " + iso[11:19]
    return iso


def time_element(iso: str | None) -> Markup:
    """
    @return: a C{<time>} element showing L{human_date} of C{iso} (UTC), the
        exact value in its C{title} (shown on hover); empty for C{None}.
    """
    if not iso:
        return Markup("")
    return Markup(f'<time title="{escape_attribute(iso)}">' + escape(human_date(iso)) + "</time>")


#: The class of a state's badge or cell: terminal outcomes have a colour.
STATE_CLASSES = {
    "done-ok": "state-done-ok",
    "done-failed": "state-done-failed",
    "aborted": "state-aborted",
    "cancelled": "state-cancelled",
}


def state_class(state: str | None, done_code: object = None) -> str:
    """
    The colour class of a job's state: C{state-done-ok}, C{state-done-failed}
    (Done with done code FAILED), C{state-aborted}, C{state-cancelled} (Cancelled,
    or Done with done code CANCELLED); C{state-other} for the rest.

    @param done_code: the done code as a number or as its name (C{OK}, ...).
    """
    folded = (state or "").lower()
    if folded == "done":
        code = (
            DONE_CODE_NAMES.get(done_code, done_code) if isinstance(done_code, int) else done_code
        )
        code = str(code or "OK").upper()
        if code == "FAILED":
            return STATE_CLASSES["done-failed"]
        if code == "CANCELLED":
            return STATE_CLASSES["cancelled"]
        return STATE_CLASSES["done-ok"]
    return STATE_CLASSES.get(folded, "state-other")


def _duration(us: int) -> str:
    seconds = max(0, us) // 1_000_000
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def timeline(enter_times: Mapping[str, int], current: str | None) -> Markup:
    """
    A job's states in the order it entered them, each with its entry time and how
    long after the first it came (from C{stateEnterTimes}).

    @param enter_times: state name -> entry time, microseconds since the epoch.
    @param current: the job's state now (marked C{current}).
    """
    ordered = sorted(enter_times.items(), key=lambda item: (item[1], item[0]))
    if not ordered:
        return Markup("")
    start = ordered[0][1]
    items = []
    for state, when in ordered:
        cls = state_class(state) + (" current" if state == current else "")
        after = "" if when == start else f" (+{_duration(when - start)})"
        items.append(
            element(
                "li",
                {"class": cls},
                element("span", {"class": "state"}, state),
                " ",
                time_element(format_iso(when)),
                element("span", {"class": "after"}, after) if after else None,
            )
        )
    return element("ol", {"class": "timeline"}, items)


#: Seqcodes longer than this are shown shortened (the whole one on demand).
SEQCODE_SHOWN = 16

#: Status fields holding a JDL, shown as text with their line breaks.
JDL_FIELDS = ("jdl", "matched_jdl", "cream_jdl")


def seqcode_cell(seqcode: str | None) -> str:
    """
    @return: the HTML of a seqcode: as it is when short, else its first
        L{SEQCODE_SHOWN} characters in a C{<details>} that opens on the whole one.
    """
    if not seqcode:
        return ""
    text = escape(seqcode)
    if len(seqcode) <= SEQCODE_SHOWN:
        return text
    return (
        '<details class="seq"><summary>'
        + escape(seqcode[:SEQCODE_SHOWN])
        + "\u2026</summary><code>"
        + text
        + "</code></details>"
    )


def job_link(jobid: str) -> str:
    """
    @return: the relative address of a job's page on this server.
    """
    return "/" + quote(unique_of(jobid), safe="")


def _value_html(name: str, value: Any) -> str:
    if name in _TIMES and isinstance(value, str):
        return time_element(value)
    if isinstance(value, str):
        return escape(value)
    return escape(_cell(value))


def _field_rows(data: dict[str, Any], names: Iterable[str]) -> str:
    return "".join(
        f'<tr><th>{escape(name)}</th><td class="v">{_value_html(name, data[name])}</td></tr>'
        for name in names
    )


def _event_row(stored: StoredEvent) -> str:
    # A row of the history table: the hot part of a job page (up to a page of them).
    ev = stored.event
    own = "<br />".join(escape(f"{k}={v}") for k, v in ev.fields.items())
    # format_iso writes digits and -T:.Z only: nothing to escape.
    iso = format_iso(ev.date)
    return (
        ('<tr class="generated"><td><time title="' if ev.generated else '<tr><td><time title="')
        + iso
        + '">'
        + iso[:10]
        + " "
        + iso[11:19]
        + "</time></td><td>"
        + escape(_cell(ev.type))
        + "</td><td>"
        + escape(_cell(ev.source))
        + "</td><td>"
        + escape(_cell(ev.host))
        + '</td><td class="v">'
        + seqcode_cell(ev.seqcode)
        + '</td><td class="v">'
        + own
        + "</td></tr>"
    )


def _history(page: EventsPage) -> list[Markup]:
    shown = page.events
    parts: list[Markup] = []
    if page.whole:
        parts.append(element("h2", None, f"Events ({len(shown)})"))
    else:
        last = page.first + len(shown) - 1
        more = "" if page.next_from is None else ", more follow"
        parts.append(
            element("h2", None, f"Events {page.first}", _NDASH, f"{last} by arrival{more}")
        )
        parts.append(_page_links(page))
    head = "".join(
        f"<th>{name}</th>" for name in ("date (UTC)", "type", "source", "host", "seqcode", "fields")
    )
    rows = Markup("".join(_event_row(stored) for stored in shown))
    parts.append(
        element(
            "div",
            {"class": "scroll"},
            element(
                "table",
                {"class": "events"},
                element("thead", None, Markup(f"<tr>{head}</tr>")),
                element("tbody", None, rows),
            ),
        )
    )
    if not page.whole:
        parts.append(_page_links(page))
    return parts


def _back() -> Markup:
    return element("nav", None, element("a", {"href": "/", "class": "back"}, "\u2190 all jobs"))


def status_html(status: JobStatus, events: EventsPage | Sequence[StoredEvent] | None) -> bytes:
    """
    @return: a job page: a link back to the job list, the state (coloured by
        outcome), CREAM state, the main fields, the state timeline, the JDL as
        text, every other non-empty field, and the event history (one page of it,
        with links to the others).
    """
    page = events if isinstance(events, EventsPage) or events is None else EventsPage(events)
    data = public_dict(status)
    title = str(data.get("jobId") or "job")
    state = data.get("state")
    cls = state_class(status.state, status.done_code)
    badges: list[Content] = [
        element("span", {"class": f"badge state {cls}", "id": "state"}, str(state))
    ]
    if data.get("cream_state"):
        badges.append(element("span", {"class": "badge"}, f"CREAM: {data['cream_state']}"))
    if status.exit_code is not None:
        badges.append(element("span", {"class": "badge"}, f"exit code {status.exit_code}"))
    badges += [
        " ",
        element("a", {"href": "?format=json"}, "JSON"),
        " ",
        element("a", {"href": "?format=text"}, "text"),
    ]
    main = [n for n in MAIN_FIELDS if data.get(n) not in (None, "", [], {})]
    parts: list[Content] = [
        _back(),
        element("h1", None, title),
        element("p", None, badges),
        element(
            "table", {"class": "fields"}, element("tbody", None, Markup(_field_rows(data, main)))
        ),
    ]
    if status.stateEnterTimes:
        parts.append(element("h2", None, "Timeline (UTC)"))
        parts.append(timeline(status.stateEnterTimes, status.state))
    for name in JDL_FIELDS:
        jdl = data.get(name)
        if isinstance(jdl, str) and jdl:
            parts.append(element("h2", None, name))
            parts.append(element("pre", {"class": "jdl", "id": name}, jdl))
    skip = {*MAIN_FIELDS, *JDL_FIELDS, "stateEnterTimes"}
    others = [
        n for n in TEXT_ORDER if n not in skip and data.get(n) not in (None, "", [], {}, False)
    ]
    if others:
        parts.append(
            element(
                "details",
                None,
                element("summary", None, "All fields"),
                element("table", None, element("tbody", None, Markup(_field_rows(data, others)))),
            )
        )
    if page is not None:
        parts.extend(_history(page))
    return _page(title, parts)


def _page_links(page: EventsPage) -> Markup:
    links: list[Content] = []
    if page.first > 1:
        links.append(element("a", {"href": "?events_from=1"}, "first events"))
    if page.next_from is not None:
        if links:
            links.append(" ")
        links.append(element("a", {"href": f"?events_from={page.next_from}"}, "next events"))
    return element("p", {"class": "pages"}, links)


def _job_row(job: JobSummary) -> str:
    return (
        '<tr><td><a href="'
        + escape_attribute(job_link(job.jobid))
        + '">'
        + escape(job.jobid)
        + '</a></td><td class="'
        + state_class(job.state, job.done_code)
        + '">'
        + escape(_cell(job.state))
        + "</td><td>"
        + escape(_cell(job.cream_state))
        + "</td><td>"
        + escape(_cell(job.exit_code))
        + "</td><td>"
        + escape(_cell(job.jobtype))
        + "</td><td>"
        + escape(_cell(job.owner))
        + "</td><td>"
        + time_element(job.last_update)
        + "</td></tr>"
    )


#: The job states offered by the list's filter form.
FILTER_STATES = (
    "Submitted",
    "Waiting",
    "Ready",
    "Scheduled",
    "Running",
    "Done",
    "Cleared",
    "Aborted",
    "Cancelled",
)

#: The job list parameters the filter form sets (empty: no filter).
FILTER_FIELDS = ("state", "owner", "jobtype", "since", "until")


def _filter_form(values: Mapping[str, str]) -> Markup:
    chosen = values.get("state", "")
    options = [element("option", {"value": ""}, "any")]
    for name in FILTER_STATES:
        attrs_ = {"value": name, "selected": "selected"} if name == chosen else {"value": name}
        options.append(element("option", attrs_, name))

    def field(label: str, name: str, hint: str) -> Markup:
        return element(
            "label",
            None,
            label,
            element(
                "input",
                {"type": "text", "name": name, "value": values.get(name, ""), "placeholder": hint},
            ),
        )

    return element(
        "form",
        {"class": "filter", "method": "get", "action": "/"},
        element("label", None, "state", element("select", {"name": "state"}, options)),
        field("owner", "owner", "you; * for all"),
        field("job type", "jobtype", "CREAM, NORMAL"),
        field("updated since", "since", "last3600, ISO UTC"),
        field("until", "until", "ISO UTC"),
        element("button", {"type": "submit"}, "filter"),
    )


def jobs_html(
    jobs: Sequence[JobSummary],
    next_link: str | None,
    filters: Iterable[tuple[str, str]] = (),
) -> bytes:
    """
    @return: a job list page: a filter form (a GET form on this list), a row per
        job (linked to its page, the state coloured by outcome, CREAM state and
        exit code), and a link to the next page.
    @param filters: the request's parameters, shown in the form.
    """
    values = {name: value for name, value in filters if name in FILTER_FIELDS}
    head = "".join(
        f"<th>{name}</th>"
        for name in (
            "job",
            "state",
            "CREAM state",
            "exit code",
            "type",
            "owner",
            "last update (UTC)",
        )
    )
    parts: list[Content] = [
        element("h1", None, f"Jobs ({len(jobs)})"),
        _filter_form(values),
        element(
            "div",
            {"class": "scroll"},
            element(
                "table",
                {"class": "jobs"},
                element("thead", None, Markup(f"<tr>{head}</tr>")),
                element("tbody", None, Markup("".join(_job_row(job) for job in jobs))),
            ),
        ),
    ]
    if next_link is not None:
        parts.append(element("p", None, element("a", {"href": next_link}, "next page")))
    return _page("Jobs", parts)


#: Titles of error pages.
_ERROR_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    410: "Gone",
    414: "Request URI too long",
    500: "Internal error",
}


def error_html(code: int, message: str) -> bytes:
    """
    @return: the HTML page of an error answer (for browsers; other clients get
        L{error_body}): the code, the message and a link to the job list.
    """
    title = f"{code} {_ERROR_TITLES.get(code, 'Error')}"
    return _page(
        title,
        [
            _back(),
            element("h1", {"class": "error"}, title),
            element("p", {"class": "message"}, message),
        ],
    )
