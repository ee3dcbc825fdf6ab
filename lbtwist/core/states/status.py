# -*- test-case-name: tests.unit.test_states -*-
"""
The status of one job: the value the state machines fold events into.

Field names follow L&B's job status (C{glite-lb-job_status}); times are
integers, microseconds since the epoch, UTC.
"""

from __future__ import annotations

import copy as _copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined,unused-ignore]
from typing import Any

import attrs
import orjson

# Job states (docs/reference.md, Job status).
SUBMITTED = "Submitted"
WAITING = "Waiting"
READY = "Ready"
SCHEDULED = "Scheduled"
RUNNING = "Running"
DONE = "Done"
CLEARED = "Cleared"
ABORTED = "Aborted"
CANCELLED = "Cancelled"
UNKNOWN = "Unknown"
PURGED = "Purged"

STATES: tuple[str, ...] = (
    SUBMITTED,
    WAITING,
    READY,
    SCHEDULED,
    RUNNING,
    DONE,
    CLEARED,
    ABORTED,
    CANCELLED,
    UNKNOWN,
    PURGED,
)
TERMINAL_STATES: frozenset[str] = frozenset({ABORTED, CANCELLED, CLEARED, PURGED})

# CREAM states, spelled as L&B prints them.
CREAM_STATES: tuple[str, ...] = (
    "Registered",
    "Pending",
    "Idle",
    "Running",
    "Really-running",
    "Held",
    "Done-ok",
    "Done-failed",
    "Aborted",
    "Cancelled",
    "Purged",
)
_CREAM_BY_FOLDED = {name.lower(): name for name in CREAM_STATES}

# L&B's done codes.
DONE_OK = 0
DONE_FAILED = 1
DONE_CANCELLED = 2
DONE_CODE_NAMES: dict[int, str] = {
    DONE_OK: "OK",
    DONE_FAILED: "FAILED",
    DONE_CANCELLED: "CANCELLED",
}

MACHINE_CREAM = "cream"
MACHINE_GLITE = "glite"


def cream_state_name(text: str) -> str | None:
    """
    The canonical spelling of a CREAM state, or C{None} if C{text} names none.

    Case-insensitive, so CREAM's C{DONE-OK} gives C{Done-ok}; C{_} is read as C{-}.
    """
    return _CREAM_BY_FOLDED.get(text.strip().lower().replace("_", "-"))


def format_iso(us: int) -> str:
    """
    C{us} (microseconds since the epoch) as ISO 8601 UTC with microseconds and C{Z}.
    """
    text = _ISO_TEXTS.get(us)
    if text is not None:
        return text
    seconds, micro = divmod(us, 1_000_000)
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) >= _ISO_CACHE_SIZE:
            _ISO_SECONDS.clear()
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ISO_SECONDS[seconds] = prefix
    text = f"{prefix}.{micro:06d}Z"
    if len(_ISO_TEXTS) >= _ISO_TEXTS_SIZE:
        _ISO_TEXTS.clear()
    _ISO_TEXTS[us] = text
    return text


# A job's status is written again at every change, with the same entry times:
# remember the formatted times and seconds (bounded; emptied when full).
_ISO_CACHE_SIZE = 1 << 16
_ISO_SECONDS: dict[int, str] = {}
_ISO_TEXTS: dict[int, str] = {}
# About 2.5 MB when full: the entry times of a few thousand jobs being logged.
_ISO_TEXTS_SIZE = 1 << 14


def parse_iso(text: str) -> int:
    """
    The inverse of L{format_iso}.

    The form L{format_iso} writes is read by slicing, its seconds remembered
    (bounded); anything else goes through C{strptime} (other fraction lengths,
    no fraction, errors).
    """
    if text.__class__ is str and len(text) == 27 and text[19] == "." and text[26] == "Z":
        prefix = text[:19]
        seconds = _ISO_PARSED.get(prefix)
        if seconds is None:
            seconds = _iso_seconds(prefix)
        frac = text[20:26]
        if seconds is not None and frac.isdigit() and frac.isascii():
            return seconds * 1_000_000 + int(frac)
    return _parse_iso_general(text)


_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()
_ISO_PARSED: dict[str, int] = {}


