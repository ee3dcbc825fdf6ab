# -*- test-case-name: tests.unit.test_translate -*-
"""
gLite events generated from the CREAM events of WMS jobs (design section 6).

An L&B server that knows no CREAM events still shows the right state of a WMS
job executed by CREAM, because the proxy logs, for each change of the job's
CREAM state, the gLite event that the WMS LogMonitor or the LRMS would have.
"""

from __future__ import annotations

from typing import Any

from lbtwist.core.events import Event, make_event
from lbtwist.core.seqcode import bump_lrms, parse_seqcode
from lbtwist.core.states.glite import cream_effect
from lbtwist.core.states.status import MACHINE_GLITE, JobStatus

GENERATED_BY_KEY = "DG.GENERATED_BY"
PROXY_INSTANCE = "lbtwist-proxy"


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
