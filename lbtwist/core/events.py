# -*- test-case-name: tests.unit.test_events -*-
"""
The L&B event model: catalogue, sources, parsing and formatting of events.

The catalogue is generated at import time from the package's copy of
C{catalogue/events.tsv} (read by L{lbtwist.core.catalogue}); nothing here is
copied by hand from it.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from lbtwist.core import catalogue as _catalogue
from lbtwist.core.catalogue import SOURCES as SOURCES
from lbtwist.core.errors import (
    EventUndefined,
    InvalidValue,
    JobIdFormat,
    KeyMisuse,
    MessageIncomplete,
)
from lbtwist.core.ulm import (
    DEFAULT_MAX_FIELDS,
    DEFAULT_MAX_SIZE,
    duplicate_error,
    format_date,
    format_fields,
    parse_date,
    scan_fields,
)

# DG.PRIORITY bits.
PRIO_SYNC = 2
PRIO_LOCAL = 4
PRIO_PROXY = 8
PRIO_DIRECT = 16
PRIO_INTERNAL = 32
PRIO_EXCL = 64
PRIO_FILE = 128

_SOURCES_BY_UPPER = {name.upper(): name for name in SOURCES}


@attrs.frozen
class FieldSpec:
    """
    One field of an event type (or of every event, for the common fields).

    @ivar name: catalogue field name (e.g. C{LRMS_jobid}).
    @ivar wire_key: ULM key (e.g. C{DG.CREAMSTATUS.LRMS_JOBID}).
    @ivar type: catalogue type (C{string}, C{int}, C{logsrc}, C{jobid}, ...).
    @ivar required: whether an event without it is incomplete.
    @ivar codes: allowed code names of an enumerated field, else empty.
    @ivar null_value: L&B's "unset" value for the field, or C{""}.
    """

    name: str
    wire_key: str
    type: str
    required: bool
    codes: tuple[str, ...] = ()
    null_value: str = ""


@attrs.frozen
class EventType:
    """
    One event type of the catalogue.
    """

    name: str
    code: int
    group: str
    fields: tuple[FieldSpec, ...]


def _load_catalogue() -> tuple[tuple[FieldSpec, ...], dict[str, EventType]]:
    common_rows, rows = _catalogue.load()

    def spec(row: _catalogue.FieldRow) -> FieldSpec:
        name, wire_key, type_, required, codes, null_value = row
        return FieldSpec(name, wire_key, type_, required, codes, null_value)

    catalogue = {
        name: EventType(name=name, code=code, group=group, fields=tuple(map(spec, fields)))
        for name, (_, code, group, fields) in rows.items()
    }
    return tuple(map(spec, common_rows)), catalogue


COMMON_FIELDS, CATALOGUE = _load_catalogue()
_BY_UPPER = {name.upper(): etype for name, etype in CATALOGUE.items()}
_BY_CODE = {etype.code: etype for etype in CATALOGUE.values()}
#: upper-case wire key -> (event type, field) for every event-specific key
_WIRE_OWNER = {
    spec.wire_key.upper(): (etype, spec) for etype in CATALOGUE.values() for spec in etype.fields
}
_OWN_KEYS = {
    etype.name: {spec.wire_key.upper(): spec for spec in etype.fields}
    for etype in CATALOGUE.values()
}
_REQUIRED_FIELDS = {
    etype.name: tuple(spec for spec in etype.fields if spec.required)
    for etype in CATALOGUE.values()
}
_LEVELS = next(spec.codes for spec in COMMON_FIELDS if spec.wire_key == "LVL")
_COMMON_KEYS = frozenset(
    {spec.wire_key for spec in COMMON_FIELDS} | {"PROG", "DG.EVNT"},
)
_REQUIRED_COMMON = ("DATE", "HOST", "DG.PRIORITY", "DG.SEQCODE", "DG.USER", "DG.SOURCE")

_INT_RE = re.compile(r"[+-]?[0-9]+")
_DOUBLE_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_JOBID_RE = re.compile(r"https://(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/[^\s/]+")


def event_type(name: str) -> EventType:
    """
    Look up an event type by name, case-insensitively.

    @raise EventUndefined: no such event type.
    """
    etype = _BY_UPPER.get(name.upper())
    if etype is None:
        raise EventUndefined(f"unknown event type {name!r}")
    return etype


def event_type_by_code(code: int) -> EventType:
    """
    Look up an event type by its numeric code.

    @raise EventUndefined: no such event code.
    """
    etype = _BY_CODE.get(code)
    if etype is None:
        raise EventUndefined(f"unknown event code {code}")
    return etype


def source_name(text: str) -> str:
    """
    The canonical name of an event source, given case-insensitively.

    @raise InvalidValue: not a known source.
    """
    name = _SOURCES_BY_UPPER.get(text.upper())
    if name is None:
        raise InvalidValue(_source_error(text))
    return name


def _source_error(text: str) -> str:
    return f"unknown source {text!r}; allowed: {' '.join(SOURCES)}"


def _check_jobid(key: str, value: str) -> str:
    if value in _GOOD_JOBIDS:
        return value
    if _JOBID_RE.fullmatch(value) is None:
        raise JobIdFormat(f"{key}: malformed job id {value!r}, want https://host[:port]/unique")
    if len(_GOOD_JOBIDS) >= _GOOD_JOBIDS_SIZE:
        _GOOD_JOBIDS.clear()
    _GOOD_JOBIDS.add(value)
    return value


# Job ids found well formed lately: a job's events all carry its id (bounded).
_GOOD_JOBIDS_SIZE = 1 << 16
_GOOD_JOBIDS: set[str] = set()


def _code_name(key: str, value: str, codes: tuple[str, ...]) -> str:
    upper = value.upper()
    for code in codes:
        if code == upper:
            return code
    if upper == "UNDEFINED":
        # L&B's unparser writes an unset enumeration so: read as absent.
        return ""
    raise InvalidValue(f"{key}: bad value {value!r}; allowed: {' '.join(codes)}")


def _field_value(spec: FieldSpec, value: str) -> str:
    if spec.codes:
        return _code_name(spec.wire_key, value, spec.codes)
    kind = spec.type
    if kind in ("int", "port"):
        if _INT_RE.fullmatch(value) is None:
            raise InvalidValue(f"{spec.wire_key}: bad value {value!r}, want an integer")
    elif kind == "double":
        if _DOUBLE_RE.fullmatch(value) is None:
            raise InvalidValue(f"{spec.wire_key}: bad value {value!r}, want a number")
    elif kind == "logsrc":
        try:
            return source_name(value)
        except InvalidValue as e:
            raise InvalidValue(f"{spec.wire_key}: {e.message}") from None
    elif kind == "jobid":
        return _check_jobid(spec.wire_key, value)
    return value


@attrs.frozen
class Event:
    """
    One L&B event.

    Times are microseconds since the epoch, UTC.

    @ivar type: canonical catalogue name of the event type, e.g. C{CREAMStatus}.
    @ivar source: canonical source name (one of L{SOURCES}).
    @ivar fields: catalogue field name -> value; enumerations as their
        upper-case code name; absent or empty fields are left out.
    @ivar extra: keys unknown to the catalogue, verbatim and in input order.
    """

    type: str
    jobid: str
    date: int
    host: str
    user: str
    source: str
    seqcode: str
    priority: int = 0
    level: str = "SYSTEM"
    src_instance: str = ""
    prog: str = "edg-wms"
    arrived: int | None = None
    fields: dict[str, str] = attrs.field(factory=dict)
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        The value of event field C{name} (catalogue name), or C{default}.
        """
        return self.fields.get(name, default)

    @property
    def generated(self) -> bool:
        """
        Whether a server generated this event (C{DG.GENERATED_BY} present).
        """
        if not self.extra:
            return False
        return any(key.upper() == "DG.GENERATED_BY" for key, _ in self.extra)

    def evolve(self, **changes: Any) -> Event:
        """
        A copy of this event with some attributes changed.
        """
        return attrs.evolve(self, **changes)


