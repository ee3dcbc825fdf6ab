# -*- test-case-name: tests.unit.test_stats -*-
"""
Job statistics, pure: what a status change adds to the state-entry index, the
parameters of a statistics request, and the figures L&B's GET_STATISTICS gave.

The store keeps one row per job and state it entered (the last entry time of that
state, as C{stateEnterTimes} holds it), with the job's C{destination}, C{ce_node},
owner and VO at that moment. A request names a state and a window C{[from, to)}:

  - the rate: how many jobs entered the state in the window, per second, and per
    C{step} seconds when asked (buckets);
  - with C{to_state}: the durations from entering C{state} to entering C{to_state},
    for the jobs that entered C{to_state} in the window (min, mean, median, max);

each overall or per value of a C{group} column. Times are microseconds since the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import STATES, JobStatus, format_iso

#: The columns a request may group by (L&B's statistics by CE, by user, by VO).
GROUPS = ("destination", "ce_node", "owner", "vo")

#: The request parameters of C{/stats} (besides the output format).
PARAMS = frozenset(("state", "to_state", "from", "to", "group", "step"))


@attrs.frozen
class EntryRow:
    """
    A job entered C{state} at C{entered} (microseconds), with its grouping values then.
    """

    jobid: str
    state: str
    entered: int
    destination: str | None
    ce_node: str | None
    owner: str | None
    vo: str | None


def vo_of(fqans: Sequence[str]) -> str | None:
    """
    The VO of a job: the first group of its first FQAN (C{/atlas/Role=x} -> C{atlas}).
    """
    for fqan in fqans:
        name = fqan.lstrip("/").split("/", 1)[0]
        if name and "=" not in name:
            return name
    return None


def entries(jobid: str, before: JobStatus | None, after: JobStatus) -> list[EntryRow]:
    """
    The state entries C{after} adds or changes against C{before} (L{None}: all of them).
    """
    old = before.stateEnterTimes if before is not None else {}
    new = after.stateEnterTimes
    if old == new:
        return []
    rows: list[EntryRow] = []
    vo: str | None = None
    for state, entered in new.items():
        if old.get(state) == entered or not entered:
            continue
        if not rows:
            vo = vo_of(after.user_fqans)
        rows.append(
            EntryRow(
                jobid,
                state,
                entered,
                after.destination,
                after.ce_node or after.cream_node,
                after.owner,
                vo,
            )
        )
    return rows


def unique_params(params: Iterable[tuple[str, str]], known: frozenset[str]) -> dict[str, str]:
    """
    Request parameters by name, each a C{known} one, given once.

    @raise InvalidValue: an unknown parameter, or one given twice.
    """
    given: dict[str, str] = {}
    for name, value in params:
        if name not in known:
            raise InvalidValue(f"unknown parameter {name!r} (known: {', '.join(sorted(known))})")
        if name in given:
            raise InvalidValue(f"{name} given twice")
        given[name] = value
    return given


def parse_time(text: str, name: str) -> int:
    """
    A time parameter: seconds since the epoch (C{1700000000}, C{1700000000.5}) or ISO
    8601 (C{2026-12-01T10:00:00Z}; no zone: UTC) -> microseconds.

    @raise InvalidValue: anything else.
    """
    value = text.strip()
    try:
        if value.replace(".", "", 1).isdigit() and len(value) <= 20:
            return int(round(float(value) * 1_000_000))
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidValue(f"{name}: not a time (epoch seconds or ISO 8601): {text!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1_000_000)


def parse_state(text: str, name: str = "state") -> str:
    """
    A state name as L&B spells it, any case (C{running} -> C{Running}).
    """
    for state in STATES:
        if state.lower() == text.strip().lower():
            return state
    raise InvalidValue(f"{name}: unknown state {text!r} (known: {', '.join(STATES)})")


@attrs.frozen
class StatsRequest:
    """
    One statistics request: C{state}, the window C{[start, end)} in microseconds,
    C{to_state} for durations, a C{group} column, a C{step} in seconds for buckets.
    """

    state: str
    start: int
    end: int
    to_state: str | None = None
    group: str | None = None
    step: int | None = None

    @classmethod
    def parse(
        cls, params: Iterable[tuple[str, str]], *, now: int, max_buckets: int
    ) -> StatsRequest:
        """
        From request parameters. C{from} defaults to a day before C{to}, C{to} to C{now}.

        @raise InvalidValue: an unknown or malformed parameter, an empty window, more
            than C{max_buckets} buckets.
        """
        given = unique_params(params, PARAMS)
        if "state" not in given:
            raise InvalidValue("state is required (the state jobs entered)")
        state = parse_state(given["state"])
        to_state = parse_state(given["to_state"], "to_state") if "to_state" in given else None
        end = parse_time(given["to"], "to") if "to" in given else now
        start = parse_time(given["from"], "from") if "from" in given else end - 86_400_000_000
        if end <= start:
            raise InvalidValue("the window is empty: from must be before to")
        group = given.get("group")
        if group is not None and group not in GROUPS:
            raise InvalidValue(f"group: one of {', '.join(GROUPS)}, not {group!r}")
        step = None
        if "step" in given:
            text = given["step"]
            if not text.isdigit() or not 0 < int(text) <= 10**9:
                raise InvalidValue(f"step: seconds, a positive whole number, not {text!r}")
            step = int(text)
            if buckets(start, end, step) > max_buckets:
                raise InvalidValue(
                    f"step: {buckets(start, end, step)} buckets, at most {max_buckets}: "
                    "a longer step or a shorter window"
                )
        return cls(state, start, end, to_state, group, step)


def buckets(start: int, end: int, step: int) -> int:
    """
    How many C{step}-second buckets cover C{[start, end)}.
    """
    return math.ceil((end - start) / (step * 1_000_000))


def bucket_counts(times: Iterable[int], start: int, end: int, step: int) -> list[int]:
    """
    The number of C{times} in each C{step}-second bucket of C{[start, end)}.
    """
    width = step * 1_000_000
    counts = [0] * buckets(start, end, step)
    for t in times:
        if start <= t < end:
            counts[(t - start) // width] += 1
    return counts


def summary(durations: Sequence[int]) -> dict[str, Any]:
    """
    C{count}, C{min}, C{mean}, C{median}, C{max} of durations in microseconds, as
    seconds (L{None} with none).
    """
    if not durations:
        return {"count": 0, "min": None, "mean": None, "median": None, "max": None}
    ordered = sorted(durations)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {
        "count": n,
        "min": ordered[0] / 1e6,
        "mean": sum(ordered) / n / 1e6,
        "median": median / 1e6,
        "max": ordered[-1] / 1e6,
    }


def rate_answer(
    request: StatsRequest,
    counts: Mapping[str | None, int],
    per_bucket: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """
    The JSON answer of a rate request: C{counts} per group value (key L{None} without
    grouping) and, with a step, the count of each bucket by its index.
    """
    seconds = (request.end - request.start) / 1e6
    answer: dict[str, Any] = _window(request)
    total = sum(counts.values())
    answer["count"] = total
    answer["rate"] = total / seconds
    if request.group is not None:
        answer["groups"] = [
            {"group": key, "count": n, "rate": n / seconds}
            for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] or ""))
        ]
    if request.step is not None and per_bucket is not None:
        answer["step"] = request.step
        answer["buckets"] = [
            per_bucket.get(i, 0) for i in range(buckets(request.start, request.end, request.step))
        ]
    return answer


def duration_answer(
    request: StatsRequest, durations: Mapping[str | None, Sequence[int]]
) -> dict[str, Any]:
    """
    The JSON answer of a duration request: C{durations} (microseconds) per group value.
    """
    answer = _window(request)
    everything = [d for values in durations.values() for d in values]
    answer.update(summary(everything))
    if request.group is not None:
        answer["groups"] = [
            {"group": key, **summary(values)}
            for key, values in sorted(durations.items(), key=lambda kv: kv[0] or "")
        ]
    return answer


def _window(request: StatsRequest) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "state": request.state,
        "from": format_iso(request.start),
        "to": format_iso(request.end),
    }
    if request.to_state is not None:
        answer["to_state"] = request.to_state
    if request.group is not None:
        answer["group"] = request.group
    return answer


def render_text(answer: Mapping[str, Any]) -> str:
    """
    The plain-text form of a statistics answer (C{lbtwist stats}).
    """
    head = f"{answer['state']}"
    if "to_state" in answer:
        head += f" -> {answer['to_state']}"
    lines = [f"{head} from {answer['from']} to {answer['to']}"]

    def figures(item: Mapping[str, Any]) -> str:
        if "rate" in item:
            return f"count {item['count']} rate {item['rate']:.6g}/s"
        if not item["count"]:
            return "count 0"
        return (
            f"count {item['count']} min {item['min']:.6g}s mean {item['mean']:.6g}s"
            f" median {item['median']:.6g}s max {item['max']:.6g}s"
        )

    lines.append(f"total: {figures(answer)}")
    for item in answer.get("groups", []):
        lines.append(f"{answer['group']}={item['group'] or '-'}: {figures(item)}")
    if "buckets" in answer:
        lines.append(f"per {answer['step']}s: {' '.join(str(n) for n in answer['buckets'])}")
    return "\n".join(lines) + "\n"


#: The widths (seconds) of the counter buckets the store keeps per state: hours and days.
HOUR = 3600
DAY = 86_400


def floor_bucket(t: int, width: int) -> int:
    """
    The C{width}-second bucket of the time C{t} (microseconds): C{t // width}, floored.
    """
    return t // (width * 1_000_000)


@attrs.frozen
class Cover:
    """
    A window C{[start, end)} as the store's counters see it: C{days} and C{hours}, each
    C{(first, stop)} bucket ranges wholly inside the window, and the C{raw} time ranges
    C{(from, to)} (microseconds, under two hours in all) left over at its edges.
    """

    raw: tuple[tuple[int, int], ...]
    hours: tuple[tuple[int, int], ...]
    days: tuple[tuple[int, int], ...]


def cover(start: int, end: int, *, hours: bool = True, days: bool = True) -> Cover:
    """
    Split C{[start, end)} into whole days, whole hours and (at most two) edges under an
    hour each (a window within two hours: itself), so that a count over the window is
    a sum of a few counters and short index ranges; without C{hours} (the counters
    per grouping value are kept per day only), the edges are under a day each; without
    C{days} (the overall counters are kept per hour only), whole hours throughout.
    """
    if not hours:
        day = DAY * 1_000_000
        d0, d1 = -(-start // day), end // day
        if d0 >= d1:
            return Cover(((start, end),) if start < end else (), (), ())
        raw = tuple(r for r in ((start, d0 * day), (d1 * day, end)) if r[0] < r[1])
        return Cover(raw, (), ((d0, d1),))
    hour = HOUR * 1_000_000
    h0 = -(-start // hour)
    h1 = end // hour
    if h0 >= h1:
        return Cover(((start, end),) if start < end else (), (), ())
    raw = tuple(r for r in ((start, h0 * hour), (h1 * hour, end)) if r[0] < r[1])
    if not days:
        return Cover(raw, ((h0, h1),), ())
    per_day = DAY // HOUR
    d0 = -(-h0 // per_day)
    d1 = h1 // per_day
    if d0 >= d1:
        return Cover(raw, ((h0, h1),), ())
    spans = tuple(r for r in ((h0, d0 * per_day), (d1 * per_day, h1)) if r[0] < r[1])
    return Cover(raw, spans, ((d0, d1),))
