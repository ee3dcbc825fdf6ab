# -*- test-case-name: tests.unit.test_purge -*-
"""
Tests for L{lbtwist.core.purge}: durations, grace selection, the trace record.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import InvalidValue
from lbtwist.core.purge import (
    DAY,
    PurgeRules,
    format_grace,
    is_due,
    parse_duration,
    parse_grace,
    trace_record,
)

US = 1_000_000


class DurationTests(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(parse_duration("2d"), 2 * DAY)
        self.assertEqual(parse_duration("12h"), 12 * 3600)
        self.assertEqual(parse_duration("30m"), 1800)
        self.assertEqual(parse_duration("45s"), 45)
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration(" 1W "), 7 * DAY)
        self.assertEqual(parse_duration("0"), 0)

    def test_bad(self) -> None:
        for text in ("", "2 d", "-1d", "1.5h", "d", "3y", "1d2h"):
            e = self.assertRaises(InvalidValue, parse_duration, text)
            self.assertIn("bad duration", e.message)

    def test_never(self) -> None:
        for text in ("never", "NEVER", "-1", "-2"):
            self.assertIsNone(parse_grace(text))
        self.assertEqual(parse_grace("3d"), 3 * DAY)

    def test_format_round_trip(self) -> None:
        for value in (None, 0, 90, 1800, 3600, 3 * DAY, 7 * DAY, 31 * DAY):
            self.assertEqual(parse_grace(format_grace(value)), value)
        self.assertEqual(format_grace(7 * DAY), "7d")


class GraceTests(SynchronousTestCase):
    def test_defaults_are_lbs(self) -> None:
        rules = PurgeRules()
        self.assertEqual(rules.grace("Cleared"), 3 * DAY)
        self.assertEqual(rules.grace("Aborted"), 7 * DAY)
        self.assertEqual(rules.grace("Cancelled"), 7 * DAY)
        self.assertEqual(rules.grace("Done"), 31 * DAY)
        for state in ("Running", "Submitted", "Unknown", None):
            self.assertEqual(rules.grace(state), 31 * DAY)

    def test_each_class(self) -> None:
        rules = PurgeRules(aborted=1, cancelled=2, cleared=3, done=4, other=5)
        self.assertEqual(
            [rules.grace(s) for s in ("Aborted", "Cancelled", "Cleared", "Done", "Waiting")],
            [1, 2, 3, 4, 5],
        )

    def test_due_after_grace_only(self) -> None:
        rules = PurgeRules()
        last = 1000 * US
        self.assertFalse(is_due(rules, "Cleared", last, last + 3 * DAY * US))
        self.assertTrue(is_due(rules, "Cleared", last, last + 3 * DAY * US + 1))
        self.assertFalse(is_due(rules, "Running", last, last + 4 * DAY * US))

    def test_never_updated_never_due(self) -> None:
        self.assertFalse(is_due(PurgeRules(other=0), "Running", None, 10**18))

    def test_never(self) -> None:
        rules = PurgeRules(done=None)
        self.assertFalse(is_due(rules, "Done", 0, 10**18))
        self.assertTrue(is_due(rules, "Running", 0, 10**18))

    def test_delivered(self) -> None:
        """
        The delivered rule: relayed terminal jobs only, after its own grace.
        """
        rules = PurgeRules(delivered=DAY)
        last = 0
        now = 2 * DAY * US
        self.assertTrue(is_due(rules, "Aborted", last, now, delivered=True))
        self.assertFalse(is_due(rules, "Aborted", last, now, delivered=False))
        self.assertFalse(is_due(rules, "Done", last, now, delivered=True))
        self.assertFalse(is_due(PurgeRules(), "Aborted", last, now, delivered=True))

    def test_shortest(self) -> None:
        self.assertEqual(PurgeRules().shortest(), 3 * DAY)
        self.assertEqual(PurgeRules(delivered=60).shortest(), 60)
        never = PurgeRules(aborted=None, cancelled=None, cleared=None, done=None, other=None)
        self.assertIsNone(never.shortest())

    def test_overrides(self) -> None:
        rules = PurgeRules().with_overrides({"done": 60, "other": None})
        self.assertEqual((rules.done, rules.other, rules.cleared), (60, None, 3 * DAY))
        self.assertRaises(InvalidValue, PurgeRules().with_overrides, {"running": 1})
        self.assertIn("done=1m", rules.with_overrides({"done": 60}).describe())


class TraceTests(SynchronousTestCase):
    def test_record(self) -> None:
        status = {
            "state": "Cleared",
            "owner": "/CN=u",
            "jdl": "[...]",
            "cream_jdl": "[...]",
            "matched_jdl": "[...]",
            "event_count": 7,
            "user_fqans": ["/dteam/Role=NULL"],
            "cream_lrms_id": "123.pbs",
            "done_code": 0,
        }
        data = json.loads(trace_record(status, ["CREAMInterface", "LRMS", "CREAMInterface", ""]))
        self.assertEqual(data["sources"], ["CREAMInterface", "LRMS"])
        self.assertEqual(data["fqans"], ["/dteam/Role=NULL"])
        record = data["status"]
        for gone in ("jdl", "cream_jdl", "matched_jdl", "event_count"):
            self.assertNotIn(gone, record)
        self.assertEqual(record["cream_lrms_id"], "123.pbs")
        self.assertEqual(record["done_code"], "OK")
        given = json.loads(trace_record(status, [], ["/atlas"]))
        self.assertEqual(given["fqans"], ["/atlas"])
