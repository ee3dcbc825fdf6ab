# -*- test-case-name: tests.e2e.test_startup -*-
"""
End-to-end: each start-up mistake of C{twistd lbproxy} is one clear line on stderr naming
the option and the fix, a non-zero exit status and no traceback, in the foreground
(C{-n}) and as a daemon; a good start logs one summary line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime

from twisted.trial.unittest import SkipTest

from lbtwist import __version__
from lbtwist.security.devcerts import make_dev_pki
from tests.e2e.harness import LBTWIST, TWISTD, E2ECase, LBService, free_port

#: Seconds a failing start may take (the dev PKI is not made before most checks).
TIMEOUT = 30.0


def _summary(service: LBService, timeout: float = 15.0) -> list[str]:
    """
    The summary lines of C{service}'s log, waiting for the first (it follows the listeners).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in service.log_text().splitlines() if "lbproxy started:" in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class StartupErrorTests(E2ECase):
    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="lbtwist-startup-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.state = os.path.join(self.base, "state")

    def twistd(
        self, *args: str, daemon: bool = False, state: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        head = [TWISTD, "--pidfile=", f"--logfile={os.path.join(self.base, 'log')}"]
        if not daemon:
            head.insert(1, "-n")
        cmd = [
            *head,
            "lbproxy",
            "--state-dir",
            state or self.state,
            "--events",
            f"unix:{os.path.join(self.base, 'ev.sock')}",
            "--serve",
            f"unix:{os.path.join(self.base, 'sv.sock')}",
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
        )

    def assertOneLine(self, result: subprocess.CompletedProcess[str], *words: str) -> str:
        """
        Exit status non-zero, nothing but one C{lbtwist: error:} line on stderr (and no
        usage text on stdout), the line naming C{words}.
        """
        self.assertNotEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("lbtwist: error: "), lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertNotIn("Usage:", result.stdout)
        for word in words:
            self.assertIn(word, lines[0])
        return lines[0]

    def test_query_port_number(self) -> None:
        """
        C{--query 9002} names the option and suggests C{tcp:9002}.
        """
        self.assertOneLine(self.twistd("--query", "9002"), "--query 9002", "tcp:9002")

    def test_config_error_without_usage(self) -> None:
        """
        A bad value and an unknown option: one line, not twistd's usage text first.
        """
        self.assertOneLine(self.twistd("--crl", "maybe"), "--crl", "--help")
        self.assertOneLine(self.twistd("--querry", "tcp:1"), "--querry")

    def test_state_dir_is_a_file(self) -> None:
        """
        A file where the state directory goes, and a state directory under a file.
        """
        path = os.path.join(self.base, "file")
        open(path, "w").close()
        self.assertOneLine(self.twistd(state=path), "--state-dir", "file is in the way")
        self.assertOneLine(self.twistd(state=os.path.join(path, "x")), "--state-dir", "create")

    def test_port_in_use(self) -> None:
        """
        A query port in use, in the foreground and as a daemon.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        query = f"tcp:{port}:interface=127.0.0.1"
        for daemon in (False, True):
            self.assertOneLine(
                self.twistd("--query", query, daemon=daemon), "--query", "in use", "another port"
            )

    def test_missing_certificate(self) -> None:
        """
        A host certificate that does not exist.
        """
        missing = os.path.join(self.base, "nope.pem")
        self.assertOneLine(self.twistd("--cert", missing, "--key", missing), "--cert", "--key")

    def test_mismatched_key(self) -> None:
        """
        A host certificate with another certificate's key.
        """
        pki = make_dev_pki(os.path.join(self.base, "pki"), now=datetime.now(UTC))
        result = self.twistd(
            "--cert",
            str(pki.host_cert),
            "--key",
            str(pki.user_key),
            "--ca-dir",
            str(pki.ca_dir),
            "--query",
            f"tcp:{free_port()}:interface=127.0.0.1",
        )
        self.assertOneLine(result, "--cert", "its own key")

    def test_no_ca_certificates(self) -> None:
        """
        An empty CA directory is refused unless C{--allow-no-ca} says so.
        """
        empty = os.path.join(self.base, "cas")
        os.mkdir(empty)
        query = f"tcp:{free_port()}:interface=127.0.0.1"
        self.assertOneLine(
            self.twistd("--ca-dir", empty, "--query", query), "--ca-dir", "--allow-no-ca"
        )
        service = LBService(
            os.path.join(self.base, "allowed"), ["--ca-dir", empty, "--allow-no-ca"]
        )
        self.addCleanup(service.cleanup)
        service.start()
        summary = _summary(service)
        self.assertEqual(len(summary), 1, service.log_text())
        self.assertIn("0 CAs and 0 CRLs", summary[0])


class StartupSummaryTests(E2ECase):
    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="lbtwist-startup-")
        self.addCleanup(shutil.rmtree, self.base, True)

    def test_summary_and_second_instance(self) -> None:
        """
        A good start logs one summary line (and "loaded ... CA certificates" not at all);
        a second instance on the same state directory is refused with one line.
        """
        service = LBService(self.base)
        self.addCleanup(service.cleanup)
        service.start()
        summaries = _summary(service)
        text = service.log_text()
        self.assertEqual(len(summaries), 1, text)
        for part in (
            f"lbtwist {__version__} lbproxy",
            service.state_dir,
            "0 jobs, 0 events, relay backlog 0",
            "CN=localhost (expires ",
            "1 CAs and 1 CRLs",
            "query=tcp:",
        ):
            self.assertIn(part, summaries[0])
        self.assertNotIn("CA certificates", text)
        second = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "lbproxy", "--state-dir", service.state_dir],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        self.assertNotEqual(second.returncode, 0)
        self.assertEqual(len(second.stderr.splitlines()), 1, second.stderr)
        self.assertIn("another lbtwist", second.stderr)
        self.assertIn("--state-dir", second.stderr)

    def test_version(self) -> None:
        """
        C{twistd lbproxy --version} and C{lbtwist --version} print lbtwist's version.
        """
        out = subprocess.run(
            [TWISTD, "lbproxy", "--version"], capture_output=True, text=True, timeout=TIMEOUT
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"lbtwist {__version__}", out.stdout)
        out = subprocess.run(
            [*LBTWIST, "--version"], capture_output=True, text=True, timeout=TIMEOUT
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"lbtwist {__version__}", out.stdout)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PackagingTests(E2ECase):
    # The wheel's installed files: tests.e2e.test_walkthrough (built and installed once).

    def test_systemd_units(self) -> None:
        """
        Each role's unit runs twistd in the foreground without a pid file on its own
        configuration, as a dedicated user, with state and log directories and a
        descriptor limit.
        """
        for role in ("lbproxy", "lbserver"):
            with open(os.path.join(ROOT, "etc", "systemd", f"lbtwist-{role}.service")) as f:
                text = f.read()
            (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
            self.assertIn("twistd --nodaemon --pidfile= ", exec_start)
            self.assertIn(f" {role} --config /etc/lbtwist/{role}.conf", exec_start)
            for key in ("User=lbtwist", "StateDirectory=", "LogsDirectory=", "LimitNOFILE="):
                self.assertIn(key, text)


class DevCredentialsTests(E2ECase):
    def test_grid_proxy_init_takes_dev_user(self) -> None:
        """
        The development user's key is RSA: C{grid-proxy-init} makes a proxy from it.
        """
        if shutil.which("grid-proxy-init") is None:
            raise SkipTest("grid-proxy-init is not installed")
        base = tempfile.mkdtemp(prefix="lbtwist-devcerts-")
        self.addCleanup(shutil.rmtree, base, True)
        pki = make_dev_pki(os.path.join(base, "pki"), now=datetime.now(UTC))
        out = os.path.join(base, "x509up")
        result = subprocess.run(
            [
                "grid-proxy-init",
                "-cert",
                str(pki.user_cert),
                "-key",
                str(pki.user_key),
                "-certdir",
                str(pki.ca_dir),
                "-bits",
                "1024",
                "-out",
                out,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertTrue(os.path.getsize(out) > 0)
