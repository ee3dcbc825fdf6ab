# -*- test-case-name: tests.unit.test_states -*-
"""
Job states: pure folds of a job's events into a L{JobStatus}.

The state of a job is a function of its events sorted by
L{lbtwist.core.seqcode.ordering_key} (design section 4). The first RegJob in that
order picks the machine: jobtype CREAM the CREAM machine, anything else the
gLite one; without a RegJob the job stays C{Unknown}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lbtwist.core.seqcode import ordering_key
from lbtwist.core.states import cream, glite
from lbtwist.core.states.status import (
    MACHINE_CREAM,
    MACHINE_GLITE,
    JobStatus,
    format_text,
)

if TYPE_CHECKING:
    from lbtwist.core.events import Event

__all__ = [
    "JobStatus",
    "advance",
    "advance_key",
    "compute_status",
    "fold",
    "format_text",
    "machine_for",
]


def machine_for(regjob: Event) -> str:
    """
    The machine a job registered by C{regjob} uses.
    """
    return MACHINE_CREAM if regjob.get("jobtype") == "CREAM" else MACHINE_GLITE


def _fold(status: JobStatus, event: Event, key: list[int], cream_aware: bool) -> None:
    status.event_count += 1
    status.last_key = key
    if status.jobId is None:
        status.jobId = event.jobid
    if status.machine == MACHINE_CREAM:
        cream.apply(status, event, cream_aware=cream_aware)
    elif status.machine == MACHINE_GLITE:
        glite.apply(status, event, cream_aware=cream_aware)


def compute_status(events: Iterable[tuple[Event, int]], *, cream_aware: bool = True) -> JobStatus:
    """
    The status of a job from all its events.

    @param events: pairs of an event and its arrival number (the last tie breaker).
    @param cream_aware: C{False} gives the machine of a CREAM-unaware L&B server
        (CREAM events ignored, generated events applied).
    """
    keyed = sorted(
        ((list(ordering_key(ev, arrival)), ev) for ev, arrival in events), key=lambda item: item[0]
    )
    status = JobStatus()
    for _, ev in keyed:
        if ev.type == "RegJob":
            status.machine = machine_for(ev)
            break
    for key, ev in keyed:
        _fold(status, ev, key, cream_aware)
    return status


def advance(
    status: JobStatus, event: Event, arrival: int, *, cream_aware: bool = True
) -> JobStatus | None:
    """
    C{status} with C{event} applied, if that can be done incrementally.

    C{status} itself is never changed.

    @return: the new status, or C{None} when C{event} does not sort after every
        event already folded in (or is a RegJob coming after other events of a
        job with no machine yet): the caller then recomputes with
        L{compute_status}.
    """
    return advance_key(status, event, list(ordering_key(event, arrival)), cream_aware=cream_aware)


def advance_key(
    status: JobStatus, event: Event, key: list[int], *, cream_aware: bool = True
) -> JobStatus | None:
    """
    L{advance} with the event's ordering key given (the store orders events dated
    too far ahead by their arrival, not by their DATE).
    """
    if status.last_key is not None and key <= status.last_key:
        return None
    new = status.copy()
    if new.machine is None and event.type == "RegJob":
        if new.event_count:
            return None
        new.machine = machine_for(event)
    _fold(new, event, key, cream_aware)
    return new


def fold(status: JobStatus, event: Event, key: list[int], *, cream_aware: bool = True) -> None:
    """
    Fold C{event}, whose ordering key C{key} sorts after every event already folded
    into C{status}, into C{status} in place (its machine must be set already, or stay
    unset: see L{compute_status}).
    """
    _fold(status, event, key, cream_aware)