def parse_event(
    line: str | bytes,
    *,
    max_fields: int = DEFAULT_MAX_FIELDS,
    max_size: int = DEFAULT_MAX_SIZE,
    require_jobid: bool = True,
) -> Event:
    """
    Parse and validate one ULM event line.

    @param require_jobid: if false, a line without C{DG.JOBID} parses (with
        C{jobid=""}); used for templates.
    @raise LBError: L{BrokenULM}, L{EventUndefined}, L{MessageIncomplete},
        L{KeyDuplicity}, L{KeyMisuse}, L{JobIdFormat}, L{InvalidValue} or
        L{TooBig}, with a message naming the offending field.
    """
    triples = scan_fields(line, max_fields, max_size)
    common = {upper: value for _, upper, value in triples}
    if len(common) != len(triples):
        raise duplicate_error(triples)

    evnt = common.get("DG.EVNT")
    if not evnt:
        raise EventUndefined("DG.EVNT missing")
    etype = _BY_UPPER.get(evnt.upper()) or event_type(evnt)
    for key in _REQUIRED_COMMON:
        if not common.get(key):
            raise MessageIncomplete(f"required field {key} missing")
    jobid = common.get("DG.JOBID", "")
    if jobid:
        _check_jobid("DG.JOBID", jobid)
    elif require_jobid:
        raise MessageIncomplete("required field DG.JOBID missing")
    priority = common["DG.PRIORITY"]
    if priority != "0" and _INT_RE.fullmatch(priority) is None:
        raise InvalidValue(f"DG.PRIORITY: bad value {priority!r}, want an integer")
    source_text = common["DG.SOURCE"]
    source = _SOURCES_BY_UPPER.get(source_text.upper())
    if source is None:
        raise InvalidValue(f"DG.SOURCE: {_source_error(source_text)}")
    level = common.get("LVL")
    arr_date = common.get("ARR_DATE")

    own = _OWN_KEYS[etype.name]
    fields: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for key, upper, value in triples:
        if upper in _COMMON_KEYS:
            continue
        spec = own.get(upper)
        if spec is not None:
            if value and (value != "null" or spec.type != "jobid"):
                value = _field_value(spec, value)
                if value:
                    fields[spec.name] = value
            # else: empty, or the Java producer's "null" job id (no parent): L&B's
            # parser ignored it too.
            continue
        owner = _WIRE_OWNER.get(upper)
        if owner is not None:
            raise KeyMisuse(f"key {key} belongs to event {owner[0].name}, not {etype.name}")
        extra.append((key, value))
    for spec in _REQUIRED_FIELDS[etype.name]:
        if spec.name not in fields:
            raise MessageIncomplete(f"required field {spec.wire_key} missing")

    return Event(
        type=etype.name,
        jobid=jobid,
        date=parse_date(common["DATE"], key="DATE"),
        host=common["HOST"],
        user=common["DG.USER"],
        source=source,
        seqcode=common["DG.SEQCODE"],
        priority=int(priority),
        level=(level if level in _LEVELS else _code_name("LVL", level, _LEVELS))
        if level
        else "SYSTEM",
        src_instance=common.get("DG.SRC_INSTANCE", ""),
        prog=common.get("PROG") or "edg-wms",
        arrived=parse_date(arr_date, key="ARR_DATE") if arr_date else None,
        fields=fields,
        extra=tuple(extra),
    )


