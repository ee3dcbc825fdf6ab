# -*- test-case-name: tests.unit.test_purge_cli -*-
"""
Tests for L{lbtwist.cli.purge}: C{lbtwist purge --state-dir} (offline) and its options.
"""

from __future__ import annotations

import errno
import io
import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.cli.purge import purge_params
from lbtwist.core.events import parse_event
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from tests import traces

ABORTED = "https://cream-ce01.example.org:9000/CREAM812461379"
#: 2024-03-20: the Cleared job (March 14) is past 3 days, the Aborted one not past 7.
NOW_US = 1_710_892_800 * 1_000_000


class PurgeCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        os.makedirs(self.state)
        store = SQLiteStore(
            os.path.join(self.state, "lbtwist.sqlite"), clock=Clock(), runner=run_now
        )
        for job in (traces.cream_done_ok, traces.cream_aborted):
            store.store([(line, parse_event(line)) for line in job()])
        store.close()

    def lbtwist(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        ctx = CLIContext(env={}, stdout=out, stderr=err, now=lambda: NOW_US)
        code = run(list(argv), ctx)
        return code, out.getvalue(), err.getvalue()

    def test_dryRunListsAndKeeps(self) -> None:
        code, out, err = self.lbtwist("purge", "--state-dir", self.state, "-l")
        self.assertEqual((code, out), (0, traces.DIRECT_JOBID + "\n"))
        self.assertIn("1 jobs would be purged", err)
        code, out, _ = self.lbtwist("status", "--state-dir", self.state, traces.DIRECT_JOBID)
        self.assertEqual(code, 0)
        self.assertIn("Cleared", out)

    def test_purgeThenGone(self) -> None:
        code, out, err = self.lbtwist("purge", "--state-dir", self.state)
        self.assertEqual((code, out), (0, traces.DIRECT_JOBID + "\n"))
        self.assertIn("1 jobs purged", err)
        code, _, err = self.lbtwist("status", "--state-dir", self.state, traces.DIRECT_JOBID)
        self.assertEqual(code, 1)

    def test_graceOptions(self) -> None:
        code, out, err = self.lbtwist(
            "purge", "--state-dir", self.state, "-a", "2d", "-c", "never", "--json"
        )
        self.assertEqual(code, 0)
        report = json.loads(out)
        self.assertEqual(report["jobs"], [ABORTED])
        self.assertIn("aborted=2d", report["rules"])
        self.assertIn("cleared=never", report["rules"])

    def test_serverDump(self) -> None:
        code, _, err = self.lbtwist("purge", "--state-dir", self.state, "-s")
        self.assertEqual(code, 0)
        self.assertIn("server dump: " + os.path.join(self.state, "purge-dumps", "purge_"), err)

    def test_badDuration(self) -> None:
        code, _, err = self.lbtwist("purge", "--state-dir", self.state, "-o", "soon")
        self.assertEqual(code, 1)
        self.assertIn("bad duration", err)

    def test_needsWhere(self) -> None:
        code, _, err = self.lbtwist("purge")
        self.assertEqual(code, 2)
        self.assertIn("--state-dir DIR (offline) or -m HOST:PORT", err)

    def test_refusedWhileServiceRuns(self) -> None:
        running = SQLiteStore(
            os.path.join(self.state, "lbtwist.sqlite"), clock=Clock(), runner=run_now, lock=True
        )
        running.start()
        self.addCleanup(running.close)
        code, _, err = self.lbtwist("purge", "--state-dir", self.state)
        self.assertEqual(code, 1)
        self.assertIn(f"ERR {errno.EBUSY} ", err)
        self.assertIn("in use by process", err)

    def test_remoteParams(self) -> None:
        from lbtwist.cli.main import build_parser

        args = build_parser().parse_args(
            ["purge", "-m", "lb:9000", "-e", "1d", "--delivered", "2h", "-l", "-s"]
        )
        self.assertEqual(
            purge_params(args),
            [("done", "1d"), ("delivered", "2h"), ("dry_run", "1"), ("server_dump", "1")],
        )
