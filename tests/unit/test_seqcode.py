# -*- test-case-name: tests.unit.test_seqcode -*-
"""
Tests for L{lbtwist.core.seqcode}.
"""

from __future__ import annotations

import errno
import json
import random

from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import InvalidValue
from lbtwist.core.seqcode import (
    COUNTERS,
    SOURCE_COUNTER,
    GliteSeqCode,
    bump_lrms,
    next_seqcode,
    ordering_key,
    parse_seqcode,
)
from tests import fixtures

ZERO = "UI=000000:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
SAMPLE = "UI=000002:NS=0000000004:WM=000003:BH=0000000001:JSS=000005:LM=000006:LRMS=000007:APP=000008:LBS=000009"
SAMPLE8 = (
    "UI=000002:NS=0000000004:WM=000003:BH=0000000001:JSS=000005:LM=000006:LRMS=000007:APP=000008"
)
OPAQUE = "no_seqcodes_with_cream_execute_CREAM123_0"

COUNTER_VALUES = st.tuples(*[st.integers(min_value=0, max_value=10**12) for _ in COUNTERS])
SOURCES = st.sampled_from(sorted(SOURCE_COUNTER) + ["CREAMInterface", "CREAMExecutor"])


@frozen
class FakeEvent:
    """
    The part of L{lbtwist.core.events.Event} that L{ordering_key} reads.
    """

    seqcode: str
    date: int
    jobid: str = "https://lb.example.org:9000/Hq3tK8vWZ0bQy1n2m3p4rA"


class GliteSeqCodeTests(SynchronousTestCase):
    """
    L{GliteSeqCode}.
    """

    def test_parse(self) -> None:
        self.assertEqual(GliteSeqCode.parse(SAMPLE).counters, (2, 4, 3, 1, 5, 6, 7, 8, 9))
        self.assertEqual(GliteSeqCode.parse(ZERO), GliteSeqCode())

    def test_parseEightCounters(self) -> None:
        """
        The older form without LBS parses with LBS 0 and formats with all nine.
        """
        code = GliteSeqCode.parse(SAMPLE8)
        self.assertEqual(code.counters, (2, 4, 3, 1, 5, 6, 7, 8, 0))
        self.assertEqual(code.format(), SAMPLE8 + ":LBS=000000")

    def test_format(self) -> None:
        self.assertEqual(GliteSeqCode.parse(SAMPLE).format(), SAMPLE)
        self.assertEqual(str(GliteSeqCode()), ZERO)

    def test_wideCounters(self) -> None:
        """
        Counters beyond their field width are written in full and read back.
        """
        code = GliteSeqCode((1234567, 0, 0, 0, 0, 0, 0, 0, 0))
        self.assertTrue(code.format().startswith("UI=1234567:NS=0000000000:"))
        self.assertEqual(GliteSeqCode.parse(code.format()), code)

    def test_parseInvalid(self) -> None:
        for bad in [
            "",
            OPAQUE,
            "UI=000000",
            SAMPLE.replace("NS=", "XX="),
            SAMPLE.replace("UI=000002", "UI=-00002"),
            SAMPLE.replace("UI=000002", "UI=00000a"),
            SAMPLE.replace("UI=000002", "UI="),
            SAMPLE + ":EXTRA=000001",
            SAMPLE.replace(":", ";"),
            "NS=0000000004:" + SAMPLE,
            SAMPLE.lower(),
        ]:
            with self.assertRaises(InvalidValue, msg=bad) as cm:
                GliteSeqCode.parse(bad)
            self.assertEqual(cm.exception.code, errno.EINVAL)

    def test_badCounters(self) -> None:
        self.assertRaises(InvalidValue, GliteSeqCode, (0,) * 8)
        self.assertRaises(InvalidValue, GliteSeqCode, (0,) * 8 + (-1,))
        self.assertRaises(InvalidValue, GliteSeqCode().with_counter, "NOPE", 1)
        self.assertRaises(InvalidValue, GliteSeqCode().with_counter, "UI", -1)

    def test_withCounterAndGet(self) -> None:
        code = GliteSeqCode().with_counter("LRMS", 5)
        self.assertEqual(code.get("LRMS"), 5)
        self.assertEqual(code.counters, (0, 0, 0, 0, 0, 0, 5, 0, 0))

    def test_sourceCounter(self) -> None:
        self.assertEqual(
            SOURCE_COUNTER,
            {
                "UserInterface": "UI",
                "NetworkServer": "NS",
                "WorkloadManager": "WM",
                "BigHelper": "BH",
                "JobController": "JSS",
                "LogMonitor": "LM",
                "LRMS": "LRMS",
                "Application": "APP",
                "LBServer": "LBS",
            },
        )

    def test_incremented(self) -> None:
        """
        Each source bumps its own counter by one.
        """
        base = GliteSeqCode.parse(SAMPLE)
        for source, name in SOURCE_COUNTER.items():
            bumped = base.incremented(source)
            self.assertEqual(bumped.get(name), base.get(name) + 1)
            others = [n for n in COUNTERS if n != name]
            self.assertEqual([bumped.get(n) for n in others], [base.get(n) for n in others])
        self.assertEqual(base.incremented("logmonitor"), base.incremented("LogMonitor"))

    def test_incrementedNoCounter(self) -> None:
        """
        CREAM sources (and others without a counter) leave the code unchanged.
        """
        base = GliteSeqCode.parse(SAMPLE)
        for source in ["CREAMInterface", "CREAMExecutor", "PBSServer", "VMManager"]:
            self.assertEqual(base.incremented(source), base)

    def test_compare(self) -> None:
        """
        Codes compare as tuples of counters in the fixed order (UI most significant).
        """
        a = GliteSeqCode.parse(SAMPLE)
        self.assertLess(a.counters, a.incremented("LBServer").counters)
        self.assertLess(a.incremented("LBServer").counters, a.incremented("UserInterface").counters)

    @settings(max_examples=200, deadline=None)
    @given(COUNTER_VALUES)
    def test_roundTrip(self, counters: tuple[int, ...]) -> None:
        code = GliteSeqCode(counters)
        self.assertEqual(GliteSeqCode.parse(code.format()), code)
        self.assertEqual(parse_seqcode(code.format()), code)

    @settings(max_examples=200, deadline=None)
    @given(COUNTER_VALUES, st.sampled_from(sorted(SOURCE_COUNTER)))
    def test_incrementedSortsAfter(self, counters: tuple[int, ...], source: str) -> None:
        code = GliteSeqCode(counters)
        self.assertGreater(code.incremented(source).counters, code.counters)


