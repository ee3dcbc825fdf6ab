# -*- test-case-name: tests.e2e.test_lbtools -*-
"""
End-to-end: L&B-style scripts against C{twistd lbproxy} through C{glite-lb-*} wrapper
scripts (C{tests/e2e/lbtools/}): the state and output checks of L&B's
C{lb-test-cream.sh} for a direct CREAM job and a WMS job, those of
C{lb-test-job-states.sh}, and the serve socket.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from tests.e2e import harness
from tests.e2e.harness import E2ECase

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lbtools")
CHECKS = os.path.join(TOOLS, "lb-cream-checks.sh")


class LBToolsTests(E2ECase):
    def setUp(self) -> None:
        self.svc = harness.LBService(tempfile.mkdtemp(prefix="lbtwist-e2e-lbtools-"))
        self.addCleanup(self.svc.cleanup)
        self.svc.start()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("GLITE_WMS_JOBID", "GLITE_WMS_SEQUENCE_CODE", "EDG_WL_SEQUENCE_CODE"):
            env.pop(name, None)
        env.update(
            PATH=TOOLS + os.pathsep + env.get("PATH", ""),
            LBTWIST=" ".join(harness.LBTWIST),
            GLITE_WMS_LBPROXY_STORE_SOCK=self.svc.socket_path,
            GLITE_WMS_LBPROXY_SERVE_SOCK=self.svc.serve_path,
        )
        return env

    def run_checks(self, part: str) -> list[str]:
        result = subprocess.run(
            ["bash", CHECKS, part, "localhost:9000"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = result.stdout.splitlines()
        failures = [x for x in lines if not x.startswith("ok ")]
        self.assertEqual((result.returncode, failures), (0, []), result.stderr[-2000:])
        return lines

    def test_direct_cream_job(self) -> None:
        """
        A direct CREAM job registered with C{job_reg -c}, its CREAMAccepted logged with
        Accepted's C{--from*} fields (dropped), then each CREAM state change.
        """
        lines = self.run_checks("direct")
        self.assertIn("ok state Done Done-ok", lines)
        self.assertEqual(len(lines), 9)

    def test_wms_job(self) -> None:
        """
        A WMS job: C{new jobid} parsed from job_reg, sequence codes chained through
        every logevent, the gLite states up to Cleared.
        """
        lines = self.run_checks("wms")
        self.assertIn("ok state Cleared ", lines)

    def test_wms_job_on_cream(self) -> None:
        """
        A WMS job's CREAM events: cream_state Pending after CREAMStore CmdStart Ok,
        C{suspended : 1} after CmdSuspend Ok, cleared by a move to Idle (L&B bug #45971).
        """
        lines = self.run_checks("wms-cream")
        self.assertIn("ok suspended 1", lines)
        self.assertIn("ok state Done Done-ok", lines)

    def test_job_states(self) -> None:
        """
        The checks of L&B's C{lb-test-job-states.sh}: a gLite job from Submitted through
        Waiting, Ready, Scheduled, Running and Done to Cleared.
        """
        lines = self.run_checks("job-states")
        self.assertEqual(lines[-1], "ok state Cleared")
        self.assertEqual(len(lines), 16)

    def test_job_log_through_serve_socket(self) -> None:
        """
        C{glite-lb-job_log -x}: the events as L&B's unparser writes them, a blank line
        after each, then the count.
        """
        env = self.env()
        jobid = "https://localhost:9000/CREAM-log-test"
        reg = subprocess.run(
            ["glite-lb-job_reg", "-j", jobid, "-s", "CREAMExecutor", "-c"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(reg.returncode, 0, reg.stderr)
        log = subprocess.run(
            ["glite-lb-job_log", "-x", self.svc.serve_path, jobid],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(log.returncode, 0, log.stderr)
        first, blank, *_ = log.stdout.split("\n")
        self.assertTrue(first.startswith("DATE=") and first.endswith(" "), first)
        self.assertIn(" DG.PRIORITY=8 ", first)
        self.assertEqual(blank, "")
        self.assertTrue(log.stdout.endswith("\nFound 1 events\n"), log.stdout)
