# -*- test-case-name: tests.e2e.test_proxy -*-
"""
End-to-end tests of C{twistd lbproxy}: a real service subprocess, the real
C{lbtwist} command, real UNIX sockets in temporary directories.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lbtwist.client.producer import LBProducer
from lbtwist.core.errors import PermissionDenied
from tests.e2e import harness
from tests.e2e.harness import (
    T0,
    E2ECase,
    LBService,
    cream_direct_trace,
    cream_jobid,
    event_key,
    parse_json_objects,
    parse_status_text,
    run_lbtwist,
)

_F = TypeVar("_F", bound=Callable[..., Any])

JOBWRAPPER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_jobwrapper.sh")


def with_service_logs(method: _F) -> _F:
    """
    Attach the logs of every service the test started to its failure.
    """

    @functools.wraps(method)
    def wrapper(self: ServiceTestCase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            logs = "".join(
                f"\n----- {svc.logfile} -----\n{svc.log_text()[-20000:]}" for svc in self.services
            )
            raise self.failureException(f"{type(e).__name__}: {e}{logs}") from e

    return wrapper  # type: ignore[return-value]


class ServiceTestCase(E2ECase):
    """
    Starts services that are stopped in cleanup.
    """

    def setUp(self) -> None:
        self.services: list[LBService] = []

    def start_service(self, *args: str) -> LBService:
        svc = LBService(self.mktemp(), args)
        self.services.append(svc)
        self.addCleanup(svc.cleanup)
        svc.start()
        return svc

    def cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        """
        Run C{lbtwist ARGS}; fail the test unless it exits 0; return stdout.
        """
        result = run_lbtwist(args, env=env)
        if result.returncode != 0:
            self.fail(
                f"lbtwist {' '.join(args)} exited {result.returncode}:\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result.stdout

    def status_text(self, svc: LBService, jobid: str) -> dict[str, str]:
        return parse_status_text(self.cli("status", "--state-dir", svc.state_dir, jobid))

    def status_json(self, svc: LBService, *jobids: str) -> dict[str, dict[str, Any]]:
        out = self.cli("status", "--state-dir", svc.state_dir, "--json", *jobids)
        return {str(obj["jobId"]): obj for obj in parse_json_objects(out)}

    def assertState(self, svc: LBService, jobid: str, state: str, cream_state: str) -> None:
        status = self.status_text(svc, jobid)
        self.assertEqual(
            (status.get("state"), status.get("cream_state")), (state, cream_state), status
        )


class CreamDirectJobTests(ServiceTestCase):
    """
    A job submitted directly to CREAM, logged as CREAM logs it.
    """

    @with_service_logs
    def test_logevent_trace(self) -> None:
        """
        One C{lbtwist logevent} process per event; C{lbtwist status} shows
        the state and the CREAM state after each key step.
        """
        svc = self.start_service()
        jobid = cream_jobid(1)
        steps = cream_direct_trace(jobid, T0)
        check_after = {0, 3, 5, 7, 8}
        for i, step in enumerate(steps):
            out = self.cli("logevent", "-x", "-S", svc.socket_path, *step.logevent_args())
            # An opaque seqcode is given back as it is.
            self.assertEqual(out.strip(), step.seqcode)
            if i in check_after:
                self.assertState(svc, jobid, step.state, step.cream_state)
        final = self.status_text(svc, jobid)
        self.assertEqual(final["state"], "Done")
        self.assertEqual(final["cream_state"], "Done-ok")
        as_json = self.status_json(svc, jobid)[jobid]
        self.assertEqual(as_json["state"], "Done")
        self.assertEqual(as_json["cream_state"], "Done-ok")
        self.assertEqual(as_json["ce_node"], "wn1.example.org")
        self.assertEqual(as_json["cream_node"], "wn1.example.org")
        self.assertEqual(as_json["owner"], harness.USER_DN)
        self.assertEqual(str(as_json["exit_code"]), "0")
        self.assertEqual(len([k for k in harness.dump_lines(svc.state_dir)]), len(steps))

    @with_service_logs
    def test_producer_pipelined(self) -> None:
        """
        The producer library logs whole traces pipelined: every event is
        answered as new, then again as duplicate; states are final.
        """
        svc = self.start_service()
        jobs = {cream_jobid(10 + i): ending for i, ending in enumerate(harness.ENDINGS)}
        lines = []
        for n, (jobid, ending) in enumerate(jobs.items()):
            lines += [s.line for s in cream_direct_trace(jobid, T0 + n * 10**9, ending)]
        with LBProducer(svc.socket_path) as producer:
            self.assertEqual(producer.log_many(lines), [False] * len(lines))
            self.assertEqual(producer.log_many(lines[:3]), [True] * 3)
            self.assertTrue(producer.log(lines[-1]))
        expected = {"ok": ("Done", "Done-ok"), "failed": ("Done", "Done-failed")}
        expected["cancelled"] = ("Cancelled", "Cancelled")
        statuses = self.status_json(svc, *jobs)
        for jobid, ending in jobs.items():
            st = statuses[jobid]
            self.assertEqual((st["state"], st["cream_state"]), expected[ending], jobid)
        self.assertEqual(statuses[cream_jobid(11)]["cream_failure_reason"], "payload failed")
        self.assertEqual(len(harness.dump_lines(svc.state_dir)), len(lines))


class WMSJobTests(ServiceTestCase):
    """
    A job of the gLite WMS executed by CREAM.
    """

    @with_service_logs
    def test_wms_job_on_cream(self) -> None:
        """
        The status has the cream_* fields and the gLite state; the generated
        gLite events are in the dump; the CREAM id answers for the job.
        """
        svc = self.start_service()
        jobid = harness.WMS_LB + "/wmsJobForCreamTest0001"
        creamid = "CREAM777000111"
        wms, cream = harness.wms_job_trace(jobid, creamid, T0)
        with LBProducer(svc.socket_path) as producer:
            self.assertEqual(producer.log_many(wms), [False] * len(wms))
            self.assertEqual(self.status_text(svc, jobid)["state"], "Ready")
            for line in cream:
                self.assertFalse(producer.log(line))
        st = self.status_json(svc, jobid)[jobid]
        self.assertEqual(st["state"], "Done")
        self.assertEqual(st["cream_state"], "Done-ok")
        self.assertEqual(st["cream_node"], "wn7.example.org")
        self.assertEqual(st["cream_lrms_id"], "4242.pbs")
        text = self.status_text(svc, jobid)
        self.assertEqual(text["cream_state"], "Done-ok")
        self.assertEqual(text["done_code"], "OK")
        self.assertEqual(text["jobId"], jobid)
        # The proxy maps the CREAM id to the gLite job.
        by_cream = self.status_text(svc, f"https://{harness.CE_HOST}:9000/{creamid}")
        self.assertEqual(by_cream.get("glite_jobid", by_cream.get("jobId")), jobid)
        self.assertEqual(by_cream["cream_state"], "Done-ok")

        lines = harness.dump_lines(svc.state_dir)
        generated = [harness.field_map(line) for line in lines if "DG.GENERATED_BY" in line]
        self.assertEqual(
            [f["DG.EVNT"] for f in generated], ["Accepted", "Running", "ReallyRunning", "Done"]
        )
        for f in generated:
            self.assertEqual(f["DG.JOBID"], jobid)
            self.assertEqual(f["DG.SRC_INSTANCE"], "lbtwist-proxy")
            self.assertEqual(f["DG.USER"], harness.USER_DN)
        self.assertEqual(generated[1]["DG.RUNNING.NODE"], "wn7.example.org")
        self.assertEqual(generated[3]["DG.DONE.STATUS_CODE"], "OK")
        self.assertEqual(len(lines), len(wms) + len(cream) + len(generated))


class _Burst:
    """
    One producer connection pipelining C{lines} with a window, recording
    which were acknowledged; stops quietly when the service dies.
    """

    def __init__(self, path: str, lines: list[str], window: int = 64) -> None:
        self.path = path
        self.lines = lines
        self.window = window
        self.answers: list[bytes] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._slots = threading.Semaphore(window)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _write(self, sock: socket.socket) -> None:
        try:
            for line in self.lines:
                while not self._slots.acquire(timeout=0.05):
                    if self._stop.is_set():
                        return
                sock.sendall(line.encode() + b"\n")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            sock = harness.connect(self.path, timeout=30)
        except OSError as e:
            self.error = e
            return
        writer = threading.Thread(target=self._write, args=(sock,), daemon=True)
        writer.start()
        try:
            with sock.makefile("rb") as answers:
                while len(self.answers) < len(self.lines):
                    answer = answers.readline()
                    if not answer.endswith(b"\n"):
                        break
                    self.answers.append(answer.rstrip(b"\n"))
                    self._slots.release()
        except OSError:
            pass
        finally:
            self._stop.set()
            writer.join(30)
            sock.close()

    @property
    def acknowledged(self) -> list[str]:
        return [line for line, a in zip(self.lines, self.answers, strict=False) if a == b"OK"]


class CrashTests(ServiceTestCase):
    """
    C{kill -9} never loses an acknowledged event.
    """

    THREADS = 8
    JOBS_PER_THREAD = 36

    def traces(self) -> dict[str, list[harness.TraceStep]]:
        traces = {}
        for t in range(self.THREADS):
            for k in range(self.JOBS_PER_THREAD):
                jobid = cream_jobid(100_000 + t * 1000 + k)
                ending = harness.ENDINGS[k % len(harness.ENDINGS)]
                traces[jobid] = cream_direct_trace(jobid, T0 + k * 10**9, ending)
        return traces

    def thread_lines(self, traces: dict[str, list[harness.TraceStep]], t: int) -> list[str]:
        """
        The events of thread C{t}'s jobs, four jobs interleaved at a time.
        """
        jobs = [traces[cream_jobid(100_000 + t * 1000 + k)] for k in range(self.JOBS_PER_THREAD)]
        lines = []
        for g in range(0, len(jobs), 4):
            group = jobs[g : g + 4]
            for i in range(max(len(j) for j in group)):
                lines += [j[i].line for j in group if i < len(j)]
        return lines

    @with_service_logs
    def test_kill9_during_burst(self) -> None:
        """
        Eight connections pipeline hundreds of events each; the service is
        killed with SIGKILL mid-burst and restarted. Every acknowledged event
        is stored exactly once, and every job's status is what replaying its
        stored events gives.
        """
        svc = self.start_service()
        traces = self.traces()
        bursts = [
            _Burst(svc.socket_path, self.thread_lines(traces, t)) for t in range(self.THREADS)
        ]
        total = sum(len(b.lines) for b in bursts)
        for b in bursts:
            b.thread.start()
        deadline = time.monotonic() + 30
        while sum(len(b.answers) for b in bursts) < total // 4:
            self.assertLess(time.monotonic(), deadline, "burst too slow")
            if any(b.error for b in bursts):
                break
            time.sleep(0.001)
        svc.kill()
        for b in bursts:
            b.thread.join(30)
            self.assertFalse(b.thread.is_alive())
            self.assertIsNone(b.error)
        answers = [a for b in bursts for a in b.answers]
        self.assertEqual(set(answers), {b"OK"}, "every answer before the kill is OK")
        acked = [line for b in bursts for line in b.acknowledged]
        self.assertGreater(len(acked), 0)
        self.assertLess(len(acked), total, "the kill came after the whole burst")

        svc.start()
        self.do_checks(svc, traces, acked)

    def do_checks(
        self, svc: LBService, traces: dict[str, list[harness.TraceStep]], acked: list[str]
    ) -> None:
        stored = harness.dump_lines(svc.state_dir)
        counts = harness.unique_count(event_key(line) for line in stored)
        twice = [k for k, n in counts.items() if n > 1]
        self.assertEqual(twice, [], "events stored more than once")
        missing = [line for line in acked if event_key(line) not in counts]
        self.assertEqual(missing, [], "acknowledged events lost")

        # Every job's status equals the replay of its stored events.
        dump_file = os.path.join(svc.base, "dump.log")
        with open(dump_file, "w") as f:
            f.write(self.cli("dump", "--state-dir", svc.state_dir))
        replayed = {
            str(obj["jobId"]): obj
            for obj in parse_json_objects(self.cli("replay", "--json", dump_file))
        }
        jobs = sorted({harness.field_map(line)["DG.JOBID"] for line in stored})
        self.assertEqual(sorted(replayed), jobs)
        statuses = self.status_json(svc, *jobs)
        self.assertEqual(sorted(statuses), jobs)
        for jobid in jobs:
            live = {k: v for k, v in statuses[jobid].items() if k != "last_key"}
            offline = {k: v for k, v in replayed[jobid].items() if k != "last_key"}
            self.assertEqual(live, offline, jobid)

        # Jobs whose whole trace was acknowledged are in their final state.
        acked_keys = {event_key(line) for line in acked}
        complete = 0
        for jobid, steps in traces.items():
            if all(event_key(s.line) in acked_keys for s in steps):
                complete += 1
                st = statuses[jobid]
                self.assertEqual(
                    (st["state"], st["cream_state"]), (steps[-1].state, steps[-1].cream_state)
                )
        self.assertGreater(complete, 0)


class HostileInputTests(ServiceTestCase):
    """
    Malformed, oversized and binary input on each framing gets its error
    answer; the service keeps serving other connections.
    """

    MAX = 64 * 1024

    def setUp(self) -> None:
        super().setUp()
        self.svc = self.start_service("--max-event-size", str(self.MAX))
        # A connection opened before the abuse, used after it.
        self.bystander = LBProducer(self.svc.socket_path, timeout=10)
        self.addCleanup(self.bystander.close)
        self.n = 0

    def good_line(self) -> str:
        self.n += 1
        return cream_direct_trace(cream_jobid(500 + self.n), T0)[0].line

    def assertStillServing(self) -> None:
        self.assertFalse(self.bystander.log(self.good_line()))
        with LBProducer(self.svc.socket_path, timeout=10) as fresh:
            self.assertFalse(fresh.log(self.good_line()))

    def assertClosed(self, sock: socket.socket) -> None:
        """
        The service closes the connection (reads end) within the socket timeout.
        """
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass

    @with_service_logs
    def test_line_framing(self) -> None:
        good = self.good_line()
        oversized = good + " DG.X=" + "x" * self.MAX
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(b"this is not ulm\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR 1401 ")
            s.sendall(good.replace("DG.EVNT=", "DG.EVNT_=").encode() + b"\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR 140[23] ")
            s.sendall(good.replace("DG.SOURCE=", 'DG.SOURCE="Nowhere" X=').encode() + b"\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR ")
            s.sendall(good.encode() + b"\n")
            self.assertEqual(harness.read_line(s), b"OK")
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            # Read to its end, answered E2BIG; the connection goes on.
            s.sendall(oversized.encode() + b"\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR 7 ")
            s.sendall(self.good_line().encode() + b"\n")
            self.assertEqual(harness.read_line(s), b"OK")
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(b"DATE=\xff\xfe\x00\x01 binary \x80garbage\x00\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR ")
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            try:
                # Not an IL header or DGLOG first: the line framing.
                s.sendall(b"\x80" + os.urandom(1 << 17).replace(b"\n", b"") + b"\n")
            except OSError:
                pass
            answer = harness.read_line(s)
            self.assertTrue(answer.startswith(b"ERR 7 "), answer)
        self.assertStillServing()

    @with_service_logs
    def test_il_framing(self) -> None:
        good = self.good_line()
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(harness.il_frame(good))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (0, 0))
            s.sendall(harness.il_frame("this is not ulm"))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (400, 1401))
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(harness.il_frame(self.good_line() + " DG.X=" + "x" * self.MAX))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (400, 7))
            s.sendall(harness.il_frame(self.good_line()))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (0, 0))
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            # A message with a bad body (answered), then a header that is no length at all.
            s.sendall(b"%16d\n" % 5 + b"hello" + b"  12zz\x00\xff garbage garbage garbage\n")
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (400, 1401))
            reply = harness.il_read_reply(s)
            self.assertTrue(reply is None or reply.major != 0, reply)
            self.assertClosed(s)
        self.assertStillServing()

    @with_service_logs
    def test_logd_framing(self) -> None:
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(harness.logd_frame(self.good_line()))
            self.assertEqual(harness.logd_read_reply(s), 0)
            s.sendall(harness.logd_frame("this is not ulm"))
            self.assertEqual(harness.logd_read_reply(s), 1401)
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            s.sendall(harness.logd_frame(self.good_line() + " DG.X=" + "x" * self.MAX))
            self.assertEqual(harness.logd_read_reply(s), 7)
            s.sendall(harness.logd_frame(self.good_line()))
            self.assertEqual(harness.logd_read_reply(s), 0)
        self.assertStillServing()
        with harness.connect(self.svc.socket_path) as s:
            # Magic, then a negative size and binary junk.
            s.sendall(b"DGLOG\xff\xff\xff\xff\x00\x01\x02binary")
            self.assertNotEqual(harness.logd_read_reply(s), 0)
            self.assertClosed(s)
        self.assertStillServing()


class AuthorizationTests(ServiceTestCase):
    """
    Only the configured uids may log.
    """

    @with_service_logs
    def test_foreign_uid_refused(self) -> None:
        """
        A service that allows only uid 4242 refuses us with C{ERR 1} and
        stores nothing.
        """
        self.assertNotEqual(os.getuid(), 4242)
        svc = self.start_service("--producer-uid", "4242")
        line = cream_direct_trace(cream_jobid(9), T0)[0].line
        with harness.connect(svc.socket_path) as s:
            s.sendall(line.encode() + b"\n")
            self.assertRegex(harness.read_line(s).decode(), r"^ERR 1 ")
        with LBProducer(svc.socket_path, timeout=10) as producer:
            try:
                producer.log(line)
            except PermissionDenied:
                pass
            except ConnectionError:
                pass
            else:
                self.fail("the event was accepted")
        self.assertEqual(harness.dump_lines(svc.state_dir), [])


class JobWrapperTests(ServiceTestCase):
    """
    The Job Wrapper's seqcode idiom in a shell script.
    """

    @with_service_logs
    def test_seqcode_kept(self) -> None:
        """
        With the socket there the script gets the next seqcode from
        C{logevent}; with the socket gone it keeps the old one.
        """
        svc = self.start_service()
        jobid = harness.WMS_LB + "/jobWrapperSeqcodeTest1"
        wms, _ = harness.wms_job_trace(jobid, "CREAM4711", T0)
        with LBProducer(svc.socket_path) as producer:
            producer.log_many(wms)
        start = harness.glite_seqcode(NS=3, WM=3, JSS=2)
        result = self.run_script(svc.socket_path, jobid, start)
        # Running, then ReallyRunning, logged with LRMS 1 and 3: as glite-lb-logevent,
        # each run prints the code after the one it logged.
        self.assertEqual(
            result.splitlines(),
            [
                harness.glite_seqcode(NS=3, WM=3, JSS=2, LRMS=2),
                harness.glite_seqcode(NS=3, WM=3, JSS=2, LRMS=4),
            ],
        )
        st = self.status_json(svc, jobid)[jobid]
        self.assertEqual(st["state"], "Running")
        self.assertEqual(st["ce_node"], "wn1")

        missing = os.path.join(svc.base, "no-such.sock")
        self.assertEqual(self.run_script(missing, jobid, start).splitlines(), [start, start])

    def run_script(self, sock: str, jobid: str, seqcode: str) -> str:
        env = dict(os.environ)
        env.update(
            GLITE_WMS_LBPROXY_STORE_SOCK=sock,
            GLITE_WMS_JOBID=jobid,
            GLITE_WMS_SEQUENCE_CODE=seqcode,
            # A missing socket is retried this long before the script's fallback.
            GLITE_WMS_LOG_TIMEOUT="1",
            LBTWIST=" ".join(harness.LBTWIST),
        )
        result = subprocess.run(
            ["bash", JOBWRAPPER_SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout
