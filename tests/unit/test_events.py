# -*- test-case-name: tests.unit.test_events -*-
"""
Tests for L{lbtwist.core.events}.
"""

from __future__ import annotations

import csv
import errno
import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import (
    BrokenULM,
    EventUndefined,
    InvalidValue,
    JobIdFormat,
    KeyDuplicity,
    KeyMisuse,
    LBError,
    MessageIncomplete,
)
from lbtwist.core.events import (
    CATALOGUE,
    COMMON_FIELDS,
    PRIO_DIRECT,
    PRIO_EXCL,
    PRIO_FILE,
    PRIO_INTERNAL,
    PRIO_LOCAL,
    PRIO_PROXY,
    PRIO_SYNC,
    SOURCES,
    Event,
    EventType,
    event_type,
    event_type_by_code,
    format_event,
    make_event,
    parse_event,
    source_name,
)
from tests import fixtures

JOBID = "https://lb.example.org:9000/rReV1TpJ5oY0Z1_M4NBfHw"
SEQCODE = "UI=000000:NS=0000000003:WM=000003:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
COMMON = (
    f'DATE=20080928052524.106253 HOST="ce.example.org" PROG=edg-wms LVL=SYSTEM DG.PRIORITY=0'
    f' DG.SOURCE="LRMS" DG.SRC_INSTANCE="" DG.JOBID="{JOBID}" DG.SEQCODE="{SEQCODE}"'
    f' DG.USER="/C=IT/CN=someone"'
)
RUNNING = COMMON + ' DG.EVNT="Running" DG.RUNNING.NODE="wn01.example.org"'


def stream_files() -> list[tuple[str, list[str]]]:
    """
    The recorded L&B event streams shipped in C{tests/fixtures}: each name
    with its lines (line ends kept, as read from a text file).
    """
    return [
        (name, list(io.StringIO(fixtures.stream_text(name), newline=None)))
        for name in fixtures.stream_names()
    ]


def complete(line: str, unique: str = "fixtureJobId0000000000") -> str:
    """
    Fill in what the fixture templates leave to the replaying tool: a job id
    and, for the templates that lack it, the user.
    """
    line = line.rstrip("\n").rstrip()
    if "DG.JOBID=" not in line:
        line += f' DG.JOBID="https://lb.example.org:9000/{unique}"'
    if "DG.USER=" not in line:
        line += ' DG.USER="/C=IT/CN=replayer"'
    return line


