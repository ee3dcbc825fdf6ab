# -*- test-case-name: tests.unit.test_purge -*-
"""
Purge rules, pure: grace periods by state, durations as C{glite-lb-purge} takes them,
which jobs are due, and the compact trace record kept with a purged job (its zombie).

A job is due when the time since its C{lastUpdateTime} exceeds the grace period of its
state: C{Aborted}, C{Cancelled}, C{Cleared} and C{Done} have their own, every other
state shares C{other} (L&B's defaults: cleared 3 days, aborted and cancelled 7 days,
the others 31 days; C{done} defaults to C{other}'s). A job that never had an update
time is never due (as in L&B). A grace of L{None} ("never") keeps that state's jobs.

On a proxy a terminal job whose events have all been delivered upstream may use a
shorter grace (L{PurgeRules.delivered}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import (
    ABORTED,
    CANCELLED,
    CLEARED,
    DONE,
    TERMINAL_STATES,
    public_dict,
)

DAY = 86_400

#: L&B's default grace periods, in seconds.
DEFAULT_CLEARED = 3 * DAY
DEFAULT_ABORTED = 7 * DAY
DEFAULT_CANCELLED = 7 * DAY
DEFAULT_OTHER = 31 * DAY
#: The proxy's grace for terminal jobs whose events were all delivered.
DEFAULT_DELIVERED = 1 * DAY

#: The grace classes: each names a state, C{other} the rest.
CLASSES = ("aborted", "cancelled", "cleared", "done", "other")
_CLASS_OF_STATE = {ABORTED: "aborted", CANCELLED: "cancelled", CLEARED: "cleared", DONE: "done"}

#: Status fields a trace record leaves out: the JDLs (large, and not needed to trace).
TRACE_DROPPED = frozenset({"jdl", "matched_jdl", "cream_jdl"})

_DURATION = re.compile(r"^([0-9]+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
_NEVER = frozenset({"never", "-1", "-2"})


def parse_duration(text: str) -> int:
    """
    A duration as C{glite-lb-purge} and the configuration take it: whole seconds, or a
    number with a unit C{s}, C{m}, C{h}, C{d} or C{w} (C{2d}, C{12h}, C{30m}).

    @return: seconds (0 allowed: purge at once).
    @raise InvalidValue: anything else.
    """
    m = _DURATION.match(text.strip().lower())
    if m is None:
        raise InvalidValue(
            f"bad duration {text!r}: use seconds or a number with s, m, h, d or w (2d, 12h)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_grace(text: str) -> int | None:
    """
    A grace period: a duration (L{parse_duration}), or C{never} (also L&B's C{-1} /
    C{-2}) for a state whose jobs are never purged.

    @return: seconds, or L{None} for never.
    """
    if text.strip().lower() in _NEVER:
        return None
    return parse_duration(text)


def format_grace(seconds: int | None) -> str:
    """
    A grace period as L{parse_grace} reads it back (C{never}, C{3d}, C{12h}, C{90}).
    """
    if seconds is None:
        return "never"
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(seconds)


@attrs.frozen
class PurgeRules:
    """
    Grace periods in seconds by class (L{None}: never), and the proxy's C{delivered}
    grace for terminal jobs whose events all reached their server (L{None}: no such rule).
    """

    aborted: int | None = DEFAULT_ABORTED
    cancelled: int | None = DEFAULT_CANCELLED
    cleared: int | None = DEFAULT_CLEARED
    done: int | None = DEFAULT_OTHER
    other: int | None = DEFAULT_OTHER
    delivered: int | None = None

    def grace(self, state: str | None) -> int | None:
        """
        The grace period of a state (L{None}: never purged).
        """
        return getattr(self, _CLASS_OF_STATE.get(state or "", "other"))  # type: ignore[no-any-return]

    def shortest(self) -> int | None:
        """
        The shortest grace of any rule: no job updated more recently is due.
        """
        values = [getattr(self, name) for name in (*CLASSES, "delivered")]
        given = [v for v in values if v is not None]
        return min(given) if given else None

    def with_overrides(self, overrides: Mapping[str, int | None]) -> PurgeRules:
        """
        These rules with some classes (C{aborted}, ..., C{delivered}) replaced.

        @raise InvalidValue: an unknown class.
        """
        unknown = set(overrides) - {*CLASSES, "delivered"}
        if unknown:
            raise InvalidValue(f"unknown purge classes: {', '.join(sorted(unknown))}")
        return attrs.evolve(self, **overrides)

    def describe(self) -> str:
        """
        One line: every class and its grace (for logs and answers).
        """
        parts = [f"{name}={format_grace(getattr(self, name))}" for name in CLASSES]
        if self.delivered is not None:
            parts.append(f"delivered={format_grace(self.delivered)}")
        return " ".join(parts)


def is_due(
    rules: PurgeRules,
    state: str | None,
    last_update: int | None,
    now: int,
    *,
    delivered: bool = False,
) -> bool:
    """
    Whether a job is due for purge.

    @param state: the job's state.
    @param last_update: its C{lastUpdateTime}, microseconds since the epoch
        (L{None}: never updated, never due).
    @param now: the time of the purge, microseconds since the epoch.
    @param delivered: the job is relayed and all its events were delivered (a proxy's
        job): a terminal one may go after L{PurgeRules.delivered}.
    """
    if last_update is None:
        return False
    age = now - last_update
    grace = rules.grace(state)
    if grace is not None and age > grace * 1_000_000:
        return True
    return (
        delivered
        and rules.delivered is not None
        and state in TERMINAL_STATES
        and age > rules.delivered * 1_000_000
    )


def trace_record(
    status: Mapping[str, Any], sources: Iterable[str], fqans: Iterable[str] = ()
) -> str:
    """
    The compact record kept with a zombie: JSON of C{status} (a stored status dict)
    as users see it without the JDLs, the job's event sources (each once, in first
    appearance order) and its owner's FQANs (the status's C{user_fqans} if C{fqans}
    names none).
    """
    public = public_dict(dict(status))
    record = {k: v for k, v in public.items() if k not in TRACE_DROPPED}
    seen: dict[str, None] = {}
    for source in sources:
        if source:
            seen.setdefault(source, None)
    given = list(fqans) or list(record.get("user_fqans") or [])
    return json.dumps(
        {"status": record, "sources": list(seen), "fqans": given},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