def format_event(ev: Event) -> str:
    """
    The canonical ULM line of an event, without the trailing LF.
    """
    pairs = [("DATE", format_date(ev.date))]
    if ev.arrived is not None:
        pairs.append(("ARR_DATE", format_date(ev.arrived)))
    pairs += [
        ("HOST", ev.host),
        ("PROG", ev.prog),
        ("LVL", ev.level),
        ("DG.PRIORITY", str(ev.priority)),
        ("DG.SOURCE", ev.source),
        ("DG.SRC_INSTANCE", ev.src_instance),
        ("DG.EVNT", ev.type),
        ("DG.JOBID", ev.jobid),
        ("DG.SEQCODE", ev.seqcode),
        ("DG.USER", ev.user),
    ]
    values = ev.fields
    for spec in event_type(ev.type).fields:
        value = values.get(spec.name)
        if value:
            pairs.append((spec.wire_key, value))
    pairs += ev.extra
    return format_fields(pairs)


def make_event(
    type: str,
    *,
    jobid: str,
    date: int,
    host: str,
    user: str,
    source: str,
    seqcode: str,
    priority: int = 0,
    level: str = "SYSTEM",
    src_instance: str = "",
    prog: str = "edg-wms",
    arrived: int | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    **fields: object,
) -> Event:
    """
    Build and validate an event.

    @param fields: event fields by catalogue name (matched case-insensitively,
        e.g. C{new_state="REALLY-RUNNING"}); C{None} values are left out,
        other values are turned into strings.
    @raise LBError: as L{parse_event}; L{InvalidValue} for a field the event
        type does not have.
    """
    etype = event_type(type)
    names = {spec.name.lower(): spec.name for spec in etype.fields}
    values: dict[str, str] = {}
    for name, value in fields.items():
        canonical = names.get(name.lower())
        if canonical is None:
            raise InvalidValue(f"event {etype.name} has no field {name!r}")
        if value is not None:
            values[canonical] = str(value)
    draft = Event(
        type=etype.name,
        jobid=jobid,
        date=date,
        host=host,
        user=user,
        source=source,
        seqcode=seqcode,
        priority=priority,
        level=level,
        src_instance=src_instance,
        prog=prog,
        arrived=arrived,
        fields=values,
        extra=tuple(extra),
    )
    return parse_event(format_event(draft))