class CatalogueTests(SynchronousTestCase):
    """
    The catalogue generated from C{events.tsv}.
    """

    def test_counts(self) -> None:
        """
        79 event types in six groups with their code ranges.
        """
        self.assertEqual(len(CATALOGUE), 79)
        ranges = {
            "gLite": range(1, 33),
            "PBS": range(101, 116),
            "Condor": range(201, 209),
            "CREAM": range(301, 314),
            "Transfer": range(401, 404),
            "VirtualMachine": range(501, 509),
        }
        for group, codes in ranges.items():
            found = sorted(t.code for t in CATALOGUE.values() if t.group == group)
            self.assertEqual(found, list(codes), group)

    def test_lookup(self) -> None:
        """
        Event types are found by name (any case) and by code.
        """
        cream = event_type("creamstatus")
        self.assertIsInstance(cream, EventType)
        self.assertEqual((cream.name, cream.code, cream.group), ("CREAMStatus", 311, "CREAM"))
        self.assertIs(event_type_by_code(311), cream)
        self.assertIs(CATALOGUE["CREAMStatus"], cream)
        self.assertEqual(event_type("Purge").fields, ())
        err = self.assertRaises(EventUndefined, event_type, "NoSuchEvent")
        self.assertEqual(err.code, 1402)
        self.assertIn("NoSuchEvent", err.message)
        self.assertRaises(EventUndefined, event_type_by_code, 999)

    def test_fieldSpecs(self) -> None:
        """
        Field specs carry name, wire key, type, presence, codes and null value.
        """
        by_name = {f.name: f for f in event_type("CREAMStatus").fields}
        self.assertEqual(by_name["LRMS_jobid"].wire_key, "DG.CREAMSTATUS.LRMS_JOBID")
        self.assertEqual(by_name["result"].codes, ("ARRIVED", "DONE"))
        self.assertTrue(by_name["new_state"].required)
        self.assertFalse(by_name["old_state"].required)
        notif = {f.name: f for f in event_type("Notification").fields}
        self.assertEqual(notif["notifId"].wire_key, "DG.NOTIFICATION.NOTIFID")
        done = {f.name: f for f in event_type("Done").fields}
        self.assertEqual((done["exit_code"].type, done["exit_code"].null_value), ("int", "-1"))
        self.assertEqual(
            [f.wire_key for f in COMMON_FIELDS],
            [
                "DATE",
                "ARR_DATE",
                "HOST",
                "LVL",
                "DG.PRIORITY",
                "DG.JOBID",
                "DG.SEQCODE",
                "DG.USER",
                "DG.SOURCE",
                "DG.SRC_INSTANCE",
            ],
        )

    def test_sharedTable(self) -> None:
        """
        The package's catalogue is the L&B catalogue (C{tests/fixtures/catalogue/events.tsv}).
        """
        table = fixtures.CATALOGUE
        expected: dict[str, list[tuple[str, str, str, bool, tuple[str, ...], str]]] = {}
        codes: dict[str, tuple[str, int]] = {}
        with table.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["event"] == "_common_":
                    continue
                codes[row["event"]] = (row["group"], int(row["event_code"]))
                specs = expected.setdefault(row["event"], [])
                if row["field"]:
                    specs.append(
                        (
                            row["field"],
                            row["wire_key"],
                            row["type"],
                            row["presence"] == "required",
                            tuple(row["codes"].split()),
                            row["null_value"],
                        )
                    )
        self.assertEqual(len(expected), 79)
        self.assertEqual(set(CATALOGUE), set(expected))
        for name, etype in CATALOGUE.items():
            self.assertEqual((etype.group, etype.code), codes[name])
            self.assertEqual(
                [
                    (f.name, f.wire_key, f.type, f.required, f.codes, f.null_value)
                    for f in etype.fields
                ],
                expected[name],
                name,
            )

    def test_sources(self) -> None:
        """
        19 sources numbered from 1; names are matched case-insensitively.
        """
        self.assertEqual(len(SOURCES), 19)
        self.assertEqual(SOURCES.index("UserInterface") + 1, 1)
        self.assertEqual(SOURCES.index("LBServer") + 1, 9)
        self.assertEqual(SOURCES.index("CREAMExecutor") + 1, 11)
        self.assertEqual(SOURCES.index("VMSystem") + 1, 19)
        self.assertEqual(source_name("creaminterface"), "CREAMInterface")
        err = self.assertRaises(InvalidValue, source_name, "Nowhere")
        self.assertEqual(err.code, errno.EINVAL)
        self.assertIn("Nowhere", err.message)

    def test_priorityFlags(self) -> None:
        """
        The priority bits are L&B's.
        """
        self.assertEqual(
            (PRIO_SYNC, PRIO_LOCAL, PRIO_PROXY, PRIO_DIRECT, PRIO_INTERNAL, PRIO_EXCL, PRIO_FILE),
            (2, 4, 8, 16, 32, 64, 128),
        )


