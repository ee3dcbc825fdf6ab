# -*- test-case-name: tests.unit.test_web_conditions -*-
"""
Job list queries: the filter values the stores accept, and how each store applies them.

A L{JobQuery} is a conjunction of L{JobCondition}s, each one status field compared with
one or more alternatives (a disjunction), as L&B's query conditions are. Both stores
order a listing by (last update descending, job id) and page with an opaque position
(the sort key of the last row handed out), so pages stay stable while jobs are added.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lbtwist.core.dn import normalize_dn
from lbtwist.core.jobid import unique_of
from lbtwist.core.states.status import format_iso

if TYPE_CHECKING:
    from lbtwist.store.interface import JobSummary

__all__ = [
    "FIELD_TYPES",
    "OPERATORS",
    "JobCondition",
    "JobPage",
    "JobQuery",
    "decode_cursor",
    "encode_cursor",
    "order_rows",
    "owner_key",
    "postgres_json",
    "row_matches",
    "sql_where",
    "sqlite_json",
    "unique_of",
]

#: Comparison operators of L&B's condition syntax.
OPERATORS: tuple[str, ...] = ("=", "!=", "<", ">", "<=", ">=")

#: Status fields a query may name, and the value type each one compares as.
FIELD_TYPES: dict[str, type] = {
    "state": str,
    "owner": str,
    "jobtype": str,
    "lastUpdateTime": int,
    "stateEnterTime": int,
    "destination": str,
    "exit_code": int,
    "done_code": int,
    "ce_node": str,
    "cream_state": str,
    "network_server": str,
    "localId": str,
    "cream_node": str,
}

#: Fields held in their own (indexed) column of the SQLite jobs table.
_COLUMNS = {
    "state": "state",
    "jobtype": "jobtype",
    "owner": "owner_norm",
    "lastUpdateTime": "list_time",
}

_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}

Value = str | int


@attrs.frozen
class JobCondition:
    """
    One status field compared with alternatives: true if any alternative holds.

    @ivar field: a key of L{FIELD_TYPES}.
    @ivar alternatives: C{(operator, value)} pairs; times are microseconds since the
        epoch; an C{owner} value is a DN (compared normalized).
    """

    field: str
    alternatives: tuple[tuple[str, Value], ...]


@attrs.frozen
class JobQuery:
    """
    A job listing request.

    @ivar owner: only jobs of this DN (compared normalized); L{None}: any owner.
    @ivar conditions: all must hold.
    @ivar limit: most rows in the page.
    @ivar after: the position after which the page starts (L{JobPage.next} of the
        previous page); L{None}: the first page.
    """

    owner: str | None = None
    conditions: tuple[JobCondition, ...] = ()
    limit: int = 100
    after: tuple[str, str] | None = None


@attrs.frozen
class JobPage:
    """
    One page of a listing.

    @ivar jobs: L{lbtwist.store.interface.JobSummary} rows, newest update first.
    @ivar next: the position of the next page, L{None} on the last page.
    """

    jobs: list[JobSummary]
    next: tuple[str, str] | None


def encode_cursor(position: tuple[str, str]) -> str:
    """
    @return: the opaque, URL-safe form of a page position.
    """
    raw = json.dumps(list(position), separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[str, str]:
    """
    The inverse of L{encode_cursor}.

    @raise ValueError: C{text} is not a cursor.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"bad cursor: {e}") from None
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, str) for v in value):
        raise ValueError("bad cursor")
    return value[0], value[1]


def owner_key(owner: str | None) -> str | None:
    """
    @return: the stored, comparable form of an owner DN.
    """
    return normalize_dn(owner) if owner else None


def _stored_value(field: str, value: Value) -> Value:
    if field == "lastUpdateTime" or field == "stateEnterTime":
        return format_iso(int(value))
    if field == "owner":
        return normalize_dn(str(value))
    return value


# SQLite (and PostgreSQL)

#: A condition on a status field kept in the status JSON only: C{(field, op,
#: value) -> (SQL, arguments)}.
JsonCompare = Callable[[str, str, Any], tuple[str, list[Any]]]


