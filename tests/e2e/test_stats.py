# -*- test-case-name: tests.e2e.test_stats -*-
"""
End-to-end tests of statistics and traceability on a running C{twistd lbproxy}: three
CREAM jobs with known dates through the logd socket, then C{lbtwist stats -m} against
figures computed by hand, C{lbtwist trace -m} from an LRMS id and from a worker node
and a moment to the user's DN, again after a purge, and C{--state-dir} once stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from tests.e2e import harness
from tests.e2e.harness import T0, USER_DN, cream_direct_trace, cream_jobid
from tests.e2e.test_query import ADMIN, GridServiceCase

S = 1_000_000
ALL_DUE = ["-a", "0", "-n", "0", "-c", "0", "-e", "0", "-o", "0"]


def job_lines(n: int) -> list[str]:
    """
    Job C{n} (0, 1, 2) starts at T0 + n hours, its events (n + 1) minutes apart: it
    enters Running at step 7 and Done at step 9, so Running -> Done takes 2 (n + 1) min.
    """
    start = T0 + n * 3600 * S
    spacing = (n + 1) * 60 * S
    steps = cream_direct_trace(cream_jobid(n + 1), start)
    return [attrs.evolve(step, date=start + i * spacing).line for i, step in enumerate(steps)]


def iso(us: int) -> str:
    return str(us // S)


class StatsTraceServiceTests(GridServiceCase):
    def setUp(self) -> None:
        self.make_grid("lbtwist-st-")
        self.start_service("--super-user", ADMIN, "--purge-interval", "0")

    def json_of(self, *args: str, proxy: Path | None = None) -> Any:
        result = self.lbtwist(*args, "--json", proxy=proxy)
        self.assertEqual(result.returncode, 0, result.stderr + self.svc.log_text()[-2000:])
        return json.loads(result.stdout)

    def test_statsAndTrace(self) -> None:
        with harness.connect(self.svc.socket_path) as sock:
            for n in range(3):
                for line in job_lines(n):
                    sock.sendall(harness.logd_frame(line))
                    self.assertEqual(harness.logd_read_reply(sock), 0)
        admin = self.pki.proxy("admin")
        server = ["-m", f"localhost:{self.port}"]
        day = ["--from", iso(T0), "--to", iso(T0 + 86_400 * S)]

        # Running entries at T0 + 7, 1 h + 14, 2 h + 21 minutes: one in each hour.
        rate = self.json_of("stats", *server, "-s", "Running", *day, "--step", "3600", proxy=admin)
        self.assertEqual(rate["count"], 3)
        self.assertEqual(rate["buckets"][:4], [1, 1, 1, 0])
        self.assertAlmostEqual(rate["rate"], 3 / 86_400)
        # Running -> Done: 2, 4 and 6 minutes.
        durations = self.json_of(
            "stats", *server, "-s", "Running", "--to-state", "Done", *day, proxy=admin
        )
        self.assertEqual(
            [durations[k] for k in ("count", "min", "mean", "median", "max")],
            [3, 120.0, 240.0, 240.0, 360.0],
        )
        text = self.lbtwist(
            "stats", *server, "-s", "Running", "--to-state", "Done", *day, proxy=admin
        )
        self.assertIn("median 240s", text.stdout)

        # From the batch system's id, and from the node at a moment job 2 ran on it.
        lrms = "CREAM000000002.pbs"
        running_2 = T0 + 3600 * S + 7 * 120 * S
        for_node = ["--node", "wn1.example.org", "--at", iso(running_2 + 60 * S)]
        [job] = self.json_of("trace", *server, "--lrms-id", lrms, proxy=admin)["jobs"]
        self.assertEqual((job["jobid"], job["owner"]), (cream_jobid(2), USER_DN))
        self.assertEqual(job["worker_node"], "wn1.example.org")
        self.assertIn("CREAMExecutor", job["sources"])
        [job] = self.json_of("trace", *server, *for_node, proxy=admin)["jobs"]
        self.assertEqual((job["jobid"], job["owner"]), (cream_jobid(2), USER_DN))
        text = self.lbtwist("trace", *server, "--lrms-id", lrms, proxy=admin)
        self.assertIn(f"owner: {USER_DN}", text.stdout)

        # After a purge: still found, from the zombies' trace records.
        purge = self.lbtwist("purge", *server, *ALL_DUE, proxy=admin)
        self.assertEqual(purge.returncode, 0, purge.stderr)
        [job] = self.json_of("trace", *server, *for_node, proxy=admin)["jobs"]
        self.assertEqual(
            (job["jobid"], job["owner"], job["purged"]), (cream_jobid(2), USER_DN, True)
        )
        self.assertIn("Running", job["entered"])

        # Offline, the service stopped.
        self.svc.stop()
        local = ["--state-dir", self.svc.state_dir]
        [job] = self.json_of("trace", *local, "--lrms-id", lrms)["jobs"]
        self.assertEqual((job["owner"], job["purged"]), (USER_DN, True))
        durations = self.json_of("stats", *local, "-s", "Running", "--to-state", "Done", *day)
        self.assertEqual(durations["median"], 240.0)
