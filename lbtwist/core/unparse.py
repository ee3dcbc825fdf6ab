# -*- test-case-name: tests.unit.test_unparse -*-
"""
Events written as L&B's unparser writes them (C{glite-lb-logevent}, C{glite-lb-job_log},
C{glite-lb-dump}).

The canonical line of L{lbtwist.core.events.format_event} leaves empty fields out;
L&B re-generates every event from its parsed fields instead:

  - the common fields in a fixed order: C{DATE}, C{HOST}, C{PROG}, C{LVL}, C{DG.PRIORITY},
    C{DG.SOURCE}, C{DG.SRC_INSTANCE}, C{DG.EVNT}, C{DG.JOBID}, C{DG.SEQCODE}, C{DG.USER};
    C{DATE}, C{LVL} and C{DG.PRIORITY} bare, the others quoted;
  - then every field of the event type in catalogue order, always quoted, unset ones
    as their null value (C{""} for text, C{0} or the catalogue's null value for numbers,
    C{UNDEFINED} for enumerations);
  - each field followed by one space, so the line ends in a space.

Keys the catalogue does not know (C{DG.GENERATED_BY}, ...) have no place in L&B's parsed
event; lbtwist keeps them, after the event's fields, in the same C{KEY="value" } form.
The parser reads both forms (it ignores empty values).
"""

from __future__ import annotations

from lbtwist.core.events import Event, event_type
from lbtwist.core.ulm import escape, format_date

#: What an unset field of each catalogue type is written as (enumerations aside).
_NULL_BY_TYPE = {"int": "0", "port": "0", "double": "0.000000"}


def _null_value(spec_type: str, null_value: str, has_codes: bool) -> str:
    if has_codes:
        return "UNDEFINED"
    if null_value:
        return null_value
    return _NULL_BY_TYPE.get(spec_type, "")


def unparse_event(ev: Event) -> str:
    """
    C{ev} as L&B's unparser writes it, without the final LF (the line ends in a space).
    """
    parts = [
        f"DATE={format_date(ev.date)} ",
        f'HOST="{escape(ev.host)}" ',
        f"PROG={ev.prog or 'edg-wms'} ",
        f"LVL={ev.level} ",
        f"DG.PRIORITY={ev.priority} ",
        f'DG.SOURCE="{escape(ev.source)}" ',
        f'DG.SRC_INSTANCE="{escape(ev.src_instance)}" ',
        f'DG.EVNT="{ev.type}" ',
        f'DG.JOBID="{escape(ev.jobid)}" ',
        f'DG.SEQCODE="{escape(ev.seqcode)}" ',
        f'DG.USER="{escape(ev.user)}" ',
    ]
    values = ev.fields
    for spec in event_type(ev.type).fields:
        value = values.get(spec.name)
        if not value:
            value = _null_value(spec.type, spec.null_value, bool(spec.codes))
        parts.append(f'{spec.wire_key}="{escape(value)}" ')
    for key, value in ev.extra:
        parts.append(f'{key}="{escape(value)}" ')
    return "".join(parts)


def dump_line(ev: Event, arrived: int) -> str:
    """
    One event of C{glite-lb-dump}: C{DG.ARRIVED=<date> }, the unparsed event and its LF,
    then an empty line, as the EMI server's dump writes it (its format adds an LF to
    the unparser's line, which ends in one already).
    """
    return f"DG.ARRIVED={format_date(arrived)} {unparse_event(ev)}\n\n"
