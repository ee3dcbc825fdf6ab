# -*- test-case-name: tests.unit.test_stats -*-
"""
Tests for L{lbtwist.core.stats}: state entries of a status change, request
parameters, buckets, duration figures, the text form.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import JobStatus
from lbtwist.core.stats import (
    StatsRequest,
    bucket_counts,
    buckets,
    duration_answer,
    entries,
    parse_time,
    rate_answer,
    render_text,
    summary,
    vo_of,
)

S = 1_000_000
T0 = 1_700_000_000 * S


def parse(*params: tuple[str, str]) -> StatsRequest:
    return StatsRequest.parse(params, now=T0 + 86_400 * S, max_buckets=48)


class EntriesTests(SynchronousTestCase):
    def test_newStatesOnly(self) -> None:
        """
        Only the states whose entry time is new or changed give rows, with the job's
        grouping values (CREAM's worker node as ce_node, the VO of the first FQAN).
        """
        before = JobStatus(state="Submitted", stateEnterTimes={"Submitted": T0})
        after = JobStatus(
            state="Running",
            stateEnterTimes={"Submitted": T0, "Running": T0 + 60 * S},
            destination="ce:8443/cream-pbs-long",
            cream_node="wn1",
            owner="/CN=u",
            user_fqans=["/atlas/Role=production", "/atlas"],
        )
        [row] = entries("j", before, after)
        self.assertEqual(
            (row.state, row.entered, row.ce_node, row.vo), ("Running", T0 + 60 * S, "wn1", "atlas")
        )
        self.assertEqual(row.destination, "ce:8443/cream-pbs-long")
        self.assertEqual(entries("j", after, after), [])
        self.assertEqual(len(entries("j", None, after)), 2)

    def test_voOf(self) -> None:
        self.assertEqual(vo_of(["/cms/Role=NULL/Capability=NULL"]), "cms")
        self.assertIsNone(vo_of([]))
        self.assertIsNone(vo_of(["/Role=x"]))


class RequestTests(SynchronousTestCase):
    def test_times(self) -> None:
        self.assertEqual(parse_time("1700000000", "from"), T0)
        self.assertEqual(parse_time("1700000000.5", "from"), T0 + S // 2)
        self.assertEqual(parse_time("2023-11-14T22:13:20Z", "from"), T0)
        self.assertEqual(parse_time("2023-11-14T22:13:20", "from"), T0)
        self.assertEqual(parse_time("2023-11-14T23:13:20+01:00", "from"), T0)
        with self.assertRaises(InvalidValue):
            parse_time("yesterday", "from")

    def test_defaults(self) -> None:
        """
        C{to} defaults to now, C{from} to a day before; states in any case.
        """
        request = parse(("state", "running"))
        self.assertEqual(request.state, "Running")
        self.assertEqual((request.start, request.end), (T0, T0 + 86_400 * S))

    def test_refused(self) -> None:
        for params in (
            (),
            (("state", "Nowhere"),),
            (("state", "Running"), ("to_state", "Later")),
            (("state", "Running"), ("bogus", "1")),
            (("state", "Running"), ("state", "Done")),
            (("state", "Running"), ("from", "1700000100"), ("to", "1700000000")),
            (("state", "Running"), ("group", "colour")),
            (("state", "Running"), ("step", "0")),
            (("state", "Running"), ("step", "-5")),
            # 24 h in 10-minute buckets: 144, over the 48 allowed.
            (("state", "Running"), ("step", "600")),
        ):
            with self.assertRaises(InvalidValue, msg=repr(params)):
                parse(*params)
        self.assertEqual(parse(("state", "Running"), ("step", "1800")).step, 1800)


class FiguresTests(SynchronousTestCase):
    def test_summary(self) -> None:
        """
        min, mean, median (the middle one, or the mean of the two middle ones), max,
        in seconds.
        """
        self.assertEqual(
            summary([30 * S, 10 * S, 20 * S]),
            {"count": 3, "min": 10.0, "mean": 20.0, "median": 20.0, "max": 30.0},
        )
        self.assertEqual(summary([10 * S, 40 * S, 20 * S, 30 * S])["median"], 25.0)
        self.assertEqual(summary([])["count"], 0)
        self.assertIsNone(summary([])["median"])

    def test_buckets(self) -> None:
        self.assertEqual(buckets(T0, T0 + 3601 * S, 3600), 2)
        self.assertEqual(
            bucket_counts([T0, T0 + 5 * S, T0 + 3600 * S, T0 + 7200 * S], T0, T0 + 7200 * S, 3600),
            [2, 1],
        )

    def test_rateAndGroups(self) -> None:
        request = parse(("state", "Running"), ("group", "vo"), ("step", "3600"))
        answer = rate_answer(request, {"atlas": 3, "cms": 5, None: 1}, {0: 4, 23: 5})
        self.assertEqual(answer["count"], 9)
        self.assertAlmostEqual(answer["rate"], 9 / 86_400)
        self.assertEqual([g["group"] for g in answer["groups"]], ["cms", "atlas", None])
        self.assertEqual(answer["buckets"][0], 4)
        self.assertEqual(answer["buckets"][23], 5)
        self.assertEqual(sum(answer["buckets"]), 9)
        text = render_text(answer)
        self.assertIn("total: count 9", text)
        self.assertIn("vo=cms: count 5", text)
        self.assertIn("vo=-: count 1", text)

    def test_durations(self) -> None:
        request = parse(("state", "Running"), ("to_state", "Done"), ("group", "ce_node"))
        answer = duration_answer(request, {"wn1": [10 * S, 30 * S], "wn2": [50 * S]})
        self.assertEqual((answer["count"], answer["median"], answer["max"]), (3, 30.0, 50.0))
        self.assertEqual(
            answer["groups"][0],
            {"group": "wn1", "count": 2, "min": 10.0, "mean": 20.0, "median": 20.0, "max": 30.0},
        )
        self.assertIn("Running -> Done", render_text(answer))
