# -*- test-case-name: tests.e2e.test_notify -*-
"""
End-to-end tests of notifications: a real C{twistd -n lbproxy} on its
development PKI, CREAM traces logged over its socket, and C{lbtwist notify}
(C{new}, C{receive}, C{list}, C{drop}, ...) as a user runs them.

C{LBTWIST_NOTIFY_KILL_LOOPS} (default 1) repeats the C{kill -9} test that many
times (C{LBTWIST_NOTIFY_KILL_LOOPS=10 trial tests.e2e.test_notify}).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import SkipTest

from lbtwist.security.devcerts import USER_NAME
from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.harness import E2ECase, LBService, cream_direct_trace, free_port, ulm_line

DEV_DN = slash_dn(USER_NAME)
#: Seconds to wait for what a test expects to see.
WAIT = 30.0


def trace_lines(n: int, start: int, ending: str = "ok") -> tuple[str, list[str], list[str]]:
    """
    Job C{n}'s CREAM trace, owned by the development user.

    @return: the job id, its ULM lines and the state after each.
    """
    jobid, lines, pairs = trace_pairs(n, start, ending)
    return jobid, lines, [state for state, _ in pairs]


def trace_pairs(
    n: int, start: int, ending: str = "ok"
) -> tuple[str, list[str], list[tuple[str, str]]]:
    """
    As L{trace_lines}, with the (state, CREAM state) after each event.
    """
    jobid = f"https://localhost:9000/CREAM{n:09d}"
    steps = cream_direct_trace(jobid, start, ending)
    lines = [
        ulm_line(s.event, jobid=s.jobid, date=s.date, source=s.source, seqcode=s.seqcode,
                 user=DEV_DN, **dict(s.fields))
        for s in steps
    ]  # fmt: skip
    return jobid, lines, [(s.state, s.cream_state) for s in steps]


def changes(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """
    The states a state-changes-only (C{-c}) registration reports: one
    message per change of the job's state or of its CREAM state.
    """
    out: list[str] = []
    last: tuple[str, str] | None = None
    for pair in pairs:
        if pair != last:
            out.append(pair[0])
            last = pair
    return out


class Receiver:
    """
    C{lbtwist notify receive} running in the background, its output in files.
    """

    def __init__(self, base: Path, env: dict[str, str], args: Sequence[str]) -> None:
        self.base = base
        self.n = len(list(base.glob("recv.*.out")))
        self.out_path = base / f"recv.{self.n}.out"
        self.err_path = base / f"recv.{self.n}.err"
        full = dict(os.environ)
        full.update(env)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [*harness.LBTWIST, "notify", "receive", *args],
                env=full,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace")

    def messages(self) -> list[tuple[str, str]]:
        """
        (job id, state) of every message printed so far.
        """
        found = []
        for line in self.output().splitlines():
            if line.startswith("\t") or not line.strip():
                continue
            jobid, _, state = line.partition("\t")
            found.append((jobid, state))
        return found

    def wait_for(self, count: int, timeout: float = WAIT) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count or self.process.poll() is not None:
                return got
            time.sleep(0.05)
        return self.messages()

    def interrupt(self) -> int:
        """
        Ctrl-C, and the exit status.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class NotifyTestCase(E2ECase):
    """
    A proxy on its development PKI, the user's environment for the CLI.
    """

    extra_args: Sequence[str] = ()

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="lbtwist-notify-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.port = free_port()
        self.svc = LBService(
            str(self.base / "svc"),
            ["--query", f"tcp:{self.port}:interface=127.0.0.1", *self.extra_args],
        )
        self.addCleanup(self.svc.cleanup)
        self.svc.start()
        self.wait_for_port()
        devcerts = Path(self.svc.state_dir) / "devcerts"
        self.home = self.base / "home"
        self.home.mkdir()
        self.env = {
            "X509_USER_PROXY": str(devcerts / "user" / "x509up"),
            "X509_CERT_DIR": str(devcerts / "certificates"),
            "GLITE_WMS_NOTIF_SERVER": f"localhost:{self.port}",
            "GLITE_WMS_QUERY_SERVER": "",
            "EDG_WL_QUERY_SERVER": "",
            "HOME": str(self.home),
        }
        self.user2 = [
            "--cert", str(devcerts / "user2" / "usercert.pem"),
            "--key", str(devcerts / "user2" / "userkey.pem"),
        ]  # fmt: skip
        self.receivers: list[Receiver] = []
        self.addCleanup(self.stop_receivers)
        probe = self.notify("list")
        if probe.returncode != 0 and "404" in probe.stderr:
            # A service without the notification routes (this branch alone).
            raise SkipTest(f"the service answers no notifications: {probe.stderr.strip()}")

    def stop_receivers(self) -> None:
        for r in self.receivers:
            r.cleanup()

    def wait_for_port(self) -> None:
        harness.wait_for_port(self.port, self.svc)

    def notify(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return harness.run_lbtwist(["notify", *args], env={**self.env, **(env or {})})

    def new(self, *args: str) -> str:
        result = self.notify("new", *args)
        self.assertEqual(result.returncode, 0, result.stderr + self.svc.log_text()[-3000:])
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 2, result.stdout)
        self.assertTrue(lines[0].startswith("notification ID: https://"), lines[0])
        self.assertRegex(lines[1], r"^valid: '\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC' \(\d+\)$")
        return lines[0].split(": ", 1)[1]

    def receive(self, nid: str, *args: str, env: dict[str, str] | None = None) -> Receiver:
        r = Receiver(self.base, {**self.env, **(env or {})}, [*args, nid])
        self.receivers.append(r)
        return r

    def log(self, lines: Sequence[str]) -> None:
        """
        Log C{lines} over the intake socket, each acknowledged (retried
        across a restart of the service: a resent event is a duplicate).
        """
        sock: socket.socket | None = None
        for line in lines:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    if sock is None:
                        sock = harness.connect(self.svc.socket_path)
                    sock.sendall(line.encode() + b"\n")
                    answer = harness.read_line(sock)
                    if answer.startswith(b"OK"):
                        break
                    raise OSError(f"answer {answer!r}")
                except OSError:
                    if sock is not None:
                        sock.close()
                        sock = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        if sock is not None:
            sock.close()


