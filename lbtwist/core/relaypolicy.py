# -*- test-case-name: tests.unit.test_translate -*-
"""
What a relaying store asks of its role: the relay policy.

The store knows no role. A proxy's store is given a L{RelayPolicy} (built by
L{lbtwist.core.translate.proxy_policy} in C{tap}): which jobs' events go to
which L&B store port, and which gLite events a CREAM event's state change
generates. A server's store has none: it relays and generates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from lbtwist.core.events import Event
    from lbtwist.core.states.status import JobStatus


@attrs.frozen
class RelayPolicy:
    """
    The relaying role, as pure functions of their arguments.

    @ivar destination: C{destination(jobid)}: C{"host:port"} of the store port to
        relay the job's events to, or C{None} for a job kept here. Asked for every
        stored event (callers may rely on it being cheap for a job seen before).
    @ivar triggers: C{triggers(event)}: whether the event may generate events at
        all (the store then folds a late one into the job's status at once, so that
        L{generate} sees the status after it).
    @ivar generate: C{generate(event, before, after)}: the events to store (and
        relay) after C{event}, given the job's status before and after it.
    """

    destination: Callable[[str], str | None]
    triggers: Callable[[Event], bool]
    generate: Callable[[Event, JobStatus, JobStatus], list[Event]]
