# -*- test-case-name: tests.unit.test_unparse -*-
"""
Tests for L{lbtwist.core.unparse}: events written as L&B's unparser writes them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.events import make_event, parse_event
from lbtwist.core.unparse import dump_line, unparse_event
from tests import fixtures

JOBID = "https://ce.example.org:9000/CREAM123456789"


def cream_status() -> object:
    return make_event(
        "CREAMStatus", jobid=JOBID, date=1_710_408_413_123_456, host="ce01",
        user="/CN=Jana", source="CREAMExecutor", seqcode="no_seqcodes_with_CREAM",
        priority=8, new_state="RUNNING", result="DONE",
    )  # fmt: skip


class UnparseTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """
        Common fields in L&B's order (DATE, LVL, DG.PRIORITY bare), every field of the
        type quoted, unset ones as empty, each followed by one space.
        """
        line = unparse_event(cream_status())  # type: ignore[arg-type]
        self.assertTrue(
            line.startswith(
                'DATE=20240314092653.123456 HOST="ce01" PROG=edg-wms LVL=SYSTEM DG.PRIORITY=8 '
                'DG.SOURCE="CREAMExecutor" DG.SRC_INSTANCE="" DG.EVNT="CREAMStatus" '
                f'DG.JOBID="{JOBID}" DG.SEQCODE="no_seqcodes_with_CREAM" DG.USER="/CN=Jana" '
            ),
            line,
        )
        self.assertTrue(line.endswith(" "))
        self.assertIn('DG.CREAMSTATUS.OLD_STATE="" ', line)
        self.assertIn('DG.CREAMSTATUS.NEW_STATE="RUNNING" ', line)
        self.assertIn('DG.CREAMSTATUS.FAILURE_REASON="" ', line)

    def test_parser_reads_it_back(self) -> None:
        """
        The parser takes the unparser's form: empty values and UNDEFINED codes are absent.
        """
        ev = cream_status()
        back = parse_event(unparse_event(ev))  # type: ignore[arg-type]
        self.assertEqual(back, ev)
        self.assertNotIn("old_state", back.fields)

    def test_int_null_and_escapes(self) -> None:
        ev = make_event(
            "RegJob", jobid=JOBID, date=0, host="h", user='/CN="q"', source="NetworkServer",
            seqcode="s", ns="ns", jobtype="SIMPLE", jdl='[ a = "b"\n ]',
        )  # fmt: skip
        line = unparse_event(ev)
        self.assertIn('DG.REGJOB.NSUBJOBS="0" ', line)
        self.assertIn('DG.USER="/CN=\\"q\\"" ', line)
        self.assertIn('DG.REGJOB.JDL="[ a = \\"b\\"\\n ]" ', line)
        self.assertEqual(parse_event(line).get("jdl"), '[ a = "b"\n ]')

    def test_dump_line(self) -> None:
        ev = cream_status()
        self.assertEqual(
            dump_line(ev, 1_710_408_414_000_001),  # type: ignore[arg-type]
            "DG.ARRIVED=20240314092654.000001 " + unparse_event(ev) + "\n\n",  # type: ignore[arg-type]
        )


class RecordedStreamTests(SynchronousTestCase):
    def test_lines_as_lb_wrote_them(self) -> None:
        """
        Every event with a job id in the recorded gLite L&B streams (written by L&B's
        unparser) comes out of parse and unparse byte for byte; RegJob has gained
        C{DG.REGJOB.WMS_DN} since, which the old lines lack.
        """
        checked = 0
        for name in fixtures.stream_names():
            for line in fixtures.stream_text(name).splitlines():
                if "DG.JOBID=" not in line:
                    continue  # the stress tool's templates, not the unparser's lines
                ev = parse_event(line)
                got = unparse_event(ev)
                if ev.type == "RegJob":
                    got = got.removesuffix('DG.REGJOB.WMS_DN="" ')
                self.assertEqual(got, line)
                checked += 1
        self.assertGreater(checked, 1000)
