# -*- test-case-name: tests.e2e.test_purge -*-
"""
End-to-end tests of purging a running C{twistd lbproxy}: C{lbtwist purge -m} with grid
proxies (dry run, refusal, the real purge with its server-side dump), then 410 and the
refused re-registration; the Job Provenance maildirs as a JP importer reads them; and
C{lbtwist purge --state-dir}, refused while the service holds the store.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.e2e.gridtools import curl, curl_status
from tests.e2e.test_query import ADMIN, ALICE, GridServiceCase

#: Every state's grace zero: whatever is registered is due at once.
ALL_DUE = ["-a", "0", "-n", "0", "-c", "0", "-e", "0", "-o", "0"]


def read_maildir(root: Path) -> list[str]:
    """
    What L&B's JP importer does: new/ -> work/, read, then done (deleted).
    """
    out = []
    for name in sorted(os.listdir(root / "new")):
        os.rename(root / "new" / name, root / "work" / name)
        out.append((root / "work" / name).read_text())
        os.unlink(root / "work" / name)
    return out


class PurgeServiceTests(GridServiceCase):
    def setUp(self) -> None:
        self.make_grid("lbtwist-p-")
        self.jpreg = self.base / "jpreg"
        self.jpdump = self.base / "jpdump"
        self.start_service(
            "--super-user", ADMIN,
            "--purge-interval", "0",
            "--jpreg-dir", str(self.jpreg),
            "--jpreg-interval", "0.1",
            "--jpdump-dir", str(self.jpdump),
        )  # fmt: skip
        # A job of this proxy (localhost:9000 is one of its own endpoints): not relayed.
        self.jobid = "https://localhost:9000/e2ePurge00000000000001"

    def register(self, jobid: str | None = None) -> Any:
        return self.lbtwist(
            "job-reg", "-X", self.svc.socket_path, "-j", jobid or self.jobid, "-U", ALICE
        )

    def status_code(self, proxy: Path) -> tuple[int, str]:
        url = f"https://localhost:{self.port}/{self.jobid.rsplit('/', 1)[1]}"
        return curl_status(curl(url, proxy=proxy, ca_dir=self.pki.ca_dir))

    def wait_for(self, path: Path, count: int) -> list[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if path.is_dir() and len(os.listdir(path)) >= count:
                return sorted(os.listdir(path))
            time.sleep(0.05)
        self.fail(f"{path}: fewer than {count} files\n{self.svc.log_text()[-3000:]}")

    def test_purgeThenGoneAndRefused(self) -> None:
        """
        A dry run lists and changes nothing; a user without the right is refused; the
        purge takes the job (dumped with -s), its status answers 410 and a registration
        of its id is refused EEXIST. The JP maildirs hold what L&B's exporters wrote.
        C{lbtwist purge --state-dir} is refused while the service runs, works once it
        is stopped. (One service for all: each start costs seconds.)
        """
        result = self.register()
        self.assertEqual(result.returncode, 0, result.stderr)
        admin, alice = self.pki.proxy("admin"), self.pki.proxy("alice")
        server = f"localhost:{self.port}"

        # The registration's JP message, written after the commit.
        self.wait_for(self.jpreg / "new", 1)
        self.assertEqual(read_maildir(self.jpreg), [f"{self.jobid}\n{ALICE}"])

        dry = self.lbtwist("purge", "-m", server, "-l", *ALL_DUE, proxy=admin)
        self.assertEqual(dry.returncode, 0, dry.stderr)
        self.assertEqual(dry.stdout, self.jobid + "\n")
        self.assertIn("1 jobs would be purged", dry.stderr)
        self.assertEqual(self.status_code(alice)[0], 200)

        refused = self.lbtwist("purge", "-m", server, *ALL_DUE, proxy=alice)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("403", refused.stderr)
        self.assertEqual(self.status_code(alice)[0], 200)

        done = self.lbtwist("purge", "-m", server, "-s", "--json", *ALL_DUE, proxy=admin)
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual((report["count"], report["jobs"]), (1, [self.jobid]))
        dump = Path(report["server_file"])
        self.assertTrue(dump.name.startswith("purge_"))
        text = dump.read_text()
        self.assertTrue(text.startswith("DG.ARRIVED="), text)
        self.assertIn(f'DG.JOBID="{self.jobid}"', text)
        self.assertIn('DG.EVNT="RegJob"', text)

        code, body = self.status_code(alice)
        self.assertEqual(code, 410, body)
        self.assertIn("was purged", json.loads(body)["message"])
        again = self.register()
        self.assertNotEqual(again.returncode, 0, again.stdout)
        self.assertIn("17", again.stderr)

        # The dump export: one message per purged job naming its dump file.
        [message] = read_maildir(self.jpdump)
        first, second = message.split("\n")
        self.assertEqual(first, f"jobid  {self.jobid}")
        self.assertTrue(second.startswith("file   "), second)
        lines = Path(second[len("file   ") :]).read_text().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("DG.ARRIVED="))
        self.assertIn('DG.EVNT="RegJob"', lines[0])

        # Offline: refused while the service runs; once stopped, a dry run lists and
        # keeps, the purge takes the job.
        self.jobid = "https://localhost:9000/e2ePurge00000000000002"
        self.assertEqual(self.register().returncode, 0)
        busy = self.lbtwist("purge", "--state-dir", self.svc.state_dir, *ALL_DUE)
        self.assertEqual(busy.returncode, 1)
        self.assertIn("ERR 16 ", busy.stderr)
        self.assertIn("in use by process", busy.stderr)
        self.svc.stop()
        dry = self.lbtwist("purge", "--state-dir", self.svc.state_dir, "-l", *ALL_DUE)
        self.assertEqual((dry.returncode, dry.stdout), (0, self.jobid + "\n"), dry.stderr)
        status = self.lbtwist("status", "--state-dir", self.svc.state_dir, self.jobid)
        self.assertEqual(status.returncode, 0, status.stderr)
        done = self.lbtwist("purge", "--state-dir", self.svc.state_dir, *ALL_DUE)
        self.assertEqual((done.returncode, done.stdout), (0, self.jobid + "\n"), done.stderr)
        status = self.lbtwist("status", "--state-dir", self.svc.state_dir, self.jobid)
        self.assertEqual(status.returncode, 1)
