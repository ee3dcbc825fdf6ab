# -*- test-case-name: tests.unit.test_translate -*-
"""
gLite events generated from the CREAM events of WMS jobs (design section 6).

An L&B server that knows no CREAM events still shows the right state of a WMS
job executed by CREAM, because the proxy logs, for each change of the job's
CREAM state, the gLite event that the WMS LogMonitor or the LRMS would have.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from lbtwist.core.events import Event, make_event
from lbtwist.core.jobid import relay_destination
from lbtwist.core.relaypolicy import RelayPolicy
from lbtwist.core.seqcode import bump_lrms, parse_seqcode
from lbtwist.core.states.glite import cream_effect, is_cream_event
from lbtwist.core.states.status import MACHINE_GLITE, JobStatus

GENERATED_BY_KEY = "DG.GENERATED_BY"
PROXY_INSTANCE = "lbtwist-proxy"

#: Job destinations a proxy policy remembers (the answer is asked for every event).
DESTINATIONS_CACHED = 1 << 16


def may_generate(trigger: Event) -> bool:
    """
    Whether C{trigger} can generate gLite events (L{generate_events}): a CREAM
    event not itself generated.
    """
    return not trigger.generated and is_cream_event(trigger)


def proxy_policy(local_endpoints: Iterable[tuple[str, int]], proxy_host: str) -> RelayPolicy:
    """
    The relay policy of a proxy: the events of WMS jobs (ids naming another
    server than this node's C{local_endpoints}) go to that server's store port
    (L{lbtwist.core.jobid.relay_destination}), with the gLite events
    L{generate_events} makes from their CREAM events.

    @param local_endpoints: C{(host, query port)} pairs naming this node (hosts in
        lower case): jobs with such ids are not relayed.
    @param proxy_host: the C{HOST} of generated events.
    """
    local = frozenset(local_endpoints)

    @functools.lru_cache(maxsize=DESTINATIONS_CACHED)
    def destination(jobid: str) -> str | None:
        return relay_destination(jobid, local)

    return RelayPolicy(
        destination=destination,
        triggers=may_generate,
        generate=functools.partial(generate_events, proxy_host=proxy_host),
    )


def generate_events(
    trigger: Event, before: JobStatus, after: JobStatus, *, proxy_host: str
) -> list[Event]:
    """
    The gLite events to log for C{trigger}.

    @param trigger: a CREAM event of the job, just applied.
    @param before: the job's status before C{trigger}.
    @param after: the job's status after C{trigger} (CREAM-aware machine).
    @param proxy_host: the proxy's host name, the generated events' C{HOST}.
    @return: empty unless the job is on the gLite machine (a WMS job), the trigger
        is not itself generated, carries a gLite seqcode and changed
        C{cream_state} to a state the table of design section 6 maps.
    """
    if after.machine != MACHINE_GLITE or trigger.generated:
        return []
    if after.cream_state is None or after.cream_state == before.cream_state:
        return []
    if parse_seqcode(trigger.seqcode) is None:
        return []
    effect = cream_effect(after, trigger.host)
    if effect is None:
        return []
    kinds: list[tuple[str, str, dict[str, Any]]] = [effect]
    generated: list[Event] = []
    for index, (kind, source, fields) in enumerate(kinds, start=1):
        generated.append(
            make_event(
                kind,
                jobid=after.jobId or trigger.jobid,
                date=trigger.date,
                host=proxy_host,
                user=trigger.user,
                source=source,
                seqcode=bump_lrms(trigger.seqcode, index),
                priority=0,
                src_instance=PROXY_INSTANCE,
                extra=((GENERATED_BY_KEY, PROXY_INSTANCE),),
                **fields,
            )
        )
    return generated
