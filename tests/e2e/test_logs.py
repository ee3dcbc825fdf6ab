"""
End-to-end: a proxy flooded with rejected events keeps its log within the caps.

Two real C{twistd -n lbproxy --logfile X} processes (no extra logging flags for
twistd), each sent 3 MiB of junk lines on the intake socket: with the default
warning limit the log gets a handful of lines; with the limit lifted, the log
file is rotated at C{--log-max-size} and only C{--log-max-files} rotated files
are kept.
"""

from __future__ import annotations

import os
import tempfile

from tests.e2e import harness
from tests.e2e.harness import E2ECase

#: Junk lines sent (about 3 MiB), in chunks whose answers are read before the next.
JUNK_LINES = 12_000
CHUNK = 500


def junk(i: int) -> bytes:
    return f'DATE=junk{i} DG.JUNK="{"x" * 240}"\n'.encode()


class FloodTests(E2ECase):
    def service(self, *args: str) -> harness.LBService:
        svc = harness.LBService(tempfile.mkdtemp(prefix="lbtwist-e2e-logs-"), args)
        self.addCleanup(svc.cleanup)
        svc.start()
        return svc

    def flood(self, svc: harness.LBService) -> int:
        """
        Send the junk; return the number of error answers read.
        """
        sock = harness.connect(svc.socket_path, timeout=30)
        answers = 0
        try:
            reader = sock.makefile("rb")
            for start in range(0, JUNK_LINES, CHUNK):
                sock.sendall(b"".join(junk(i) for i in range(start, start + CHUNK)))
                for _ in range(CHUNK):
                    line = reader.readline()
                    self.assertTrue(line.endswith(b"\n"), "connection closed")
                    self.assertFalse(line.startswith(b"0"), line)
                    answers += 1
        finally:
            sock.close()
        return answers

    def log_files(self, svc: harness.LBService) -> dict[str, int]:
        name = os.path.basename(svc.logfile)
        return {
            n: os.path.getsize(os.path.join(svc.base, n))
            for n in os.listdir(svc.base)
            if n == name or n.startswith(name + ".")
        }

    def test_warnings_rate_limited(self) -> None:
        """
        With the defaults, 12,000 rejected events give at most 10 warning lines,
        the proxy keeps serving, and one summary line counts the others.
        """
        svc = self.service()
        self.assertEqual(self.flood(svc), JUNK_LINES)
        text = svc.log_text()
        rejected = [line for line in text.splitlines() if "rejected:" in line]
        self.assertGreaterEqual(len(rejected), 1, text[-3000:])
        self.assertLessEqual(len(rejected), 10, text[-3000:])
        self.assertLess(sum(self.log_files(svc).values()), 100_000)
        self.assertTrue(svc.running)
        # Stopping logs the count of the suppressed ones.
        svc.stop()
        summary = f"{JUNK_LINES - len(rejected)} more warnings like 'intake event from"
        self.assertIn(summary, svc.log_text())

    def test_rotation_capped(self) -> None:
        """
        With the warning limit lifted the same flood writes megabytes of warnings,
        but the log stays rotated at 20 kB with two rotated files kept.
        """
        svc = self.service(
            "--warnings-per-minute", "1000000", "--log-max-size", "20000", "--log-max-files", "2"
        )
        self.assertEqual(self.flood(svc), JUNK_LINES)
        svc.stop()
        files = self.log_files(svc)
        name = os.path.basename(svc.logfile)
        self.assertEqual(sorted(files), [name, name + ".1", name + ".2"])
        for size in files.values():
            # Rotated before the write that passes the size: at most one line over.
            self.assertLessEqual(size, 20_000 + 2_000, files)
        self.assertIn("Server Shut Down", svc.log_text())
