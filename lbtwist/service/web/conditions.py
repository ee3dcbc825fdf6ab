# -*- test-case-name: tests.unit.test_web_conditions -*-
"""
L&B's query condition syntax, as the C{?query=} parameter takes it.

C{attr<op>value} conditions joined by C{&} (all must hold); C{|} adds
alternatives for the same attribute (any may hold), written with or without
the attribute name again: C{status=running|=scheduled&lastupdatetime>last3600}.
Operators: C{= != < > <= >=}. Times are epoch seconds, ISO 8601 UTC, or
C{lastNNN} (NNN seconds before now).

Pure: callers pass C{now}.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from lbtwist.core.states.status import STATES, cream_state_name
from lbtwist.store.query import FIELD_TYPES, JobCondition

#: Most conditions (alternatives counted one by one) in one query.
MAX_CONDITIONS = 32

#: Longest condition text accepted.
MAX_QUERY_LENGTH = 4096

#: Attribute names (lower case, C{_} and C{-} dropped) -> status field.
ATTRIBUTES: dict[str, str] = {
    "status": "state",
    "state": "state",
    "owner": "owner",
    "jobtype": "jobtype",
    "type": "jobtype",
    "lastupdatetime": "lastUpdateTime",
    "lastupdate": "lastUpdateTime",
    "stateentertime": "stateEnterTime",
    "destination": "destination",
    "exitcode": "exit_code",
    "donecode": "done_code",
    "cenode": "ce_node",
    "creamstate": "cream_state",
    "networkserver": "network_server",
    "localid": "localId",
    "creamnode": "cream_node",
}

_DONE_CODES = {"ok": 0, "failed": 1, "cancelled": 2}
_STATES = {s.lower(): s for s in STATES}
_OPERATOR = re.compile(r"(!=|<=|>=|=|<|>)")
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z?")


class ConditionError(ValueError):
    """
    A condition that does not parse; the message says which and why.
    """


def attribute(name: str) -> str:
    """
    @return: the status field an attribute name means.
    @raise ConditionError: unknown attribute.
    """
    key = name.strip().lower().replace("_", "").replace("-", "")
    field = ATTRIBUTES.get(key)
    if field is None:
        raise ConditionError(
            f"unknown attribute {name!r}; known: {', '.join(sorted(set(ATTRIBUTES)))}"
        )
    return field


def parse_time(text: str, *, now: int) -> int:
    """
    A time as microseconds since the epoch: C{lastNNN} (seconds before C{now}),
    whole epoch seconds, or ISO 8601 UTC.

    @raise ConditionError: none of these.
    """
    text = text.strip()
    lowered = text.lower()
    if lowered.startswith("last") and lowered[4:].isdigit() and len(lowered) <= 20:
        return now - int(lowered[4:]) * 1_000_000
    if _INT.fullmatch(text):
        return int(text) * 1_000_000
    match = _ISO.fullmatch(text)
    if match:
        try:
            moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            raise ConditionError(f"not a time: {text!r}") from None
        seconds = int(moment.replace(tzinfo=UTC).timestamp())
        micro = int((match.group(2) or "0").ljust(6, "0"))
        return seconds * 1_000_000 + micro
    raise ConditionError(f"not a time (epoch seconds, ISO 8601 or lastNNN): {text!r}")


def parse_value(field: str, text: str, *, now: int) -> str | int:
    """
    The typed value of a condition on C{field}.

    @raise ConditionError: not a valid value for the field.
    """
    if field in ("lastUpdateTime", "stateEnterTime"):
        return parse_time(text, now=now)
    if field == "state":
        state = _STATES.get(text.strip().lower())
        if state is None:
            raise ConditionError(f"unknown state {text!r}; known: {', '.join(STATES)}")
        return state
    if field == "cream_state":
        cream = cream_state_name(text)
        if cream is None:
            raise ConditionError(f"unknown CREAM state {text!r}")
        return cream
    if field == "done_code" and text.strip().lower() in _DONE_CODES:
        return _DONE_CODES[text.strip().lower()]
    if FIELD_TYPES[field] is int:
        if not _INT.fullmatch(text.strip()):
            raise ConditionError(f"{field}: not a whole number: {text!r}")
        return int(text)
    if field == "jobtype":
        return text.strip().upper()
    if not text:
        raise ConditionError(f"{field}: empty value")
    return text


def _split_op(text: str) -> tuple[str, str, str]:
    match = _OPERATOR.search(text)
    if match is None:
        raise ConditionError(f"no operator (= != < > <= >=) in {text!r}")
    return text[: match.start()], match.group(1), text[match.end() :]


def parse_conditions(text: str, *, now: int) -> tuple[JobCondition, ...]:
    """
    Parse a condition string (already URL-decoded).

    @param now: the current time, microseconds since the epoch (for C{lastNNN}).
    @raise ConditionError: a syntax error, an unknown attribute or a bad value.
    """
    if len(text) > MAX_QUERY_LENGTH:
        raise ConditionError(f"query longer than {MAX_QUERY_LENGTH} characters")
    conditions: list[JobCondition] = []
    count = 0
    for group in text.split("&"):
        if not group.strip():
            continue
        field: str | None = None
        alternatives: list[tuple[str, str | int]] = []
        for alt in group.split("|"):
            name, op, value = _split_op(alt)
            if name.strip():
                named = attribute(name)
                if field is not None and named != field:
                    raise ConditionError(
                        f"alternatives joined by | must name one attribute: {group!r}"
                    )
                field = named
            elif field is None:
                raise ConditionError(f"condition without an attribute: {alt!r}")
            count += 1
            if count > MAX_CONDITIONS:
                raise ConditionError(f"more than {MAX_CONDITIONS} conditions")
            assert field is not None
            alternatives.append((op, parse_value(field, value, now=now)))
        assert field is not None
        conditions.append(JobCondition(field, tuple(alternatives)))
    return tuple(conditions)