class ParseSeqcodeTests(SynchronousTestCase):
    """
    L{parse_seqcode}.
    """

    def test_glite(self) -> None:
        self.assertEqual(parse_seqcode(SAMPLE), GliteSeqCode.parse(SAMPLE))
        self.assertEqual(parse_seqcode(SAMPLE8), GliteSeqCode.parse(SAMPLE8))

    def test_opaque(self) -> None:
        for text in [OPAQUE, "", "whatever", "UI=000001"]:
            self.assertIsNone(parse_seqcode(text), text)

    def test_fixtures(self) -> None:
        """
        Every seqcode in the real L&B streams parses and formats back verbatim.
        """
        seen = 0
        for name in fixtures.stream_names():
            for line in fixtures.stream_text(name).splitlines():
                start = line.find('DG.SEQCODE="')
                if start < 0:
                    continue
                text = line[start + len('DG.SEQCODE="') :].split('"', 1)[0]
                code = parse_seqcode(text)
                self.assertIsNotNone(code, text)
                assert code is not None
                self.assertEqual(code.format(), text)
                seen += 1
        self.assertGreater(seen, 0)


class OrderingKeyTests(SynchronousTestCase):
    """
    L{ordering_key}.
    """

    def test_glite(self) -> None:
        ev = FakeEvent(SAMPLE, 1_700_000_000_000_000)
        self.assertEqual(
            ordering_key(ev, 7), (1, 2, 4, 3, 1, 5, 6, 7, 8, 9, 1_700_000_000_000_000, 7)
        )

    def test_opaque(self) -> None:
        self.assertEqual(ordering_key(FakeEvent(OPAQUE, 5), 3), (0, 5, 3))

    def test_creamJobByDate(self) -> None:
        """
        A direct CREAM job orders by DATE then arrival even where some of its events carry
        gLite seqcodes (job-reg -c, the Job Wrapper) and others CREAM's opaque ones.
        """
        jobid = "https://ce.example.org:9000/CREAM123456789"
        reg = FakeEvent(ZERO, 100, jobid)
        later = FakeEvent(OPAQUE, 200, jobid)
        self.assertEqual(ordering_key(reg, 1), (0, 100, 1))
        self.assertLess(ordering_key(reg, 1), ordering_key(later, 2))

    def test_gliteCountersBeforeDate(self) -> None:
        """
        gLite events order by counters even against DATE; ties go to DATE, then arrival.
        """
        first = FakeEvent(SAMPLE, 200)
        second = FakeEvent(GliteSeqCode.parse(SAMPLE).incremented("LogMonitor").format(), 100)
        self.assertLess(ordering_key(first, 2), ordering_key(second, 1))
        same_early = FakeEvent(SAMPLE, 100)
        self.assertLess(ordering_key(same_early, 9), ordering_key(first, 1))
        self.assertLess(ordering_key(first, 1), ordering_key(first, 2))

    def test_eightAndNineEqual(self) -> None:
        """
        The 8-counter form orders as its 9-counter form with LBS 0.
        """
        eight = FakeEvent(SAMPLE8, 10)
        nine = FakeEvent(SAMPLE8 + ":LBS=000000", 10)
        self.assertEqual(ordering_key(eight, 1), ordering_key(nine, 1))

    def test_opaqueByDateThenArrival(self) -> None:
        """
        Opaque codes order by DATE then arrival, whatever the text says.
        """
        a = FakeEvent("no_seqcodes_with_cream_execute_9_9", 100)
        b = FakeEvent("no_seqcodes_with_cream_execute_1_1", 200)
        self.assertLess(ordering_key(a, 5), ordering_key(b, 1))
        self.assertLess(ordering_key(b, 1), ordering_key(b, 2))

    def test_mixedOpaqueFirst(self) -> None:
        """
        In a job mixing both kinds (rare), opaque events sort first.
        """
        self.assertLess(
            ordering_key(FakeEvent(OPAQUE, 10**18), 100), ordering_key(FakeEvent(ZERO, 0), 0)
        )

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.one_of(COUNTER_VALUES.map(lambda c: GliteSeqCode(c).format()), st.just(OPAQUE)),
                st.integers(min_value=0, max_value=2**62),
            ),
            max_size=20,
        ),
        st.randoms(use_true_random=False),
    )
    def test_keysJsonAndPermutationInvariant(
        self, items: list[tuple[str, int]], rnd: random.Random
    ) -> None:
        """
        Keys are lists of ints through JSON, and sorting by them gives the same
        order whatever the input order.
        """
        events = [(FakeEvent(code, date), arrival) for arrival, (code, date) in enumerate(items)]
        for ev, arrival in events:
            key = ordering_key(ev, arrival)
            self.assertTrue(all(type(k) is int for k in key))
            self.assertEqual(tuple(json.loads(json.dumps(list(key)))), key)
        shuffled = list(events)
        rnd.shuffle(shuffled)
        self.assertEqual(
            sorted(events, key=lambda p: ordering_key(*p)),
            sorted(shuffled, key=lambda p: ordering_key(*p)),
        )


