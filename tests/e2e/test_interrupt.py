# -*- test-case-name: tests.e2e.test_interrupt -*-
"""
End-to-end: C{lbtwist} commands stopped by Ctrl-C (SIGINT) or SIGTERM while they
wait for a peer that does not answer exit with 128 + the signal and print no
traceback; a closed pipe ends a command quietly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from datetime import UTC, datetime

from lbtwist.security.devcerts import make_dev_pki
from tests.e2e.harness import LBTWIST, E2ECase

#: Seconds to wait for a command to reach its peer, or to end after a signal.
TIMEOUT = 20.0


class SilentServer:
    """
    Accepts connections (TCP on loopback, or a Unix socket) and never answers.

    @ivar accepted: set once a connection was accepted.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.port = int(self.sock.getsockname()[1])
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(path)
        self.sock.listen(5)
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                self.accepted.set()
        except OSError:
            pass

    def close(self) -> None:
        # shutdown() wakes the accept() of the thread; close() alone may not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.conns:
            conn.close()
        self.thread.join(5)


def _default_sigint() -> None:
    """
    In the child before C{exec}: SIGINT back to its default, so that Python turns it
    into C{KeyboardInterrupt} as it does for a command started from a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class InterruptTests(E2ECase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("GLITE_WMS_JOBID", "GLITE_WMS_SEQUENCE_CODE", "GLITE_WMS_LBPROXY_STORE_SOCK"):
            env.pop(name, None)
        env.update(extra)
        return env

    def interrupted(
        self, args: list[str], server: SilentServer, env: dict[str, str], signum: int
    ) -> tuple[int, str, str]:
        """
        Start C{lbtwist ARGS}, wait until it reached C{server}, send C{signum}.

        @return: the exit status, stdout and stderr.
        """
        process = subprocess.Popen(
            [*LBTWIST, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell starting a job in the background (CI under nohup, say) ignores
            # SIGINT in it, and children inherit that; a user's terminal does not.
            preexec_fn=_default_sigint,
        )
        try:
            self.assertTrue(server.accepted.wait(TIMEOUT), "the command never connected")
            # Past its connect: it waits for the answer now.
            server.accepted.wait(0.3)
            process.send_signal(signum)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return process.returncode, out, err

    def test_query_to_silent_server(self) -> None:
        """
        C{lbtwist status} and C{lbtwist log} over HTTPS to a server that accepts
        and never answers: Ctrl-C is 130, SIGTERM 143, nothing on stderr.
        """
        pki = make_dev_pki(
            os.path.join(self.base, "pki"), now=datetime.now(UTC), hostnames=("localhost",)
        )
        env = self.env(X509_USER_PROXY=str(pki.user_proxy), X509_CERT_DIR=str(pki.ca_dir))
        for command, signum, expected in (
            ("status", signal.SIGINT, 130),
            ("log", signal.SIGINT, 130),
            ("status", signal.SIGTERM, 143),
        ):
            server = SilentServer()
            try:
                url = f"https://localhost:{server.port}/CREAM123456789"
                code, out, err = self.interrupted([command, url], server, env, signum)
            finally:
                server.close()
            self.assertEqual((code, out, err), (expected, "", ""), (command, signum))

    def test_producer_to_silent_socket(self) -> None:
        """
        C{lbtwist logevent} to a local socket that never answers: Ctrl-C is 130 and
        one line, no traceback.
        """
        short = tempfile.mkdtemp(prefix="lbtwist-int-")  # a Unix socket path is short
        self.addCleanup(shutil.rmtree, short, True)
        path = os.path.join(short, "sock")
        server = SilentServer(path)
        self.addCleanup(server.close)
        args = [
            "logevent",
            "-s",
            "LRMS",
            "-e",
            "Running",
            "-j",
            "https://localhost:9000/e2eInterrupt1",
            "-c",
            "UI=000000:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000",
            "--socket",
            path,
            "--node",
            "wn1.example.org",
        ]
        code, out, err = self.interrupted(args, server, self.env(), signal.SIGINT)
        self.assertEqual((code, out), (130, ""), err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(err, "lbtwist: interrupted\n")

    def test_closed_pipe(self) -> None:
        """
        A reader that goes away after one line (C{| head -1}): no traceback, nothing
        on stderr.
        """
        result = subprocess.run(
            f"{LBTWIST[0]} replay --example | head -1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=self.env(),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(result.stdout.splitlines()), 1)
        self.assertEqual(result.stderr, "")