class ParseEventTests(SynchronousTestCase):
    """
    L{parse_event} validates and builds an L{Event}.
    """

    def test_good_jobids_remembered(self) -> None:
        """
        Well-formed job ids are remembered (bounded); bad ones never pass.
        """
        from lbtwist.core import events

        self.patch(events, "_GOOD_JOBIDS", set())
        self.patch(events, "_GOOD_JOBIDS_SIZE", 2)
        for n in range(5):
            jobid = f"https://lb.example.org:9000/job{n}"
            line = RUNNING.replace(JOBID, jobid)
            self.assertEqual(parse_event(line).jobid, jobid)
            self.assertEqual(parse_event(line).jobid, jobid)
            self.assertIn(jobid, events._GOOD_JOBIDS)
            self.assertLessEqual(len(events._GOOD_JOBIDS), 2)
            self.assertFails(JobIdFormat, RUNNING.replace(JOBID, f"https://lb/a b{n}"), "DG.JOBID")

    def test_duplicate_key_any_case(self) -> None:
        """
        A key given twice, in any case, is named in the error.
        """
        self.assertFails(KeyDuplicity, RUNNING + ' dg.running.NODE="x"', "dg.running.NODE")
        self.assertFails(KeyDuplicity, RUNNING + " date=20080928052524.106253", "date")

    def assertFails(self, exc: type[LBError], line: str, *words: str, **kw: bool) -> LBError:
        """
        Parsing C{line} raises C{exc}; its message names every word.
        """
        err = self.assertRaises(exc, parse_event, line, **kw)
        for word in words:
            self.assertIn(word, err.message)
        return err

    def test_parse(self) -> None:
        """
        Every common field and the event's own fields land in the L{Event}.
        """
        ev = parse_event(
            COMMON.replace("LVL=SYSTEM", "LVL=debug")
            + ' ARR_DATE=20080928052525.000001 DG.EVNT="creamstatus"'
            ' DG.CREAMSTATUS.NEW_STATE="REALLY-RUNNING" DG.CREAMSTATUS.RESULT="arrived"'
            ' DG.CREAMSTATUS.LRMS_JOBID="123.pbs" DG.CREAMSTATUS.OLD_STATE=""\n'
        )
        self.assertEqual(
            ev,
            Event(
                type="CREAMStatus",
                jobid=JOBID,
                date=1222579524106253,
                host="ce.example.org",
                user="/C=IT/CN=someone",
                source="LRMS",
                seqcode=SEQCODE,
                priority=0,
                level="DEBUG",
                src_instance="",
                prog="edg-wms",
                arrived=1222579525000001,
                fields={
                    "new_state": "REALLY-RUNNING",
                    "result": "ARRIVED",
                    "LRMS_jobid": "123.pbs",
                },
            ),
        )
        self.assertEqual(ev.get("result"), "ARRIVED")
        self.assertIsNone(ev.get("old_state"))
        self.assertEqual(ev.get("old_state", "-"), "-")
        self.assertFalse(ev.generated)

    def test_defaults(self) -> None:
        """
        Without PROG, LVL and DG.SRC_INSTANCE the defaults apply.
        """
        line = RUNNING.replace(" PROG=edg-wms", "").replace(" LVL=SYSTEM", "")
        ev = parse_event(line.replace(' DG.SRC_INSTANCE=""', ""))
        self.assertEqual((ev.prog, ev.level, ev.src_instance), ("edg-wms", "SYSTEM", ""))
        self.assertIsNone(ev.arrived)

    def test_format(self) -> None:
        """
        L{format_event} writes the common fields in L&B's order, ARR_DATE after
        DATE, the event fields in catalogue order, then the unknown keys.
        """
        ev = parse_event(
            'DG.LLLID=7 DG.CREAMSTATUS.RESULT="DONE" DG.CREAMSTATUS.NEW_STATE="DONE-OK" '
            + COMMON
            + ' DG.EVNT="CREAMStatus" ARR_DATE=20080928052525.000001 DG.ARRIVED="x y"'
        )
        self.assertEqual(
            format_event(ev),
            'DATE=20080928052524.106253 ARR_DATE=20080928052525.000001 HOST="ce.example.org"'
            ' PROG=edg-wms LVL=SYSTEM DG.PRIORITY=0 DG.SOURCE="LRMS" DG.SRC_INSTANCE=""'
            f' DG.EVNT="CREAMStatus" DG.JOBID="{JOBID}" DG.SEQCODE="{SEQCODE}"'
            ' DG.USER="/C=IT/CN=someone" DG.CREAMSTATUS.NEW_STATE="DONE-OK"'
            ' DG.CREAMSTATUS.RESULT="DONE" DG.LLLID="7" DG.ARRIVED="x y"',
        )

    def test_eventUndefined(self) -> None:
        """
        A missing, empty or unknown DG.EVNT is 1402.
        """
        for line in [COMMON, COMMON + ' DG.EVNT=""', COMMON + ' DG.EVNT="Bogus"', ""]:
            err = self.assertRaises(EventUndefined, parse_event, line)
            self.assertEqual(err.code, 1402)
        self.assertFails(EventUndefined, COMMON + ' DG.EVNT="Bogus"', "Bogus")
        self.assertFails(EventUndefined, COMMON, "DG.EVNT")

    def test_commonMissing(self) -> None:
        """
        Each required common field, missing or empty, is 1403 naming it.
        """
        fields = ["DATE", "HOST", "DG.PRIORITY", "DG.JOBID", "DG.SEQCODE", "DG.USER", "DG.SOURCE"]
        for key in fields:
            kept = [p for p in RUNNING.split(" ") if not p.startswith(key + "=")]
            err = self.assertFails(MessageIncomplete, " ".join(kept), key)
            self.assertEqual(err.code, 1403)
            emptied = [
                p if not p.startswith(key + "=") else key + '=""' for p in RUNNING.split(" ")
            ]
            self.assertFails(MessageIncomplete, " ".join(emptied), key)

    def test_requireJobid(self) -> None:
        """
        With C{require_jobid=False} a line without DG.JOBID parses, job id C{""}.
        """
        line = RUNNING.replace(f' DG.JOBID="{JOBID}"', "")
        self.assertFails(MessageIncomplete, line, "DG.JOBID")
        ev = parse_event(line, require_jobid=False)
        self.assertEqual(ev.jobid, "")
        self.assertEqual(parse_event(format_event(ev), require_jobid=False), ev)

    def test_eventFieldMissing(self) -> None:
        """
        A required event field, missing or empty, is 1403 naming its key.
        """
        line = COMMON + ' DG.EVNT="Running"'
        self.assertFails(MessageIncomplete, line, "DG.RUNNING.NODE")
        self.assertFails(MessageIncomplete, line + ' DG.RUNNING.NODE=""', "DG.RUNNING.NODE")

    def test_keyMisuse(self) -> None:
        """
        Another event type's field is 1405.
        """
        err = self.assertFails(
            KeyMisuse, RUNNING + ' dg.done.exit_code="0"', "dg.done.exit_code", "Done"
        )
        self.assertEqual(err.code, 1405)

    def test_keyDuplicity(self) -> None:
        """
        A key twice, in any case, is 1404.
        """
        err = self.assertFails(KeyDuplicity, RUNNING + ' DG.Running.Node="x"', "DG.Running.Node")
        self.assertEqual(err.code, 1404)

    def test_brokenULM(self) -> None:
        """
        Format errors are 1401; a bad DATE is named.
        """
        err = self.assertFails(BrokenULM, RUNNING + ' DG.X="a', "DG.X")
        self.assertEqual(err.code, 1401)
        self.assertFails(BrokenULM, RUNNING.replace(".106253", ".1062"), "DATE")
        self.assertFails(BrokenULM, RUNNING + " ARR_DATE=2008", "ARR_DATE")

    def test_unknownKeysKept(self) -> None:
        """
        Unknown keys (transport prefixes, unknown fields of this event, keys
        of no event) are kept verbatim in order.
        """
        ev = parse_event(
            "DG.LLLID=12 DG.ARRIVED=20080928052525 "
            + RUNNING
            + ' DG.RUNNING.COLOUR="blue" DG.NOSUCH.FIELD="" DG.GENERATED_BY="lbproxy"'
        )
        self.assertEqual(
            ev.extra,
            (
                ("DG.LLLID", "12"),
                ("DG.ARRIVED", "20080928052525"),
                ("DG.RUNNING.COLOUR", "blue"),
                ("DG.NOSUCH.FIELD", ""),
                ("DG.GENERATED_BY", "lbproxy"),
            ),
        )
        self.assertTrue(ev.generated)
        self.assertEqual(parse_event(format_event(ev)), ev)

    def test_enumerations(self) -> None:
        """
        Enumerated fields are parsed case-insensitively into the code name; a
        bad value names the field and the allowed values.
        """
        line = COMMON + ' DG.EVNT="CREAMStatus" DG.CREAMSTATUS.NEW_STATE="IDLE"'
        ev = parse_event(line + ' DG.CREAMSTATUS.RESULT="Done"')
        self.assertEqual(ev.fields["result"], "DONE")
        err = self.assertFails(
            InvalidValue,
            line + ' DG.CREAMSTATUS.RESULT="maybe"',
            "DG.CREAMSTATUS.RESULT",
            "maybe",
            "ARRIVED DONE",
        )
        self.assertEqual(err.code, errno.EINVAL)
        self.assertFails(InvalidValue, RUNNING.replace("LVL=SYSTEM", "LVL=LOUD"), "LVL", "DEBUG")

    def test_integers(self) -> None:
        """
        DG.PRIORITY and int fields must be integers.
        """
        self.assertEqual(
            parse_event(RUNNING.replace("DG.PRIORITY=0", "DG.PRIORITY=72")).priority, 72
        )
        self.assertFails(
            InvalidValue, RUNNING.replace("DG.PRIORITY=0", "DG.PRIORITY=x"), "DG.PRIORITY"
        )
        done = COMMON + ' DG.EVNT="Done" DG.DONE.STATUS_CODE="OK"'
        self.assertEqual(parse_event(done + ' DG.DONE.EXIT_CODE="-1"').fields["exit_code"], "-1")
        self.assertFails(InvalidValue, done + ' DG.DONE.EXIT_CODE="1.5"', "DG.DONE.EXIT_CODE")

    def test_sources(self) -> None:
        """
        DG.SOURCE and logsrc fields are canonical source names.
        """
        ev = parse_event(
            COMMON.replace('DG.SOURCE="LRMS"', 'DG.SOURCE="jobcontroller"')
            + ' DG.EVNT="Transfer" DG.TRANSFER.DESTINATION="logmonitor"'
            ' DG.TRANSFER.DEST_HOST="h" DG.TRANSFER.JOB="j" DG.TRANSFER.RESULT="ok"'
        )
        self.assertEqual((ev.source, ev.fields["destination"]), ("JobController", "LogMonitor"))
        self.assertFails(InvalidValue, RUNNING.replace('"LRMS"', '"Mars"'), "DG.SOURCE", "Mars")

    def test_jobidFormat(self) -> None:
        """
        DG.JOBID and jobid fields must be C{https://host[:port]/unique}: 1409;
        an empty RegJob parent counts as absent.
        """
        for bad in ["http://h:9000/x", "https://h:9000/", "https://h:port/x", "garbage"]:
            err = self.assertFails(JobIdFormat, RUNNING.replace(JOBID, bad), "DG.JOBID")
            self.assertEqual(err.code, 1409)
        self.assertEqual(parse_event(RUNNING.replace(JOBID, "https://h/x")).jobid, "https://h/x")
        reg = (
            COMMON + ' DG.EVNT="RegJob" DG.REGJOB.NS="ns" DG.REGJOB.JOBTYPE="simple"'
            " DG.REGJOB.PARENT="
        )
        ev = parse_event(reg + '""')
        self.assertNotIn("parent", ev.fields)
        self.assertEqual(ev.fields["jobtype"], "SIMPLE")
        self.assertEqual(parse_event(reg + f'"{JOBID}"').fields["parent"], JOBID)
        self.assertFails(JobIdFormat, reg + '"nope"', "DG.REGJOB.PARENT")

    def test_limits(self) -> None:
        """
        The field and size limits are passed down to the ULM parser.
        """
        from lbtwist.core.errors import TooBig

        self.assertRaises(TooBig, parse_event, RUNNING, max_fields=5)
        self.assertRaises(TooBig, parse_event, RUNNING, max_size=100)

    def test_evolve(self) -> None:
        """
        L{Event.evolve} copies with changes; the original is untouched.
        """
        ev = parse_event(RUNNING)
        moved = ev.evolve(host="other", fields={"node": "wn02"})
        self.assertEqual(
            (moved.host, moved.fields, moved.jobid), ("other", {"node": "wn02"}, JOBID)
        )
        self.assertEqual((ev.host, ev.fields), ("ce.example.org", {"node": "wn01.example.org"}))


class MakeEventTests(SynchronousTestCase):
    """
    L{make_event} builds validated events.
    """

    def make(self, type: str = "CREAMStatus", **fields: Any) -> Event:
        return make_event(
            type,
            jobid=JOBID,
            date=1222579524106253,
            host="ce.example.org",
            user="/CN=u",
            source="creamexecutor",
            seqcode="no_seqcodes",
            **fields,
        )

    def test_make(self) -> None:
        """
        Field names match case-insensitively; values are canonicalised;
        L{None} values are left out.
        """
        ev = self.make(new_state="IDLE", result="arrived", lrms_jobid=123, descr=None)
        self.assertEqual(ev.source, "CREAMExecutor")
        self.assertEqual(ev.fields, {"new_state": "IDLE", "result": "ARRIVED", "LRMS_jobid": "123"})
        self.assertEqual(parse_event(format_event(ev)), ev)

    def test_invalid(self) -> None:
        """
        Unknown fields, bad values and missing fields are refused.
        """
        self.assertRaises(InvalidValue, self.make, new_state="IDLE", result="DONE", colour="x")
        self.assertRaises(InvalidValue, self.make, new_state="IDLE", result="sideways")
        self.assertRaises(MessageIncomplete, self.make, new_state="IDLE")
        self.assertRaises(EventUndefined, self.make, "Nope")
        self.assertRaises(InvalidValue, self.make, "Accepted", **{"from": "Mars", "from_host": "h"})