def sqlite_json(field: str, op: str, value: Any) -> tuple[str, list[Any]]:
    """
    SQLite's form of a condition on a status field in the JSON (C{json_extract}).
    """
    return f"json_extract(status, ?) {op} ?", [f"$.{field}", value]


def postgres_json(field: str, op: str, value: Any) -> tuple[str, list[Any]]:
    """
    PostgreSQL's form (C{jsonb}): the field compared with the value as JSON, of the
    same JSON type only (a number never matches a string, as in the memory store).
    """
    encoded = json.dumps(value)
    return (
        f"((status::jsonb -> ?) {op} ?::jsonb"
        " AND jsonb_typeof(status::jsonb -> ?) = jsonb_typeof(?::jsonb))",
        [field, encoded, field, encoded],
    )


def sql_where(query: JobQuery, json_compare: JsonCompare = sqlite_json) -> tuple[str, list[Any]]:
    """
    The C{WHERE} clause (without the keyword; C{"TRUE"} if empty, valid SQL on SQLite and PostgreSQL) and its arguments for
    the jobs table; C{json_compare} writes the conditions on fields of the status
    JSON in the store's dialect (L{sqlite_json}, L{postgres_json}).
    """
    clauses: list[str] = []
    args: list[Any] = []
    if query.owner is not None:
        clauses.append("owner_norm = ?")
        args.append(normalize_dn(query.owner))
    for cond in query.conditions:
        column = _COLUMNS.get(cond.field)
        parts = []
        for op, value in cond.alternatives:
            if op not in _PY_OPS:
                raise ValueError(f"unknown operator {op!r}")
            stored = _stored_value(cond.field, value)
            if column is None:
                sql, more = json_compare(cond.field, op, stored)
                parts.append(sql)
                args.extend(more)
                continue
            if column == "list_time":
                # Jobs never updated sort last with list_time "", but match no time.
                parts.append(f"(list_time {op} ? AND list_time != '')")
            else:
                parts.append(f"{column} {op} ?")
            args.append(stored)
        clauses.append("(" + " OR ".join(parts) + ")")
    if query.after is not None:
        # The range on list_time lets the index seek; the OR only sorts out ties.
        clauses.append("list_time <= ? AND (list_time < ? OR jobid > ?)")
        args.extend([query.after[0], query.after[0], query.after[1]])
    return (" AND ".join(clauses) or "TRUE"), args


# Memory


def row_matches(query: JobQuery, jobid: str, status: Mapping[str, Any]) -> bool:
    """
    Does a job (its id and status as stored, JSON form) satisfy C{query} (paging
    position included)? The memory store's version of L{sql_where}.
    """
    if query.owner is not None and owner_key(status.get("owner")) != normalize_dn(query.owner):
        return False
    for cond in query.conditions:
        have = status.get(cond.field)
        if cond.field == "owner":
            have = owner_key(have)
        if have is None:
            return False
        if not any(
            _compare(have, op, _stored_value(cond.field, want)) for op, want in cond.alternatives
        ):
            return False
    if query.after is not None:
        key = list_key(jobid, status)
        if not (key[0] < query.after[0] or (key[0] == query.after[0] and key[1] > query.after[1])):
            return False
    return True


def _compare(have: object, op: str, want: object) -> bool:
    if isinstance(have, str) != isinstance(want, str):
        return False
    return _PY_OPS[op](have, want)


def list_key(jobid: str, status: Mapping[str, Any]) -> tuple[str, str]:
    """
    @return: the page position of a job: (last update as ISO text or C{""}, job id).
    """
    return (status.get("lastUpdateTime") or "", jobid)


def order_rows(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
) -> list[tuple[str, Mapping[str, Any]]]:
    """
    Sort (job id, status) pairs in listing order: last update descending, then job id.
    """
    by_id = sorted(rows, key=lambda r: r[0])
    return sorted(by_id, key=lambda r: list_key(*r)[0], reverse=True)
