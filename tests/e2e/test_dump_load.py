# -*- test-case-name: tests.e2e.test_dump_load -*-
"""
End to end: the fixture streams logged into a real C{twistd -n lbproxy}, dumped
over HTTPS with an admin's grid proxy (C{lbtwist dump -m}), loaded into a fresh
state directory (C{lbtwist load}): every job's status is the same; an owner's
dump request is refused; C{lbtwist explain} and C{status --at} on the copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests import traces
from tests.e2e import harness
from tests.e2e.harness import run_lbtwist
from tests.e2e.test_query import ADMIN, GridServiceCase
from tests.unit.test_states import fixture_lines

STREAMS = ("perf_simple_avg_events.log", "perf_simple_max_events.log", "perf_dag_avg_events.log")


class DumpLoadTests(GridServiceCase):
    def setUp(self) -> None:
        self.make_grid("lbtwist-dl-")
        self.start_service("--super-user", ADMIN)

    def lbtwist(self, *args: str, proxy: Path | None = None) -> Any:
        env = {"X509_CERT_DIR": str(self.pki.ca_dir), "HOME": str(self.base)}
        env["X509_USER_PROXY"] = str(proxy) if proxy else "/nonexistent/proxy"
        return run_lbtwist(args, env=env)

    def statuses(self, state_dir: str) -> dict[str, Any]:
        result = self.lbtwist("status", "-all", "--json", "--state-dir", state_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        found = {}
        for line in result.stdout.splitlines():
            data = json.loads(line)
            found[data["jobId"]] = data
        return found

    def test_round_trip(self) -> None:
        lines = [
            line
            for n, name in enumerate(STREAMS)
            for line in fixture_lines(name, f"https://localhost:{self.port}/e2eDumpLoad{n:011d}")
        ]
        lines += traces.cream_done_ok() + traces.cream_aborted() + traces.wms_on_cream()
        with harness.connect(self.svc.socket_path) as s:
            for line in lines:
                s.sendall(harness.logd_frame(line))
                self.assertEqual(harness.logd_read_reply(s), 0, line)
        admin = self.pki.proxy("admin")
        got = self.lbtwist("dump", "-m", f"localhost:{self.port}", "--to", "now", proxy=admin)
        self.assertEqual(got.returncode, 0, got.stderr)
        dumped = [x for x in got.stdout.splitlines() if x]
        self.assertGreaterEqual(len(dumped), len(lines))
        local = self.lbtwist("dump", "--state-dir", self.svc.state_dir, "--to", "now")
        self.assertEqual(local.stdout, got.stdout)

        refused = self.lbtwist(
            "dump", "-m", f"localhost:{self.port}", proxy=self.pki.proxy("alice")
        )
        self.assertEqual(refused.returncode, 1)
        self.assertIn("403", refused.stderr)

        dump_file = self.base / "all.dump"
        dump_file.write_text(got.stdout)
        copy = str(self.base / "copy")
        loaded = self.lbtwist("load", str(dump_file), "--state-dir", copy)
        self.assertEqual(loaded.returncode, 0, loaded.stderr)
        self.assertEqual(loaded.stdout, f"stored {len(dumped)}, duplicate 0, refused 0\n")
        original = self.statuses(self.svc.state_dir)
        self.assertEqual(len(original), len(STREAMS) + 3)
        self.assertEqual(self.statuses(copy), original)

        aborted = f"https://localhost:{self.port}/e2eDumpLoad{1:011d}"
        why = self.lbtwist("explain", "--state-dir", copy, aborted)
        self.assertEqual(why.returncode, 0, why.stderr)
        self.assertTrue(why.stdout.startswith(f"{aborted}: Aborted\n"), why.stdout[:200])
        self.assertEqual(why.stdout.count("-> Aborted"), 1)

        # The same over HTTPS from the running service: the admin sees the skew.
        remote = self.lbtwist("explain", aborted, proxy=admin)
        self.assertEqual(remote.returncode, 0, remote.stderr)
        self.assertEqual(remote.stdout, why.stdout)
        first_date = json.loads(
            self.lbtwist("explain", "--json", "--state-dir", copy, aborted).stdout.splitlines()[0]
        )["date"]
        then = self.lbtwist("status", "--at", first_date, "--json", aborted, proxy=admin)
        self.assertEqual(then.returncode, 0, then.stderr)
        local_then = self.lbtwist(
            "status", "--at", first_date, "--json", "--state-dir", copy, aborted
        )
        self.assertEqual(json.loads(then.stdout)["state"], json.loads(local_then.stdout)["state"])
        self.assertNotEqual(json.loads(then.stdout)["state"], "Aborted")