def _iso_seconds(prefix: str) -> int | None:
    """
    The seconds since the epoch of C{YYYY-MM-DDTHH:MM:SS}, remembered; C{None} if
    C{prefix} is not exactly that (left to L{_parse_iso_general}).
    """
    if not (
        prefix[4] == "-"
        and prefix[7] == "-"
        and prefix[10] == "T"
        and prefix[13] == ":"
        and prefix[16] == ":"
    ):
        return None
    digits = prefix[:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16] + prefix[17:]
    if not (digits.isdigit() and digits.isascii()):
        return None
    hour, minute, second = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:])
    try:
        day = datetime(int(prefix[:4]), int(prefix[5:7]), int(prefix[8:10]), hour, minute, second)
    except ValueError:
        return None
    seconds = (day.toordinal() - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    if len(_ISO_PARSED) >= _ISO_CACHE_SIZE:
        _ISO_PARSED.clear()
    _ISO_PARSED[prefix] = seconds
    return seconds


def _parse_iso_general(text: str) -> int:
    main, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    micro = int(frac.ljust(6, "0")[:6]) if frac else 0
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000 + micro


def format_text_time(us: int) -> str:
    """
    C{us} as C{YYYY-MM-DD HH:MM:SS UTC}, as the text status output prints times.
    """
    seconds = us // 1_000_000
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@attrs.define
class JobStatus:
    """
    The state of one job and everything L&B shows about it.

    C{machine} (C{"cream"}, C{"glite"} or C{None}), C{last_key} (the ordering key
    of the last event folded in, as a list), C{event_count} and C{branch_wm}
    (the WM counter of the current resubmission branch) are internal.
    """

    state: str = UNKNOWN
    jobId: str | None = None
    owner: str | None = None
    jobtype: str | None = None
    parent_job: str | None = None
    seed: str | None = None
    children_num: int | None = None
    condorId: str | None = None
    globusId: str | None = None
    localId: str | None = None
    jdl: str | None = None
    matched_jdl: str | None = None
    destination: str | None = None
    network_server: str | None = None
    reason: str | None = None
    location: str | None = None
    ce_node: str | None = None
    done_code: int | None = None
    exit_code: int | None = None
    resubmitted: bool = False
    cancelling: bool = False
    cancelReason: str | None = None
    cpuTime: int | None = None
    user_tags: dict[str, str] = attrs.Factory(dict)
    stateEnterTime: int | None = None
    stateEnterTimes: dict[str, int] = attrs.Factory(dict)
    lastUpdateTime: int | None = None
    acl: list[dict[str, str]] = attrs.Factory(list)
    payload_running: bool = False
    suspended: bool = False
    suspend_reason: str | None = None
    failure_reasons: list[str] = attrs.Factory(list)
    ui_host: str | None = None
    user_fqans: list[str] = attrs.Factory(list)
    jw_status: str | None = None
    payload_owner: str | None = None
    cream_state: str | None = None
    cream_id: str | None = None
    cream_owner: str | None = None
    cream_endpoint: str | None = None
    cream_jdl: str | None = None
    cream_reason: str | None = None
    cream_failure_reason: str | None = None
    cream_lrms_id: str | None = None
    cream_node: str | None = None
    cream_done_code: int | None = None
    cream_exit_code: int | None = None
    cream_cancelling: bool = False
    cream_cpu_time: int | None = None
    cream_jw_status: str | None = None
    glite_jobid: str | None = None
    cream_jobid: str | None = None
    machine: str | None = None
    last_key: list[int] | None = None
    event_count: int = 0
    branch_wm: int | None = None

    def copy(self) -> JobStatus:
        """
        A deep copy: changing it leaves C{self} alone.
        """
        return _copy_status(self)

    def set_state(self, state: str, date: int) -> None:
        """
        Move to C{state} at C{date}; entry times change only on a real change.
        """
        if state != self.state:
            self.state = state
            self.stateEnterTime = date
            self.stateEnterTimes[state] = date

    def to_json_dict(self) -> dict[str, Any]:
        """
        A JSON-ready dict: L&B field names, times as ISO 8601 UTC strings.
        """
        return _json_dict(self)

    def to_json(self) -> str:
        """
        L{to_json_dict} as compact JSON with sorted keys: what the stores write.
        """
        try:
            return _json_text(self)
        except (TypeError, ValueError):
            # A field holding a value of an unexpected type: the general encoder.
            return _json_encode(_json_sorted(self))

    def to_compact_json(self, jdl: bool = True) -> bytes:
        """
        The status as compact UTF-8 JSON without the fields at their default
        values (L{from_json_dict} reads them back as their defaults): half to
        three quarters of the bytes of L{to_json} at a third of its CPU, for
        texts stored per event (notification messages) rather than per job.

        @param jdl: C{False} leaves out the JDL fields (L{JDL_FIELDS}) too.
        """
        data = _compact_dict(self)
        if not jdl:
            for name in JDL_FIELDS:
                data.pop(name, None)
        try:
            return orjson.dumps(data)
        except TypeError:
            # A value orjson does not take (an int beyond 64 bits, a lone
            # surrogate, a key that is not a string): the general encoder.
            return _json_encode(data).encode("utf-8")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> JobStatus:
        """
        The inverse of L{to_json_dict} (and of L{public_dict}: done codes may be
        names); unknown keys are ignored, missing ones default.
        """
        return _from_json(cls, data)


_TIME_FIELDS = frozenset({"stateEnterTime", "lastUpdateTime"})
#: The fields of a status that hold a JDL.
JDL_FIELDS = ("jdl", "matched_jdl", "cream_jdl")
_INTERNAL = frozenset({"machine", "last_key", "event_count", "branch_wm"})
#: The fields L{public_dict} leaves out (internal to the store).
INTERNAL_FIELDS = _INTERNAL

# How each mutable field is copied; every other field holds an immutable value.
_COPY_EXPR: dict[str, str] = {
    "user_tags": "dict({v})",
    "stateEnterTimes": "dict({v})",
    "acl": "[dict(e) for e in {v}]",
    "failure_reasons": "list({v})",
    "user_fqans": "list({v})",
    "last_key": "None if {v} is None else list({v})",
}
# How each field goes into the JSON dict (containers copied, times formatted).
_JSON_EXPR: dict[str, str] = {
    **_COPY_EXPR,
    "stateEnterTime": "None if {v} is None else _iso({v})",
    "lastUpdateTime": "None if {v} is None else _iso({v})",
    "stateEnterTimes": "{{k: _iso(t) for k, t in {v}.items()}}",
}


def _compile(name: str, body: str, **names: Any) -> Any:
    """
    Build a function from generated source, as attrs does for C{__init__}: copying
    and serializing a status happen once per event, a loop over 56 fields is too slow.
    """
    namespace: dict[str, Any] = {"_new": object.__new__, "JobStatus": JobStatus, "_iso": format_iso}
    namespace.update(names)
    exec(compile(body, f"<lbtwist.core.states.status {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in attrs.fields(JobStatus))
_copy_status: Callable[[JobStatus], JobStatus] = _compile(
    "_copy_status",
    "def _copy_status(s):\n    n = _new(JobStatus)\n"
    + "".join(
        f"    n.{name} = {_COPY_EXPR.get(name, '{v}').format(v='s.' + name)}\n"
        for name in _FIELD_NAMES
    )
    + "    return n\n",
)
_json_dict: Callable[[JobStatus], dict[str, Any]] = _compile(
    "_json_dict",
    "def _json_dict(s):\n    return {\n"
    + "".join(
        f"        {name!r}: {_JSON_EXPR.get(name, '{v}').format(v='s.' + name)},\n"
        for name in _FIELD_NAMES
    )
    + "    }\n",
)
# The same dict with its keys (nested ones too) in sorted order, so that encoding
# it needs no sorting.
_JSON_SORTED_EXPR: dict[str, str] = {
    **_JSON_EXPR,
    "user_tags": "dict(sorted({v}.items()))",
    "stateEnterTimes": "{{k: _iso(t) for k, t in sorted({v}.items())}}",
    "acl": "[dict(sorted(e.items())) for e in {v}]",
}
_json_sorted: Callable[[JobStatus], dict[str, Any]] = _compile(
    "_json_sorted",
    "def _json_sorted(s):\n    return {\n"
    + "".join(
        f"        {name!r}: {_JSON_SORTED_EXPR.get(name, '{v}').format(v='s.' + name)},\n"
        for name in sorted(_FIELD_NAMES)
    )
    + "    }\n",
)
# No cycles can occur in a status dict: skip the check.
_json_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _json_value_expr(field: Any) -> str:
    """
    Python source writing the JSON of C{s.<field>} (as L{_json_encode} would).
    """
    v = f"s.{field.name}"
    kind = str(field.type)
    if field.name in _JSON_SORTED_EXPR:
        value = _JSON_SORTED_EXPR[field.name].format(v=v)
        if field.name in _TIME_FIELDS:
            return f'("null" if {v} is None else _str({value}))'
        # Most containers are empty: spare the encoder call.
        empty = {"dict": '"{}"', "list": '"[]"'}.get(kind.partition("[")[0])
        if empty is not None:
            return f"({empty} if {v}.__class__ is {kind.partition('[')[0]} and not {v} else _enc({value}))"
        return f"_enc({value})"
    if kind == "bool":
        return f'("true" if {v} is True else "false" if {v} is False else _enc({v}))'
    if kind.startswith("int"):
        return f'("null" if {v} is None else _int({v}) if {v}.__class__ is int else _enc({v}))'
    if kind.startswith("str"):
        return f'("null" if {v} is None else _str({v}))'
    return f"_enc({v})"


_FIELDS_BY_NAME = {field.name: field for field in attrs.fields(JobStatus)}

# The status as JSON text in one expression: key prefixes written once, each value
# by the cheapest encoder for its type. Same text as _json_encode(_json_sorted(s)).
_json_text: Callable[[JobStatus], str] = _compile(
    "_json_text",
    "def _json_text(s):\n    return ''.join((\n"
    + "".join(
        f"        {('{' if i == 0 else ',') + json.dumps(field.name) + ':'!r},\n"
        f"        {_json_value_expr(field)},\n"
        for i, field in enumerate(_FIELDS_BY_NAME[name] for name in sorted(_FIELDS_BY_NAME))
    )
    + "        '}',\n    ))\n",
    _str=encode_basestring_ascii,
    _int=int.__repr__,
    _enc=_json_encode,
)

# The order in which format_text prints fields (L&B's order, then ours).
TEXT_ORDER: tuple[str, ...] = tuple(
    f.name for f in attrs.fields(JobStatus) if f.name not in _INTERNAL
)


def _text_value(name: str, value: Any) -> str:
    if name in ("done_code", "cream_done_code"):
        return DONE_CODE_NAMES.get(value, str(value))
    if name in _TIME_FIELDS:
        return format_text_time(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if name == "user_tags":
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if name == "acl":
        return ", ".join(
            f"{e.get('permission_type', '')} {e.get('permission', '')} "
            f"{e.get('user_id_type', '')}:{e.get('user_id', '')}"
            for e in value
        )
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def format_text(status: JobStatus) -> str:
    """
    C{status} as C{glite-lb-job_status} style C{key : value} lines.

    Empty, C{None} and false values are skipped; C{stateEnterTimes} is a block
    of indented C{state : time} lines.
    """
    lines: list[str] = []
    for name in TEXT_ORDER:
        value = getattr(status, name)
        if value is None or value is False or value == "" or value == [] or value == {}:
            continue
        if name == "stateEnterTimes":
            lines.append("stateEnterTimes : ")
            for state in sorted(value, key=lambda s: (value[s], s)):
                lines.append(f"      {state} : {format_text_time(value[state])}")
            continue
        lines.append(f"{name} : {_text_value(name, value)}")
    return "\n".join(lines) + "\n"


def parse_int(text: str | None) -> int | None:
    """
    C{text} as an int, or C{None} when absent, C{N/A} or not a number.
    """
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def apply_common(status: JobStatus, event: Any) -> bool:
    """
    Apply the events both machines treat alike (user tags, ACLs, payload owner).

    @return: C{True} if C{event} was one of them.
    """
    kind = event.type
    if kind == "UserTag":
        name = event.get("name")
        if name:
            status.user_tags[name.lower()] = event.get("value", "")
        return True
    if kind == "ChangeACL":
        entry = {
            "user_id": event.get("user_id", ""),
            "user_id_type": event.get("user_id_type", ""),
            "permission": event.get("permission", ""),
            "permission_type": event.get("permission_type", ""),
        }
        if event.get("operation") == "REMOVE":
            status.acl = [e for e in status.acl if e != entry]
        elif entry not in status.acl:
            status.acl.append(entry)
        return True
    if kind == "GrantPayloadOwnership":
        status.payload_owner = event.get("payload_owner")
        return True
    if kind == "TakePayloadOwnership":
        status.payload_owner = event.user
        return True
    return False


# The public view of a status (queries, CLI --json): no internal fields, done
# codes by name.
_DONE_CODE_FIELDS = frozenset({"done_code", "cream_done_code"})
_DONE_CODE_BY_NAME = {name: code for code, name in DONE_CODE_NAMES.items()}


def public_dict(status: JobStatus | dict[str, Any]) -> dict[str, Any]:
    """
    What users see of a status: L{JobStatus.to_json_dict} (or such a dict) without
    the internal fields, done codes by name (C{OK}, C{FAILED}, C{CANCELLED}).

    @return: a new dict; C{status} is left alone.
    """
    data = status.to_json_dict() if isinstance(status, JobStatus) else status
    out = {k: v for k, v in data.items() if k not in _INTERNAL}
    for name in _DONE_CODE_FIELDS:
        value = out.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = DONE_CODE_NAMES.get(value, value)
    return out


def done_code_value(value: Any) -> Any:
    """
    A done code of a status dict as its number: names (L{public_dict}) are
    read back, anything else is returned as it is.

    @raise ValueError: an unknown name.
    """
    if isinstance(value, str):
        try:
            return _DONE_CODE_BY_NAME[value.upper()]
        except KeyError:
            raise ValueError(f"unknown done code {value!r}") from None
    return value


def _from_json_value_expr(field: Any) -> str:
    """
    Python source reading field C{field.name} from C{v} (present in the dict) as
    the original L{JobStatus.from_json_dict} did: times parsed, done code names
    read, containers copied; values of unexpected types deep-copied.
    """
    name, kind = field.name, str(field.type).partition("[")[0]
    if name in _TIME_FIELDS:
        return "None if v is None else _parse_iso(v)"
    if name == "stateEnterTimes":
        return "{k: _parse_iso(t) for k, t in (v or {}).items()}"
    if name == "last_key":
        return "None if v is None else [int(x) for x in v]"
    if name in _DONE_CODE_FIELDS:
        return "v if v is None or v.__class__ is int else _done(v)"
    if name == "acl":
        # JSON gives a list of flat dicts of strings: copy the list and the dicts.
        return (
            "[e.copy() if e.__class__ is dict else _deepcopy(e) for e in v]"
            " if v.__class__ is list else _deepcopy(v)"
        )
    if kind in ("dict", "list"):
        return f"v.copy() if v.__class__ is {kind} else _deepcopy(v)"
    if kind == "bool":
        return "v if v is True or v is False else _deepcopy(v)"
    if kind == "int":
        return "v if v.__class__ is int else _deepcopy(v)"
    if kind.startswith("str") or kind.startswith("int"):
        simple = "str" if kind.startswith("str") else "int"
        return f"v if v is None or v.__class__ is {simple} else _deepcopy(v)"
    return "_deepcopy(v)"


def _factory(field: Any) -> Any:
    """
    The factory of a field's default (C{attrs.Factory}), or C{None}.
    """
    return getattr(field.default, "factory", None)


# The inverse of to_json_dict in one generated function: each field read once
# (missing ones default), converted by its own expression.
_from_json: Callable[[type[JobStatus], dict[str, Any]], JobStatus] = _compile(
    "_from_json",
    "def _from_json(cls, d):\n    n = _new(cls)\n    get = d.get\n"
    + "".join(
        f"    v = get({field.name!r}, _MISSING)\n"
        f"    n.{field.name} = _default_{field.name}{'()' if _factory(field) else ''}"
        f" if v is _MISSING else ({_from_json_value_expr(field)})\n"
        for field in attrs.fields(JobStatus)
    )
    + "    return n\n",
    _MISSING=object(),
    _parse_iso=parse_iso,
    _done=done_code_value,
    _deepcopy=_copy.deepcopy,
    **{
        f"_default_{field.name}": _factory(field) or field.default
        for field in attrs.fields(JobStatus)
    },
)


def _compact_test(field: Any) -> str:
    """
    Python source: whether C{v} (the value of C{field}) differs from its default.
    """
    factory = _factory(field)
    if factory is not None:
        return f"v.__class__ is not {factory.__name__} or v"
    if field.default is None:
        return "v is not None"
    if field.default is True or field.default is False:
        return f"v is not {field.default!r}"
    return f"v.__class__ is not {type(field.default).__name__} or v != {field.default!r}"


# The status's non-default fields as a dict in sorted key order (nested keys too),
# so that orjson needs no sorting.
_compact_dict: Callable[[JobStatus], dict[str, Any]] = _compile(
    "_compact_dict",
    "def _compact_dict(s):\n    d = {}\n"
    + "".join(
        f"    v = s.{name}\n"
        f"    if {_compact_test(_FIELDS_BY_NAME[name])}:\n"
        f"        d[{name!r}] = {_JSON_SORTED_EXPR.get(name, '{v}').format(v='v')}\n"
        for name in sorted(_FIELDS_BY_NAME)
    )
    + "    return d\n",
)
