# -*- test-case-name: tests.e2e.test_producer_retry -*-
"""
End-to-end: producers do not lose events to a stopped or busy proxy, and
C{lbtwist logevent} continues a gLite job's sequence code from the proxy.

The stop test runs C{$LBTWIST_E2E_RETRY_CALLS} (default 20) C{lbtwist logevent}
processes while the proxy is stopped (C{SIGSTOP}) for C{$LBTWIST_E2E_RETRY_STOP}
seconds (default 5), on an intake listening with a backlog of
C{$LBTWIST_E2E_RETRY_BACKLOG} (default 4, so that the backlog overflows; empty:
Twisted's default of 50). The case measured by hand is 80 calls, 40 s, backlog 50.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from lbtwist.client.producer import LBProducer
from tests.e2e import harness
from tests.e2e.harness import E2ECase, LBService, dump_lines, field_map, glite_seqcode, run_lbtwist

CALLS = int(os.environ.get("LBTWIST_E2E_RETRY_CALLS", "20"))
STOP_SECONDS = float(os.environ.get("LBTWIST_E2E_RETRY_STOP", "5"))
BACKLOG = os.environ.get("LBTWIST_E2E_RETRY_BACKLOG", "4")

JOBID = harness.WMS_LB + "/producerRetryJob000000001"

#: Seconds to wait for all the calls to reach the (stopped) proxy.
SETTLE_TIMEOUT = 180.0


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def wait_settled(procs: list[subprocess.Popen[str]], timeout: float) -> float:
    """
    Wait until every process is asleep or gone (blocked on the stopped proxy,
    backing off, or exited) at three looks 0.1 s apart: all of them have
    started and tried to connect.

    @return: the monotonic time they were seen settled.
    """
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        states = {_state(proc.pid) for proc in procs}
        calm = calm + 1 if states <= {"S", "Z", "X"} else 0
        if calm >= 3:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"the calls did not settle within {timeout} s")


class ProducerRetryTests(E2ECase):
    """
    Real C{twistd lbproxy}, real C{lbtwist} processes, real UNIX sockets.
    """

    def start_service(self, backlog: str = "") -> LBService:
        svc = LBService(self.mktemp())
        events = f"unix:{svc.socket_path}:mode=660" + (f":backlog={backlog}" if backlog else "")
        svc.args = ["--events", events]
        self.addCleanup(svc.cleanup)
        # A stopped service cannot be stopped: continue it first in cleanup.
        self.addCleanup(self.cont, svc)
        svc.start()
        return svc

    def cont(self, svc: LBService) -> None:
        if svc.running:
            assert svc.process is not None
            svc.process.send_signal(signal.SIGCONT)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = run_lbtwist(args, env=env)
        if result.returncode != 0:
            self.fail(f"lbtwist {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def register(self, svc: LBService) -> str:
        out = self.cli("job-reg", "-j", JOBID, "-X", svc.socket_path, "-U", harness.USER_DN)
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return values["GLITE_WMS_SEQUENCE_CODE"].strip('"')

    def test_logevent_through_stopped_proxy(self) -> None:
        """
        Every C{logevent} started while the proxy is stopped gets its event
        stored once the proxy continues: none fails, none is lost.
        """
        svc = self.start_service(BACKLOG)
        self.register(svc)
        assert svc.process is not None
        env = {"GLITE_WMS_LBPROXY_STORE_SOCK": svc.socket_path}
        full_env = {**os.environ, **env}
        svc.process.send_signal(signal.SIGSTOP)
        procs = []
        try:
            for i in range(CALLS):
                argv = [*harness.LBTWIST, "logevent", "-j", JOBID, "-s", "Application"]
                argv += ["-e", "UserTag", "-c", glite_seqcode(NS=1, APP=2 * i)]
                argv += ["-U", harness.USER_DN, f"--name=call{i}", f"--value={i}"]
                procs.append(
                    subprocess.Popen(
                        argv,
                        env=full_env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            # Every call has tried the stopped proxy (the box may be slow to start
            # them all), then the stop lasts its full time.
            settled = wait_settled(procs, SETTLE_TIMEOUT)
            time.sleep(max(0.0, STOP_SECONDS - (time.monotonic() - settled)))
        finally:
            svc.process.send_signal(signal.SIGCONT)
        results = [proc.communicate(timeout=120) for proc in procs]
        failed = [
            (i, proc.returncode, err)
            for i, (proc, (out, err)) in enumerate(zip(procs, results, strict=True))
            if proc.returncode != 0
        ]
        self.assertEqual(failed, [])
        printed = {out.strip() for out, err in results}
        # As glite-lb-logevent: logged with APP 2i+1, the code after it printed.
        self.assertEqual(printed, {glite_seqcode(NS=1, APP=2 * i + 2) for i in range(CALLS)})
        stored = [
            field_map(line)
            for line in dump_lines(svc.state_dir)
            if 'DG.EVNT="UserTag"' in line and JOBID in line
        ]
        self.assertEqual(
            sorted(f["DG.SEQCODE"] for f in stored),
            sorted(glite_seqcode(NS=1, APP=2 * i + 1) for i in range(CALLS)),
        )

    def test_sequence_code_from_proxy(self) -> None:
        """
        Without C{-c} and C{$GLITE_WMS_SEQUENCE_CODE}, C{logevent} continues
        from the job's last stored code; a malformed code is refused.
        """
        svc = self.start_service()
        registered = self.register(svc)
        self.assertEqual(registered, glite_seqcode(NS=1))
        env = {"GLITE_WMS_LBPROXY_STORE_SOCK": svc.socket_path, "GLITE_WMS_JOBID": JOBID}
        log = ["logevent", "-s", "LogMonitor", "-e", "Running", "-U", harness.USER_DN]
        # Logged with LM 1, then (asked again) LM 2; each prints the code after it.
        first = self.cli(*log, "--node=wn1", env=env).strip()
        self.assertEqual(first, glite_seqcode(NS=1, LM=2))
        second = self.cli(*log, "--node=wn2", env=env).strip()
        self.assertEqual(second, glite_seqcode(NS=1, LM=3))

        bad = run_lbtwist([*log, "-c", "garbage", "--node=wn3"], env=env)
        self.assertEqual((bad.returncode, bad.stdout), (1, ""))
        self.assertIn("ERR 22 -c: malformed sequence code for a gLite job", bad.stderr)
        unknown = run_lbtwist(
            [*log, "-j", harness.WMS_LB + "/neverRegistered000001", "--node=wn3"], env=env
        )
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("ERR 2 unknown job", unknown.stderr)

        codes = [field_map(line)["DG.SEQCODE"] for line in dump_lines(svc.state_dir)]
        self.assertEqual(codes, [registered, glite_seqcode(NS=1, LM=1), glite_seqcode(NS=1, LM=2)])

    def test_log_many_keeps_the_window(self) -> None:
        """
        5,000 events pipelined on one connection are all stored: the producer
        keeps no more unanswered than the intake takes.
        """
        svc = self.start_service()
        self.register(svc)
        lines = [
            harness.ulm_line(
                "UserTag",
                jobid=JOBID,
                date=harness.T0 + i,
                source="Application",
                seqcode=glite_seqcode(NS=1, APP=i + 1),
                name="n",
                value=str(i),
            )
            for i in range(5000)
        ]
        with LBProducer(svc.socket_path) as producer:
            results = producer.log_many(lines)
        refused = [r for r in results if r is not False]
        self.assertEqual((len(results), refused), (5000, []))
