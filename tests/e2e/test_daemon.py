"""
End-to-end: C{twistd lbproxy} run as a daemon (no C{-n}), as an init script starts it.

twistd forks after building the services; threads and SQLite connections made before the fork
do not survive it, so this checks that the store comes up in the daemon and that SIGTERM stops
it cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.e2e.harness import E2ECase, parse_status_text, run_lbtwist

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def _wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


class DaemonTests(E2ECase):
    def test_daemon_stores_and_stops(self) -> None:
        """
        A daemonized proxy answers producers, keeps the job's state, and exits on SIGTERM,
        removing its pid file.
        """
        base = tempfile.mkdtemp(prefix="lbtwist-e2e-daemon-")
        self.addCleanup(shutil.rmtree, base, True)
        state = os.path.join(base, "state")
        pidfile = os.path.join(base, "twistd.pid")
        logfile = os.path.join(base, "twistd.log")
        result = subprocess.run(
            [
                TWISTD,
                f"--pidfile={pidfile}",
                f"--logfile={logfile}",
                "lbproxy",
                "--state-dir",
                state,
                "--query",
                "tcp:0:interface=127.0.0.1",
            ],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(_wait_for(lambda: os.path.exists(pidfile)), "no pid file")
        with open(pidfile) as f:
            pid = int(f.read().strip())

        def log() -> str:
            with open(logfile) as f:
                return f.read()

        def cleanup() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        self.addCleanup(cleanup)
        sock = os.path.join(state, "events.sock")
        self.assertTrue(_wait_for(lambda: os.path.exists(sock)), log())

        jobid = "https://localhost:9000/CREAM000000042"
        env = {"GLITE_WMS_LBPROXY_STORE_SOCK": sock}
        reg = run_lbtwist(["job-reg", "-c", "-j", jobid], env=env, timeout=20)
        self.assertEqual(reg.returncode, 0, reg.stderr + log())
        ev = run_lbtwist(
            ["logevent", "-j", jobid, "-s", "CREAMExecutor", "-e", "CREAMStatus",
             "--new_state=Idle", "--result=DONE"],
            env=env,
            timeout=20,
        )  # fmt: skip
        self.assertEqual(ev.returncode, 0, ev.stderr + log())
        status = run_lbtwist(["status", "--state-dir", state, jobid])
        self.assertEqual(status.returncode, 0, status.stderr)
        fields = parse_status_text(status.stdout)
        self.assertEqual((fields["state"], fields["cream_state"]), ("Scheduled", "Idle"))

        os.kill(pid, signal.SIGTERM)
        self.assertTrue(_wait_for(lambda: not os.path.exists(pidfile)), log())
        self.assertIn("Server Shut Down", log())
