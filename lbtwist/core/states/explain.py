# -*- test-case-name: tests.unit.test_explain -*-
"""
Why a job is in its state, and what its state was at any time: pure functions
over a job's events built on the state machines (L{lbtwist.core.states}).

L{explain} replays the events in the order they arrived and says, for each, what
it did to the status folded from the events known so far: moved the state,
filled fields, nothing (ignored as late: it sorts before an event already
applied; or no effect), or nothing because it duplicates an earlier one.
L{status_at} is the status made of the events dated (or arrived) up to a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from lbtwist.core.seqcode import ordering_key
from lbtwist.core.states import advance_key, compute_status
from lbtwist.core.states.status import JobStatus, format_iso

if TYPE_CHECKING:
    from lbtwist.core.events import Event

#: What an event did.
MOVED = "moved"
FILLED = "filled"
LATE = "late"
DUPLICATE = "duplicate"
NO_EFFECT = "no effect"

#: Status fields that change with every event or are the fold's own bookkeeping:
#: not reported as "filled".
_NOT_REPORTED = frozenset(
    {
        "state",
        "stateEnterTime",
        "stateEnterTimes",
        "lastUpdateTime",
        "machine",
        "last_key",
        "event_count",
        "branch_wm",
    }
)
_REPORTED = tuple(f.name for f in attrs.fields(JobStatus) if f.name not in _NOT_REPORTED)

#: Replay orders of L{status_at}.
BY_DATE = "date"
BY_ARRIVAL = "arrival"


@attrs.frozen
class Effect:
    """
    What one event did to its job's status.

    @ivar number: the event's place in arrival order (1 for the first).
    @ivar event: the event.
    @ivar arrived: its arrival time (microseconds), if known.
    @ivar kind: L{MOVED}, L{FILLED}, L{LATE}, L{DUPLICATE} or L{NO_EFFECT}.
    @ivar from_state: the state before it.
    @ivar to_state: the state after it.
    @ivar fields: the status fields it set or changed (state aside), sorted.
    @ivar late_before: if it sorted before an event already applied, the DATE of
        the latest such event (its own date is C{event.date}), else C{None}. A late
        event that still changed something (the fold was redone) keeps the kind
        of what it did.
    @ivar duplicate_of: for a duplicate, the number of the event it repeats.
    """

    number: int
    event: Event
    arrived: int | None
    kind: str
    from_state: str
    to_state: str
    fields: tuple[str, ...] = ()
    late_before: int | None = None
    duplicate_of: int | None = None

    @property
    def skew(self) -> int | None:
        """
        The event's DATE minus its arrival (microseconds): how far its producer's
        clock was ahead (positive) or behind plus the transport delay (negative).
        """
        return None if self.arrived is None else self.event.date - self.arrived


def _identity(ev: Event) -> tuple[str, str, str, int, str, str, str]:
    # The fields that make two events of one job duplicates (as the store's rule).
    return (ev.type, ev.source, ev.host, ev.date, ev.level, ev.user, ev.seqcode)


def changed_fields(before: JobStatus, after: JobStatus) -> tuple[str, ...]:
    """
    The reported status fields that differ between C{before} and C{after}.
    """
    return tuple(
        sorted(name for name in _REPORTED if getattr(before, name) != getattr(after, name))
    )


def explain(
    events: Iterable[tuple[Event, int | None]], *, cream_aware: bool = True
) -> list[Effect]:
    """
    What each event of one job did, in arrival order.

    @param events: C{(event, arrived)} pairs in the order the events arrived
        (C{arrived}, in microseconds, may be C{None}); the arrival number used as
        the last tie breaker of the ordering key is the place in this order.
    @param cream_aware: as for L{compute_status}.
    @return: one L{Effect} per event, in the same order.
    """
    effects: list[Effect] = []
    seen: dict[tuple[str, str, str, int, str, str, str], int] = {}
    applied: list[tuple[Event, int]] = []
    status = JobStatus()
    latest: tuple[list[int], int] | None = None  # (key, date) of the greatest key applied
    for number, (ev, arrived) in enumerate(events, 1):
        ident = _identity(ev)
        first = seen.get(ident)
        if first is not None:
            effects.append(
                Effect(
                    number,
                    ev,
                    arrived,
                    DUPLICATE,
                    status.state,
                    status.state,
                    duplicate_of=first,
                )
            )
            continue
        seen[ident] = number
        key = list(ordering_key(ev, number))
        applied.append((ev, number))
        new = advance_key(status, ev, key, cream_aware=cream_aware)
        late_before = None
        if new is None:
            # Sorts before an applied event (or a RegJob after others): fold again.
            if latest is not None and key < latest[0]:
                late_before = latest[1]
            new = compute_status(applied, cream_aware=cream_aware)
        if latest is None or key > latest[0]:
            latest = (key, ev.date)
        fields = changed_fields(status, new)
        if new.state != status.state:
            kind = MOVED
        elif fields:
            kind = FILLED
        elif late_before is not None:
            kind = LATE
        else:
            kind = NO_EFFECT
        effects.append(
            Effect(number, ev, arrived, kind, status.state, new.state, fields, late_before)
        )
        status = new
    return effects


def status_at(
    events: Sequence[tuple[Event, int | None]],
    when: int,
    *,
    by: str = BY_DATE,
    cream_aware: bool = True,
) -> JobStatus:
    """
    The status a job had at time C{when}: the fold of its events dated (C{by}
    L{BY_DATE}) or arrived (L{BY_ARRIVAL}) at or before C{when}.

    @param events: C{(event, arrived)} pairs in arrival order (as for L{explain}).
    @raise ValueError: C{by} is neither, or C{by} is L{BY_ARRIVAL} and an arrival
        time is missing.
    """
    if by == BY_DATE:
        known = [(ev, n) for n, (ev, _) in enumerate(events, 1) if ev.date <= when]
    elif by == BY_ARRIVAL:
        if any(arrived is None for _, arrived in events):
            raise ValueError("arrival times unknown")
        known = [
            (ev, n)
            for n, (ev, arrived) in enumerate(events, 1)
            if arrived is not None and arrived <= when
        ]
    else:
        raise ValueError(f"unknown replay order {by!r}")
    seen: set[tuple[str, str, str, int, str, str, str]] = set()
    unique: list[tuple[Event, int]] = []
    for ev, n in known:
        ident = _identity(ev)
        if ident not in seen:
            seen.add(ident)
            unique.append((ev, n))
    return compute_status(unique, cream_aware=cream_aware)


def skew_by_source(effects: Iterable[Effect]) -> dict[str, tuple[int, int, int]]:
    """
    Per producer (C{source@host}), the C{(count, min, max)} of DATE minus arrival
    (microseconds) over the events whose arrival is known: the clock skew an
    admin looks for.
    """
    found: dict[str, tuple[int, int, int]] = {}
    for effect in effects:
        skew = effect.skew
        if skew is None:
            continue
        name = f"{effect.event.source}@{effect.event.host}"
        old = found.get(name)
        found[name] = (
            (1, skew, skew) if old is None else (old[0] + 1, min(old[1], skew), max(old[2], skew))
        )
    return found


def effect_dict(effect: Effect, *, with_skew: bool = False) -> dict[str, object]:
    """
    A JSON-ready dict of one effect (times as ISO 8601 UTC); C{with_skew} adds
    the arrival time and DATE minus arrival in seconds (for admins).
    """
    ev = effect.event
    out: dict[str, object] = {
        "number": effect.number,
        "event": ev.type,
        "source": ev.source,
        "host": ev.host,
        "date": format_iso(ev.date),
        "seqcode": ev.seqcode,
        "effect": effect.kind,
        "from": effect.from_state,
        "to": effect.to_state,
        "fields": list(effect.fields),
    }
    if effect.late_before is not None:
        out["late_before"] = format_iso(effect.late_before)
    if effect.duplicate_of is not None:
        out["duplicate_of"] = effect.duplicate_of
    if with_skew and effect.arrived is not None:
        out["arrived"] = format_iso(effect.arrived)
        out["skew_s"] = round((ev.date - effect.arrived) / 1_000_000, 6)
    return out


def describe(effect: Effect) -> str:
    """
    What one effect did, in words (no times other than a late event's).
    """
    kind = effect.kind
    if kind == DUPLICATE:
        return f"duplicate of event {effect.duplicate_of}: ignored"
    if kind == LATE:
        return (
            f"ignored as late: dated {format_iso(effect.event.date)}, before an applied"
            f" event dated {format_iso(effect.late_before or 0)}"
        )
    if kind == NO_EFFECT:
        return "no effect"
    text = f"{effect.from_state} -> {effect.to_state}" if kind == MOVED else "filled"
    if effect.fields:
        text += (" filled " if kind == MOVED else " ") + ", ".join(effect.fields)
    if effect.late_before is not None:
        text += f" (late: sorted before an event dated {format_iso(effect.late_before)})"
    return text


def format_effects(effects: Sequence[Effect], *, with_skew: bool = False) -> str:
    """
    The effects as text, one line per event: number, DATE, event type, source,
    what it did; C{with_skew} adds DATE minus arrival per event, and a summary of
    the skew per producer.
    """
    lines = []
    for effect in effects:
        ev = effect.event
        skew = ""
        if with_skew:
            value = effect.skew
            skew = " " + ("-" if value is None else f"{value / 1_000_000:+.3f}s").rjust(12)
        lines.append(
            f"{effect.number:>4} {format_iso(ev.date)}{skew} {ev.type:<18} {ev.source:<16}"
            f" {describe(effect)}"
        )
    if with_skew:
        lines.append("")
        lines.append("DATE - arrival per producer (count, min, max):")
        for name, (count, low, high) in sorted(skew_by_source(effects).items()):
            lines.append(f"  {name}: {count}, {low / 1_000_000:+.3f}s, {high / 1_000_000:+.3f}s")
    return "\n".join(lines) + "\n"
