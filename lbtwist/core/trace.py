# -*- test-case-name: tests.unit.test_trace -*-
"""
Traceability, pure: from a batch job id, a worker node and a time, a DN or an FQAN
back to the grid job and its user.

The store keeps one trace row per job (L{TraceRow}, from its status: L{trace_row})
indexed by LRMS id, CREAM id, worker node with the job's running interval, owner
and primary FQAN with the job's lifetime. A request (L{TraceRequest}) names exactly
one key; C{node} takes a time C{at}, C{dn} and C{fqan} a window C{[from, to]}: the
jobs whose life (first to last state entry) overlaps it and which started at
most C{max_lifetime} before C{from} (the bound of the index scan).
The answer lists, per job, the owner DN, FQANs, ids, worker node, state entry times
and event sources (L{job_answer}); purged jobs answer from their zombie's trace record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from lbtwist.core.dn import normalize_dn
from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import (
    ABORTED,
    CANCELLED,
    CLEARED,
    DONE,
    RUNNING,
    JobStatus,
    format_iso,
    parse_iso,
)
from lbtwist.core.stats import parse_time, unique_params

#: The keys a trace request may name, and the time parameters.
KEYS = ("lrms_id", "cream_id", "jobid", "node", "dn", "fqan")
PARAMS = frozenset((*KEYS, "at", "from", "to"))

#: How long before a window's start a job found by DN or FQAN may have started, by
#: default (seconds; the option C{trace-max-lifetime}): the bound of the index scan.
DEFAULT_MAX_LIFETIME = 7 * 86_400

#: States that end a job's run on its worker node.
_AFTER_RUNNING = (DONE, ABORTED, CANCELLED, CLEARED)


@attrs.frozen
class TraceRow:
    """
    The trace index row of a job (times in microseconds, L{None}: not known).
    """

    jobid: str
    owner: str | None
    owner_norm: str | None
    fqan: str | None
    lrms_id: str | None
    cream_id: str | None
    worker_node: str | None
    running_from: int | None
    running_to: int | None
    first: int | None
    last: int | None

    def key(self) -> tuple[Any, ...]:
        """
        The row's values in column order (cheaper than C{attrs.astuple}).
        """
        return (
            self.jobid,
            self.owner,
            self.owner_norm,
            self.fqan,
            self.lrms_id,
            self.cream_id,
            self.worker_node,
            self.running_from,
            self.running_to,
            self.first,
            self.last,
        )


def _cream_unique(cream_id: str | None) -> str | None:
    # CREAM ids as CREAM logs them (https://host:8443/CREAM123456789) or bare.
    if not cream_id:
        return None
    return cream_id.rstrip("/").rsplit("/", 1)[-1]


def running_interval(times: Mapping[str, int]) -> tuple[int | None, int | None]:
    """
    When the job started running and when it stopped (the first later terminal entry;
    L{None}: still running or never ran).
    """
    start = times.get(RUNNING)
    if not start:
        return None, None
    end = None
    for state in _AFTER_RUNNING:
        t = times.get(state)
        if t is not None and t >= start and (end is None or t < end):
            end = t
    return start, end


def trace_row(jobid: str, status: JobStatus) -> TraceRow:
    """
    The trace row of a job's status.
    """
    times = status.stateEnterTimes
    start, end = running_interval(times)
    fqans = status.user_fqans
    return TraceRow(
        jobid=jobid,
        owner=status.owner,
        owner_norm=normalize_dn(status.owner) if status.owner else None,
        fqan=fqans[0] if fqans else None,
        lrms_id=status.cream_lrms_id or status.localId or status.globusId or None,
        cream_id=_cream_unique(status.cream_id or status.cream_jobid),
        worker_node=status.cream_node or status.ce_node or None,
        running_from=start,
        running_to=end,
        first=min(times.values()) if times else None,
        # The last state entry, not lastUpdateTime: the row changes with the state, not
        # with every event.
        last=max(times.values()) if times else None,
    )


def _fields(status: JobStatus) -> tuple[Any, ...]:
    # What a trace row is made of besides the state entry times.
    return (
        status.owner,
        status.user_fqans[:1],
        status.cream_lrms_id,
        status.localId,
        status.globusId,
        status.cream_id,
        status.cream_jobid,
        status.cream_node,
        status.ce_node,
    )


def changed_row(jobid: str, before: JobStatus | None, after: JobStatus) -> TraceRow | None:
    """
    The trace row to write after a status change, L{None} if it is the same as before
    (cheap: the row is built only when an entry time or one of its fields changed).
    """
    if (
        before is not None
        and before.event_count
        and before.stateEnterTimes == after.stateEnterTimes
        and _fields(before) == _fields(after)
    ):
        return None
    return trace_row(jobid, after)


@attrs.frozen
class TraceRequest:
    """
    One trace request: C{key} (one of L{KEYS}) equal to C{value}, at a time C{at}
    (C{node}) or over C{[start, end]} (C{dn}, C{fqan}; open ends: L{None}).
    """

    key: str
    value: str
    at: int | None = None
    start: int | None = None
    end: int | None = None
    #: Microseconds a job found by DN or FQAN may have lived before C{start}.
    lifetime: int = DEFAULT_MAX_LIFETIME * 1_000_000

    @classmethod
    def parse(
        cls, params: Iterable[tuple[str, str]], *, max_lifetime: int = DEFAULT_MAX_LIFETIME
    ) -> TraceRequest:
        """
        @param max_lifetime: seconds a job found by DN or FQAN may have started before
            the window's start (C{trace-max-lifetime}).
        @raise InvalidValue: unknown parameters, no key or two, C{node} without C{at}.
        """
        given = unique_params(params, PARAMS)
        keys = [k for k in KEYS if k in given]
        if len(keys) != 1:
            raise InvalidValue(f"name exactly one of {', '.join(KEYS)}")
        [key] = keys
        value = given[key].strip()
        if not value:
            raise InvalidValue(f"{key} is empty")
        at = parse_time(given["at"], "at") if "at" in given else None
        start = parse_time(given["from"], "from") if "from" in given else None
        end = parse_time(given["to"], "to") if "to" in given else None
        if key == "node" and at is None:
            raise InvalidValue("node needs at (the time the job ran there)")
        if key != "node" and at is not None:
            raise InvalidValue("at is for node; dn and fqan take from and to")
        if key not in ("dn", "fqan") and (start is not None or end is not None):
            raise InvalidValue("from and to are for dn and fqan")
        if start is not None and end is not None and end < start:
            raise InvalidValue("the window is empty: from must be before to")
        if key == "dn":
            value = normalize_dn(value)
        if key == "cream_id":
            value = _cream_unique(value) or value
        return cls(key, value, at, start, end, max_lifetime * 1_000_000)


def matches(request: TraceRequest, row: TraceRow) -> bool:
    """
    Whether a trace row answers a request (the store's SQL does the same by index).
    """
    key = request.key
    if key == "lrms_id":
        return row.lrms_id == request.value
    if key == "cream_id":
        return row.cream_id == request.value
    if key == "jobid":
        return row.jobid == request.value or row.jobid.rsplit("/", 1)[-1] == request.value
    if key == "node":
        at = request.at
        assert at is not None
        return (
            row.worker_node == request.value
            and row.running_from is not None
            and row.running_from <= at
            and (row.running_to is None or at <= row.running_to)
        )
    field = row.owner_norm if key == "dn" else row.fqan
    if field != request.value:
        return False
    if request.end is not None and (row.first is None or row.first > request.end):
        return False
    if request.start is not None:
        if row.last is None or row.last < request.start:
            return False
        if row.first is None or row.first < request.start - request.lifetime:
            return False
    return True


def job_answer(
    status: Mapping[str, Any], sources: Sequence[str], *, purged_at: int | None = None
) -> dict[str, Any]:
    """
    One job of a trace answer from its public status dict (L&B field names, ISO
    times, as the status JSON and a zombie's trace record hold it) and its sources.
    """
    times = status.get("stateEnterTimes") or {}
    entered = {state: t for state, t in sorted(times.items(), key=lambda kv: str(kv[1])) if t}
    answer = {
        "jobid": status.get("jobId"),
        "owner": status.get("owner"),
        "fqans": list(status.get("user_fqans") or []),
        "state": status.get("state"),
        "cream_id": status.get("cream_id") or status.get("cream_jobid"),
        "lrms_id": status.get("cream_lrms_id") or status.get("localId") or status.get("globusId"),
        "worker_node": status.get("cream_node") or status.get("ce_node"),
        "destination": status.get("destination"),
        "entered": entered,
        "sources": list(sources),
        "purged": purged_at is not None,
    }
    if purged_at is not None:
        answer["purged_at"] = format_iso(purged_at)
    return answer


def sort_key(job: Mapping[str, Any]) -> tuple[int, str]:
    """
    Jobs of an answer by their first state entry, then id.
    """
    times = [parse_iso(t) for t in job["entered"].values() if isinstance(t, str)]
    return (min(times) if times else 0, job["jobid"] or "")


def render_text(jobs: Sequence[Mapping[str, Any]]) -> str:
    """
    The plain-text form of a trace answer (C{lbtwist trace}).
    """
    if not jobs:
        return "no job found\n"
    out = []
    for job in jobs:
        out.append(
            f"job {job['jobid']}{' (purged ' + job['purged_at'] + ')' if job['purged'] else ''}"
        )
        out.append(f"  owner: {job['owner'] or '-'}")
        out.append(f"  fqans: {' '.join(job['fqans']) or '-'}")
        out.append(f"  state: {job['state'] or '-'}")
        out.append(f"  cream id: {job['cream_id'] or '-'}")
        out.append(f"  lrms id: {job['lrms_id'] or '-'}")
        out.append(f"  worker node: {job['worker_node'] or '-'}")
        for state, when in job["entered"].items():
            out.append(f"  entered {state}: {when}")
        out.append(f"  sources: {' '.join(job['sources']) or '-'}")
    return "\n".join(out) + "\n"