class NextSeqcodeTests(SynchronousTestCase):
    """
    L{next_seqcode} and L{bump_lrms}.
    """

    def test_fromNothing(self) -> None:
        for text in [None, ""]:
            self.assertEqual(
                next_seqcode(text, "UserInterface"), ZERO.replace("UI=000000", "UI=000001")
            )
        self.assertEqual(next_seqcode(None, "CREAMExecutor"), ZERO)

    def test_glite(self) -> None:
        self.assertEqual(
            next_seqcode(SAMPLE8, "LogMonitor"),
            SAMPLE8.replace("LM=000006", "LM=000007") + ":LBS=000000",
        )

    def test_opaqueUnchanged(self) -> None:
        self.assertEqual(next_seqcode(OPAQUE, "CREAMExecutor"), OPAQUE)
        self.assertEqual(next_seqcode(OPAQUE, "LogMonitor"), OPAQUE)

    def test_bumpLrms(self) -> None:
        self.assertEqual(bump_lrms(SAMPLE, 1000), SAMPLE.replace("LRMS=000007", "LRMS=001007"))
        self.assertEqual(
            bump_lrms(SAMPLE8, 2), SAMPLE8.replace("LRMS=000007", "LRMS=000009") + ":LBS=000000"
        )

    def test_bumpLrmsOpaque(self) -> None:
        self.assertRaises(InvalidValue, bump_lrms, OPAQUE, 1)

    def test_bumpLrmsOrder(self) -> None:
        """
        Generated events (+1, +2) sort after their trigger and before CREAM's next (+1000).
        """
        keys = [
            ordering_key(FakeEvent(code, 50), arrival)
            for arrival, code in enumerate(
                [bump_lrms(SAMPLE, 1000), bump_lrms(SAMPLE, 2), bump_lrms(SAMPLE, 1), SAMPLE]
            )
        ]
        self.assertEqual(sorted(keys), list(reversed(keys)))