_KNOWN_KEYS = {"PROG", "DG.EVNT"} | {f.wire_key for f in COMMON_FIELDS}
_KNOWN_KEYS |= {f.wire_key for t in CATALOGUE.values() for f in t.fields}
_tricky = st.text(
    st.one_of(st.sampled_from(list('"\\\n =\t\rž€')), st.characters(codec="utf-8")),
    min_size=1,
    max_size=30,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    """
    Arbitrary valid events with awkward text everywhere.
    """
    etype = draw(st.sampled_from(sorted(CATALOGUE.values(), key=lambda t: t.code)))
    fields: dict[str, str] = {}
    for spec in etype.fields:
        if not spec.required and draw(st.booleans()):
            continue
        if spec.codes:
            value = draw(st.sampled_from(spec.codes))
        elif spec.type in ("int", "port"):
            value = str(draw(st.integers(-(2**40), 2**40)))
        elif spec.type == "double":
            value = repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
        elif spec.type == "logsrc":
            value = draw(st.sampled_from(SOURCES))
        elif spec.type == "jobid":
            value = draw(
                st.from_regex(
                    r"https://[a-z0-9.-]{1,20}(:[0-9]{1,5})?/[A-Za-z0-9_-]{1,22}", fullmatch=True
                )
            )
        else:
            value = draw(_tricky)
        fields[spec.name] = value
    extra = draw(
        st.lists(
            st.tuples(
                st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(
                    lambda k: k.upper() not in _KNOWN_KEYS
                ),
                st.text(max_size=20),
            ),
            max_size=4,
            unique_by=lambda kv: kv[0].upper(),
        )
    )
    return Event(
        type=etype.name,
        jobid=JOBID,
        date=draw(st.integers(0, 253402300799999999)),
        host=draw(_tricky),
        user=draw(_tricky),
        source=draw(st.sampled_from(SOURCES)),
        seqcode=draw(_tricky),
        priority=draw(st.integers(0, 255)),
        level=draw(st.sampled_from(["SYSTEM", "DEBUG", "EMERGENCY"])),
        src_instance=draw(st.text(max_size=20)),
        prog=draw(_tricky),
        arrived=draw(st.none() | st.integers(0, 253402300799999999)),
        fields=fields,
        extra=tuple(extra),
    )


class RoundTripTests(SynchronousTestCase):
    """
    C{parse_event(format_event(ev)) == ev}.
    """

    @settings(max_examples=200, deadline=None)
    @given(events())
    def test_roundTrip(self, ev: Event) -> None:
        """
        Any valid event survives formatting and parsing, as text and bytes.
        """
        line = format_event(ev)
        self.assertNotIn("\n", line)
        self.assertEqual(parse_event(line + "\n"), ev)
        self.assertEqual(parse_event(line.encode("utf-8")), ev)


class FixtureTests(SynchronousTestCase):
    """
    The real L&B event streams parse.
    """

    def test_parseFields(self) -> None:
        """
        Every line of every stream is valid ULM.
        """
        count = 0
        for path, f in stream_files():
            for number, line in enumerate(f, 1):
                fields = parse_fields_or_fail(self, path, number, line)
                if line.strip():
                    self.assertIn("DG.EVNT", [k for k, _ in fields])
                    count += 1
        self.assertGreater(count, 2000)

    def test_parseEvent(self) -> None:
        """
        Every event of every stream parses (templates completed with a job id)
        and survives a format/parse round trip.
        """
        count = 0
        for path, f in stream_files():
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    ev = parse_event(complete(raw))
                except LBError as e:
                    self.fail(f"{path}:{number}: {e}")
                self.assertEqual(ev.type.upper(), raw.split('DG.EVNT="')[1].split('"')[0].upper())
                self.assertEqual(parse_event(format_event(ev)), ev)
                count += 1
        self.assertGreater(count, 2000)

    def test_templatesNeedJobid(self) -> None:
        """
        A template line without DG.JOBID is 1403 unless C{require_jobid=False}.
        """
        checked = 0
        for _, f in stream_files():
            for raw in f:
                if raw.strip() and "DG.JOBID=" not in raw and "DG.USER=" in raw:
                    err = self.assertRaises(MessageIncomplete, parse_event, raw)
                    self.assertIn("DG.JOBID", err.message)
                    self.assertEqual(parse_event(raw, require_jobid=False).jobid, "")
                    checked += 1
        self.assertGreater(checked, 100)

    def test_simpleJob(self) -> None:
        """
        Known values of the first two events of the simple job.
        """
        f = io.StringIO(fixtures.stream_text("perf_simple_avg_events.log"), newline=None)
        reg, enq = parse_event(f.readline()), parse_event(f.readline())
        self.assertEqual(
            (reg.type, reg.source, reg.fields["jobtype"]), ("RegJob", "NetworkServer", "SIMPLE")
        )
        self.assertEqual(reg.jobid, "https://devel15.cnaf.infn.it:9000/rReV1TpJ5oY0Z1_M4NBfHw")
        self.assertEqual(
            reg.fields["parent"], "https://devel15.cnaf.infn.it:9000/Whjdxb1SDDMUkWiB9xJUGw"
        )
        self.assertEqual(reg.date, 1222579496355641)
        self.assertEqual((enq.type, enq.src_instance), ("EnQueued", "22176"))
        self.assertEqual(enq.fields["queue"], "/opt/glite/var/workload_manager/jobdir")
        self.assertIn('GlueCEStateStatus == "Production"', enq.fields["job"])

    def test_hugeRegistration(self) -> None:
        """
        The 1.78 MB DAG registration parses.
        """
        raw = io.BytesIO(fixtures.stream_bytes("perf_dag_max_subjobs.reg.log")).readline()
        self.assertGreater(len(raw), 1_700_000)
        ev = parse_event(complete(raw.decode("utf-8")))
        self.assertEqual((ev.type, ev.fields["jobtype"]), ("RegJob", "DAG"))
        self.assertGreater(len(ev.fields["jdl"]), 1_700_000)
        self.assertEqual(parse_event(format_event(ev)), ev)


def parse_fields_or_fail(
    case: SynchronousTestCase, path: str, number: int, line: str
) -> list[tuple[str, str]]:
    """
    L{parse_fields} of a fixture line, failing the test with its location.
    """
    from lbtwist.core.ulm import parse_fields

    try:
        return parse_fields(line)
    except LBError as e:
        case.fail(f"{path}:{number}: {e}")


#: A RegJob as L&B's Java producer (ContextIL, driven by CREAM's LBLogger) writes it:
#: DG.LLLID first, the 20-digit DATE, two spaces before the event's own fields, every
#: field written, and the parent job id Java's "null".
JAVA_REGJOB = (
    'DG.LLLID="0" DG.USER="/C=IT/O=INFN/CN=Test User" DATE=20261201221300123000 '
    'HOST="ce.example.org" PROG=edg-wms LVL=SYSTEM DG.PRIORITY=0 DG.SOURCE="CREAMExecutor" '
    'DG.SRC_INSTANCE="" DG.EVNT="RegJob" DG.JOBID="https://ce.example.org:8443/CREAM123456789" '
    'DG.SEQCODE="no_seqcodes_with_cream_register_cheat"  DG.REGJOB.JDL="[ a = 1 ]" '
    'DG.REGJOB.NS="https://ce.example.org:8443/ce-cream/services" DG.REGJOB.PARENT="null" '
    'DG.REGJOB.JOBTYPE="CREAM" DG.REGJOB.NSUBJOBS="0" DG.REGJOB.SEED="" DG.REGJOB.WMS_DN=""'
)


class JavaProducerTests(SynchronousTestCase):
    """
    Lines of L&B's Java producer parse as L&B's C parser took them.
    """

    def test_null_parent(self) -> None:
        """
        C{DG.REGJOB.PARENT="null"} is no parent (L&B ignored the failed parse): the
        RegJob is not lost, and its round trip holds.
        """
        ev = parse_event(JAVA_REGJOB)
        self.assertEqual((ev.type, ev.fields["jobtype"]), ("RegJob", "CREAM"))
        self.assertNotIn("parent", ev.fields)
        self.assertEqual(ev.date, 1796163180123000)
        self.assertIn(("DG.LLLID", "0"), ev.extra)
        self.assertEqual(parse_event(format_event(ev)), ev)

    def test_null_only_for_job_ids(self) -> None:
        """
        Elsewhere "null" is a value like any other, and a job id field with any
        other bad value is still an error.
        """
        with self.assertRaises(JobIdFormat):
            parse_event(JAVA_REGJOB.replace('PARENT="null"', 'PARENT="nil"'))
        ev = parse_event(JAVA_REGJOB.replace('DG.REGJOB.SEED=""', 'DG.REGJOB.SEED="null"'))
        self.assertEqual(ev.fields["seed"], "null")
