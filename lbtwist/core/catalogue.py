# -*- test-case-name: tests.unit.test_events -*-
"""
The event catalogue as plain data: the rows of the package's C{data/events.tsv}
and the event sources, with nothing but builtins.

L{lbtwist.core.events} builds its typed catalogue (C{FieldSpec}, C{EventType})
from L{load}; the producer command's fast lane (L{lbtwist.cli.fast}) reads the
same rows without importing the event model, whose imports (attrs, typing, re,
datetime) cost a command-line call more than the rest of its work. One reader,
so both see the same catalogue.
"""

from __future__ import annotations

import os

#: Event sources (C{DG.SOURCE}); the code of a source is its index + 1.
SOURCES: tuple[str, ...] = (
    "UserInterface",
    "NetworkServer",
    "WorkloadManager",
    "BigHelper",
    "JobController",
    "LogMonitor",
    "LRMS",
    "Application",
    "LBServer",
    "CREAMInterface",
    "CREAMExecutor",
    "PBSClient",
    "PBSServer",
    "PBSMomSuperior",
    "PBSMom",
    "PBSScheduler",
    "CloudManager",
    "VMManager",
    "VMSystem",
)

#: An event's attributes beside its catalogue fields and its unknown keys, in the
#: order of L{lbtwist.core.events.Event}: the common part of every event, and with
#: C{extra} the keyword parameters of L{lbtwist.core.events.make_event}.
EVENT_ATTRIBUTES: tuple[str, ...] = (
    "type",
    "jobid",
    "date",
    "host",
    "user",
    "source",
    "seqcode",
    "priority",
    "level",
    "src_instance",
    "prog",
    "arrived",
)

#: One field: (name, wire key, type, required, code names, null value).
FieldRow = tuple[str, str, str, bool, tuple[str, ...], str]

#: One event type: (name, code, group, fields in catalogue order).
EventRow = tuple[str, int, str, tuple[FieldRow, ...]]

_LOADED: list[tuple[tuple[FieldRow, ...], dict[str, EventRow]]] = []


def _table_text() -> str:
    path = os.path.join(os.path.dirname(__file__), "data", "events.tsv")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        # Not a plain directory (a zip, say): the resource reader knows.
        from importlib import resources

        return resources.files("lbtwist.core").joinpath("data/events.tsv").read_text("utf-8")


def parse_table(
    table: str, only: str | None = None
) -> tuple[tuple[FieldRow, ...], dict[str, EventRow]]:
    """
    The common fields and the event types of a catalogue table (tab-separated,
    a header line naming the columns).

    @param only: read only the event type of this name (in upper case), and no
        common fields.
    @return: the common fields, and the event types by name in event code order.
    """
    common: list[FieldRow] = []
    rows: dict[str, tuple[str, int, list[FieldRow]]] = {}
    lines = table.splitlines()
    header = lines[0].split("\t")
    event_column = header.index("event")
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        if only is not None and cells[event_column].upper() != only:
            continue
        row = dict(zip(header, cells, strict=False))
        spec: FieldRow | None = None
        if row.get("field"):
            spec = (
                row["field"],
                row["wire_key"],
                row["type"],
                row["presence"] == "required",
                tuple(row.get("codes", "").split()),
                row.get("null_value", ""),
            )
        if row["event"] == "_common_":
            if spec is not None:
                common.append(spec)
            continue
        entry = rows.setdefault(row["event"], (row["group"], int(row["event_code"]), []))
        if spec is not None:
            entry[2].append(spec)
    catalogue = {
        name: (name, code, group, tuple(specs))
        for name, (group, code, specs) in sorted(rows.items(), key=lambda item: item[1][1])
    }
    return tuple(common), catalogue


def find_event(name: str) -> EventRow | None:
    """
    The event type C{name} (in any case), reading no other row of the table
    (a producer call needs one type).
    """
    if _LOADED:
        rows = _LOADED[0][1]
    else:
        rows = parse_table(_table_text(), name.upper())[1]
    upper = name.upper()
    for row_name, row in rows.items():
        if row_name.upper() == upper:
            return row
    return None


def load() -> tuple[tuple[FieldRow, ...], dict[str, EventRow]]:
    """
    The package's catalogue (L{parse_table} of C{data/events.tsv}), read once.
    """
    if not _LOADED:
        _LOADED.append(parse_table(_table_text()))
    return _LOADED[0]
