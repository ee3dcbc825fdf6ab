# -*- test-case-name: tests.unit.test_lblayout -*-
"""
Tests for L{lbtwist.cli.lblayout}: C{glite-lb-job_status} and C{glite-lb-job_log}
layouts.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli.lblayout import LB_STATES, format_lb_log, format_lb_status
from lbtwist.core.states.status import JobStatus

JOBID = "https://ce.example.org:9000/CREAM123456789"


def fixed_ctime(seconds: int) -> str:
    return f"ctime({seconds})"


class StatusLayoutTests(SynchronousTestCase):
    def status(self) -> JobStatus:
        s = JobStatus(state="Running", jobId=JOBID, owner="/CN=Jana", jobtype="CREAM")
        s.cream_state = "Running"
        s.stateEnterTime = 1_700_000_000_250_000
        s.stateEnterTimes = {"Submitted": 1_699_999_999_000_000, "Running": 1_700_000_000_250_000}
        s.network_server = "https://ns"
        return s

    def test_every_field_with_nulls(self) -> None:
        out = format_lb_status(self.status(), ctime=fixed_ctime)
        lines = out.splitlines()
        self.assertEqual(lines[:3], ["state : Running", f"jobId : {JOBID}", "owner : /CN=Jana"])
        for expected in (
            "payload_owner : (null)",
            "network server : https://ns",
            "exit_code : 0",
            "done_code : OK",
            "suspended : 0",
            "stateEnterTime : 1700000000.250000",
            "lastUpdateTime : 0.000000",
            "cream_state : Running",
            "cream_exit_code : 0",
            # L&B prints the access rights (unset) with no line break after them.
            "(null)payload_running: 0",
        ):
            self.assertIn(expected, lines)
        self.assertEqual(out[-2:], "\n\n")

    def test_state_enter_times(self) -> None:
        lines = format_lb_status(self.status(), ctime=fixed_ctime).splitlines()
        start = lines.index("stateEnterTimes : ")
        block = lines[start + 1 : start + 1 + len(LB_STATES)]
        self.assertEqual(block[0], "     Undefined      - not available -")
        self.assertEqual(block[1], "     Submitted  ctime(1699999999)")
        self.assertEqual(block[5], "       Running  ctime(1700000000)")
        self.assertEqual(lines[start + 1 + len(LB_STATES)].split(" : ")[0], "lastUpdateTime")

    def test_no_cream_section_without_cream_state(self) -> None:
        s = JobStatus(state="Submitted", jobId=JOBID, jobtype="SIMPLE")
        out = format_lb_status(s, ctime=fixed_ctime)
        self.assertNotIn("cream_state", out)
        self.assertNotIn("children_num", out)


class LogLayoutTests(SynchronousTestCase):
    def test_regenerated_with_blank_lines(self) -> None:
        line = (
            f'DATE=20240314092653.000001 HOST="h" PROG=edg-wms LVL=SYSTEM DG.PRIORITY=0 '
            f'DG.SOURCE="UserInterface" DG.EVNT="UserTag" DG.JOBID="{JOBID}" DG.SEQCODE="s" '
            f'DG.USER="/CN=Jana" DG.USERTAG.NAME="a" DG.USERTAG.VALUE="b"'
        )
        out = format_lb_log([line, line])
        parts = out.split("\n")
        self.assertTrue(parts[0].endswith('DG.USERTAG.VALUE="b" '), parts[0])
        self.assertIn('DG.SRC_INSTANCE=""', parts[0])
        self.assertEqual(parts[1], "")
        self.assertEqual(out[-len("\nFound 2 events\n") :], "\nFound 2 events\n")