class ReceiveTests(NotifyTestCase):
    """
    Register, log, receive: in order, nothing missed across receivers, all
    of it for a client that was never there; Ctrl-C and a closed pipe quiet.
    """

    def test_in_order_missed_ones_and_absent_client(self) -> None:
        """
        C{new -j JOB -c}, C{receive} in the background: each state change as
        it is logged, in order, as L&B prints it; stopped (Ctrl-C) while more
        events are logged, a new receiver prints exactly the missed ones. A
        second registration (C{-O}) read by nobody meanwhile: its first
        receiver prints one message per event of both jobs, in order.
        """
        jobid, lines, pairs = trace_pairs(1, harness.T0)
        states = [state for state, _ in pairs]
        other, other_lines, other_states = trace_lines(2, harness.T0 + 10_000_000)
        nid = self.new("-j", jobid, "-c")
        absent = self.new("-O")
        first = self.receive(nid, "-i", "60")
        cut = 7  # Submitted, Waiting, Scheduled so far
        self.log(lines[:cut])
        expected = [(jobid, s) for s in changes(pairs)]
        got = first.wait_for(3)
        self.assertEqual(got, expected[:3], first.errors() + self.svc.log_text()[-3000:])
        self.assertIn(f"\t{DEV_DN}\n", first.output())
        self.assertEqual(first.interrupt(), 130)
        self.assertNotIn("Traceback", first.errors())
        self.assertIn("notification is valid until: '", first.errors())
        # Logged while nobody listens.
        self.log(lines[cut:] + other_lines)
        second = self.receive(nid, "-i", "60", "-f", "state,cream_state")
        got = second.wait_for(len(expected) - 3)
        self.assertEqual(got, expected[3:], second.errors())
        self.assertIn("\tDone\tDone-ok\n", second.output())
        # A closed pipe: no traceback (its own place file: the others stay).
        full = {**os.environ, **self.env}
        piped = subprocess.run(
            f"{harness.LBTWIST[0]} notify receive -i 30 --seq-file {self.base}/pipe.seq "
            f"{absent} | head -n 1",
            shell=True, env=full, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(piped.stdout, f"{jobid}\tSubmitted\n")
        self.assertNotIn("Traceback", piped.stderr)
        # The registration nobody read: everything, per job in order (polled).
        third = self.receive(absent, "-i", "60", "--poll", "--poll-interval", "0.2",
                             "--page-size", "5")  # fmt: skip
        total = len(lines) + len(other_lines)
        got = third.wait_for(total)
        self.assertEqual(len(got), total, third.errors())
        self.assertEqual([s for j, s in got if j == jobid], states)
        self.assertEqual([s for j, s in got if j == other], other_states)
        time.sleep(0.3)
        self.assertEqual(second.messages(), expected[3:])
        self.assertEqual(second.interrupt(), 130)
        self.assertEqual(len(third.messages()), total)
        self.assertEqual(third.interrupt(), 130)


class KillTests(NotifyTestCase):
    """
    C{kill -9} of the service while a receiver reads: after the restart the
    receiver goes on, every notification exactly once.
    """

    def test_kill9_mid_stream_exactly_once(self) -> None:
        loops = int(os.environ.get("LBTWIST_NOTIFY_KILL_LOOPS", "1"))
        nid = self.new("-O")
        r = self.receive(nid, "-i", str(60 * loops + 60))
        expected: list[tuple[str, str]] = []
        n = 100
        for loop in range(loops):
            traces = [trace_lines(n + k, harness.T0 + (n + k) * 10_000_000) for k in range(4)]
            n += 4
            lines = [line for _, ls, _ in traces for line in ls]
            for jobid, _, states in traces:
                expected.extend((jobid, s) for s in states)
            half = len(lines) // 2
            self.log(lines[:half])
            got = r.wait_for(len(expected) - (len(lines) - half))
            self.assertGreater(len(got), 0, r.errors() + self.svc.log_text()[-3000:])
            # Kill while the rest is being logged.
            logger = threading.Thread(target=self.log, args=(lines[half:],))
            logger.start()
            time.sleep(0.05)
            self.svc.kill()
            self.svc.start()
            logger.join(WAIT * 2)
            self.assertFalse(logger.is_alive())
            got = r.wait_for(len(expected))
            time.sleep(0.3)
            got = r.messages()
            self.assertEqual(len(got), len(expected), f"loop {loop}: {r.errors()}")
            for jobid in {j for j, _ in expected}:
                self.assertEqual(
                    [s for j, s in got if j == jobid],
                    [s for j, s in expected if j == jobid],
                    f"loop {loop}, {jobid}",
                )
        self.assertEqual(r.interrupt(), 130)
        self.assertNotIn("Traceback", r.errors())


class RightsTests(NotifyTestCase):
    """
    A registration that expires while its messages wait; a second user
    neither sees nor operates another's registration, and receives nothing
    of jobs they may not read.
    """

    def test_expiry_other_users_and_read_rights(self) -> None:
        jobid, lines, states = trace_lines(6, harness.T0)
        made = time.monotonic()
        expiring = self.new("-j", jobid, "-t", "2")
        nid = self.new("-j", jobid)
        result = self.notify("new", *self.user2, "-j", jobid)
        other_nid = None
        if result.returncode == 0:
            other_nid = result.stdout.splitlines()[0].split(": ", 1)[1]
        else:
            # Refusing the registration outright is as good: nothing can come.
            self.assertRegex(result.stderr, "403|not allowed")
        self.log(lines)
        # The owner's registration gets every event: the control.
        owner = self.receive(nid, "-i", "300")
        self.assertEqual(len(owner.wait_for(len(states))), len(states), owner.errors())
        # Expired (at least 2 s after it was made) with its messages waiting.
        time.sleep(max(0.0, 2.5 - (time.monotonic() - made)))
        late = self.receive(expiring, "-i", "20", "--seq-file", str(self.base / "x.seq"))
        self.assertEqual(late.process.wait(30), 1)
        self.assertEqual(late.messages(), [])
        self.assertRegex(late.errors(), r"expired|no such notification")
        self.assertNotIn("Traceback", late.errors())
        # The other user: not in their list, not operable, not receivable.
        mine = self.notify("list")
        self.assertEqual(mine.returncode, 0, mine.stderr)
        self.assertIn(nid, mine.stdout)
        theirs = self.notify("list", *self.user2)
        self.assertEqual(theirs.returncode, 0, theirs.stderr)
        self.assertNotIn(nid, theirs.stdout)
        for action in (["drop"], ["refresh"], ["change", "--state", "done"]):
            result = self.notify(*action, *self.user2, nid)
            self.assertEqual(result.returncode, 1, (action, result.stdout))
            self.assertIn(f"404 no such notification {nid}", result.stderr)
            self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        r = self.receive(nid, *self.user2, "-i", "20", "--seq-file", str(self.base / "y.seq"))
        self.assertEqual(r.process.wait(30), 1)
        self.assertIn("404 no such notification", r.errors())
        # The other user's own registration for a job they may not read: nothing.
        if other_nid is not None:
            other = self.receive(other_nid, *self.user2, "--seq-file",
                                 str(self.base / "o.seq"), "-i", "2")  # fmt: skip
            other.process.wait(30)
            self.assertEqual(other.messages(), [], other.output())
        # Still the owner's, who may drop it.
        self.assertEqual(owner.interrupt(), 130)
        drop = self.notify("drop", nid)
        self.assertEqual((drop.returncode, drop.stdout), (0, ""), drop.stderr)
        self.assertNotIn(nid, self.notify("list").stdout)
