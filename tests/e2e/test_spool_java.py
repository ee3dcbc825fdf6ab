# -*- test-case-name: tests.e2e.test_spool_java -*-
"""
The spool intake fed by a real JVM: C{tests/e2e/java/ContextILWriter.java}
writes events as L&B's Java C{ContextIL} does (CREAM's logger): the Java
producer's line form, C{FileChannel.tryLock()} (an fcntl lock on Linux) around
each append, the bytes of C{String.getBytes()} (the platform charset, set to
UTF-8 here with C{-Dfile.encoding}), and the poke over a Java UNIX socket
channel when asked (optionally cut as ContextIL's native poker cuts it).
Skipped when no C{javac} is on PATH.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from tests.e2e import harness
from tests.e2e.harness import T0, TraceStep, cream_direct_trace, cream_jobid, wms_job_trace
from tests.e2e.test_proxy import with_service_logs
from tests.e2e.test_spool import WAIT, SpoolTestCase, stored_count, wait_until

JAVA_SOURCE = os.path.join(os.path.dirname(__file__), "java", "ContextILWriter.java")
JAVA_CLASS = "org.glite.lb.ContextILWriter"
JAVAC = shutil.which("javac")
JAVA = shutil.which("java")
SKIP = (
    None if JAVAC and JAVA else "no javac/java on PATH (install a JDK, e.g. default-jdk-headless)"
)

_compiled: list[str] = []


def classes_dir() -> str:
    """
    The writer compiled once per test process (a temporary class directory).
    """
    if not _compiled:
        assert JAVAC is not None
        out = tempfile.mkdtemp(prefix="lbtwist-java-")
        atexit.register(shutil.rmtree, out, True)
        subprocess.run(
            [JAVAC, "-d", out, JAVA_SOURCE], check=True, capture_output=True, timeout=120
        )
        _compiled.append(out)
    return _compiled[0]


def step_record(step: TraceStep, user: str = harness.USER_DN) -> str:
    """
    The writer's input for one harness trace step.
    """
    cols = [step.jobid, step.event, step.source, step.seqcode, user, str(step.date // 1000)]
    cols += [f"{name}={value}" for name, value in step.fields]
    return "\t".join(cols)


def line_record(line: str) -> str:
    """
    The writer's input for one harness ULM line (its own fields kept).
    """
    f = harness.field_map(line)
    own = f"DG.{f['DG.EVNT'].upper()}."
    date = datetime.strptime(f["DATE"], "%Y%m%d%H%M%S.%f").replace(tzinfo=UTC)
    millis = int(date.timestamp() * 1000)
    cols = [f["DG.JOBID"], f["DG.EVNT"], f["DG.SOURCE"], f["DG.SEQCODE"], f["DG.USER"]]
    cols.append(str(millis))
    cols += [f"{k[len(own) :]}={v}" for k, v in f.items() if k.startswith(own)]
    return "\t".join(cols)


def start_java(
    prefix: str,
    records: Iterable[str],
    socket_path: str | None = None,
    repeat: int = 1,
    jni_length: bool = False,
) -> subprocess.Popen[str]:
    """
    Start one writer JVM on C{records} (see L{step_record}); L{java_result} waits for it.
    """
    assert JAVA is not None
    args = [JAVA, "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-Dfile.encoding=UTF-8"]
    args += ["-cp", classes_dir(), JAVA_CLASS, "--prefix", prefix, "--repeat", str(repeat)]
    if socket_path is not None:
        args += ["--socket", socket_path]
    if jni_length:
        args.append("--jni-length")
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    proc.stdin.write("".join(r + "\n" for r in records))
    proc.stdin.close()
    return proc


def java_result(proc: subprocess.Popen[str]) -> dict[str, int]:
    """
    Wait for a writer; its counters (written, gaveup, pokefail).
    """
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    rc = proc.wait(120)
    proc.stdout.close()
    proc.stderr.close()
    if rc != 0:
        raise AssertionError(f"java writer exited {rc}: {err}")
    last = out.strip().splitlines()[-1]
    return {k: int(v) for k, v in (part.split("=") for part in last.split())}


def run_java(
    prefix: str, records: Sequence[str], socket_path: str | None = None, jni_length: bool = False
) -> dict[str, int]:
    """
    Run one writer JVM to its end; its counters.
    """
    return java_result(start_java(prefix, records, socket_path, jni_length=jni_length))


#: The socket twins of the spool jobs.
DIRECT_SOCKET = cream_jobid(701)
WMS_SOCKET = f"{harness.WMS_LB}/javaWmsJobSocket01"


def job_counts(svc: harness.LBService) -> dict[str, int]:
    """
    Events stored per job.
    """
    if not os.path.exists(svc.db_path):
        return {}
    try:
        rows = query(svc.db_path, "SELECT jobid, COUNT(*) FROM events GROUP BY jobid")
    except sqlite3.OperationalError:
        return {}
    return {str(j): int(str(n)) for j, n in rows}


def query(path: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """
    Read the running service's store (WAL: readers do not block it).
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class JavaSpoolTestCase(SpoolTestCase):
    skip = SKIP

    def socket_twins(
        self, svc: harness.LBService, direct: str, wms: str, creamid: str
    ) -> list[str]:
        """
        Log a direct CREAM job and a WMS job through the socket intake (the
        reference); return the CREAM lines of the WMS job of the spool twin
        (its WMS events are logged here through the socket too, as the WMS does).
        """
        from lbtwist.client.producer import LBProducer

        wms_ref = WMS_SOCKET
        with LBProducer(svc.socket_path, timeout=20) as p:
            for step in cream_direct_trace(direct, T0):
                p.log(step.line)
            ref_wms, ref_cream = wms_job_trace(wms_ref, "CREAM000000401", T0)
            for line in ref_wms + ref_cream:
                p.log(line)
            twin_wms, twin_cream = wms_job_trace(wms, creamid, T0)
            for line in twin_wms:
                p.log(line)
        return twin_cream

    def assert_same_states(self, svc: harness.LBService, spool_direct: str, spool_wms: str) -> None:
        direct_socket, wms_socket = DIRECT_SOCKET, WMS_SOCKET
        pairs = (
            (direct_socket, spool_direct, {spool_direct.rsplit("/", 1)[1]: "CREAM000000701"}),
            (wms_socket, spool_wms, {"CREAM000000402": "CREAM000000401", spool_wms: wms_socket}),
        )
        statuses = self.assert_same_statuses(svc, pairs)
        self.assertEqual(statuses[spool_direct]["cream_state"], "Done-ok")
        self.assertEqual(statuses[spool_wms]["state"], "Done")

    def outbox(self, svc: harness.LBService, jobid: str) -> list[tuple[str, int]]:
        rows = query(
            svc.db_path,
            "SELECT o.destination, COUNT(*) FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE e.jobid = ? GROUP BY o.destination",
            jobid,
        )
        return [(str(d), int(str(n))) for d, n in rows]

    def assert_relayed(self, svc: harness.LBService, spool_wms: str) -> None:
        """
        The WMS job's events wait in the outbox for its L&B server, as many as
        for its socket twin.
        """
        theirs = self.outbox(svc, spool_wms)
        self.assertEqual(theirs, self.outbox(svc, WMS_SOCKET))
        self.assertEqual([d for d, _ in theirs], ["lb.example.org:9001"])

    def wait_twins(self, svc: harness.LBService, spool_direct: str, spool_wms: str) -> bool:
        """
        Wait until the spool jobs have as many events as their socket twins
        (the proxy adds gLite events of its own to a WMS job's CREAM ones).
        """

        def same() -> bool:
            counts = job_counts(svc)
            direct = counts.get(DIRECT_SOCKET, -1)
            wms = counts.get(WMS_SOCKET, -1)
            return counts.get(spool_direct) == direct > 0 and counts.get(spool_wms) == wms > 0

        return wait_until(same, WAIT)

    def trace_records(self, direct: str, twin_cream: Sequence[str]) -> list[str]:
        steps = cream_direct_trace(direct, T0)
        records = [step_record(s) for s in steps]
        return records + [line_record(x) for x in twin_cream]


class JavaNeverPokesTests(JavaSpoolTestCase):
    @with_service_logs
    def test_cream_real_mode(self) -> None:
        """
        CREAM as it ships (the Java producer appends, never pokes): a direct job
        (its RegJob with PARENT="null") and a WMS job end in the states the same
        traces reach through the socket; the WMS job's events are queued for its
        L&B server.
        """
        svc, prefix, _ = self.spool_service("--il-keep-files")
        direct, wms = cream_jobid(702), f"{harness.WMS_LB}/javaWmsJobSpool001"
        twin_cream = self.socket_twins(svc, DIRECT_SOCKET, wms, "CREAM000000402")
        records = self.trace_records(direct, twin_cream)
        result = run_java(prefix, records)
        self.assertEqual(result, {"written": len(records), "gaveup": 0, "pokefail": 0})
        self.assertTrue(self.wait_twins(svc, direct, wms), job_counts(svc))
        with open(f"{prefix}.{direct.rsplit('/', 1)[1]}", "rb") as f:
            first = f.readline()
        self.assertIn(b'DG.REGJOB.PARENT="null"', first)
        with open(f"{prefix}.javaWmsJobSpool001", "rb") as f:
            self.assertRegex(f.read(), rb'ORIG_TIMESTAMP="org\.glite\.lb\.Timeval@[0-9a-f]+"')
        self.assert_same_states(svc, direct, wms)
        self.assert_relayed(svc, wms)
        self.assertNotIn("1409", svc.log_text())


class JavaPokeTests(JavaSpoolTestCase):
    @with_service_logs
    def test_poked(self) -> None:
        """
        The writer pokes each event (a Java UNIX socket channel, little-endian
        offset then the line): with inotify off and a 300 s rescan only the
        pokes can bring the events in, and they do within seconds.
        """
        svc, prefix, sock = self.spool_service(
            "--il-no-inotify", "--il-poll-interval", "300", "--il-rescan-interval", "300"
        )
        direct, wms = cream_jobid(703), f"{harness.WMS_LB}/javaWmsJobSpool001"
        twin_cream = self.socket_twins(svc, DIRECT_SOCKET, wms, "CREAM000000402")
        records = self.trace_records(direct, twin_cream)
        result = run_java(prefix, records, sock)
        done = time.monotonic()
        self.assertEqual(result, {"written": len(records), "gaveup": 0, "pokefail": 0})
        self.assertTrue(self.wait_twins(svc, direct, wms), job_counts(svc))
        # Well under a second on an idle box; the bound allows for a loaded one.
        self.assertLess(time.monotonic() - done, 15.0)
        self.assert_same_states(svc, direct, wms)
        self.assert_relayed(svc, wms)

    @with_service_logs
    def test_jni_poke_cut_short(self) -> None:
        """
        ContextIL's native poke sends as many bytes as the line has UTF-16
        units: a line with non-ASCII text (a DN with accents) comes cut short,
        without its LF. The cut poke still wakes its file (inotify off, 300 s
        rescan: only the pokes can bring the events in) and matches the file.
        """
        svc, prefix, sock = self.spool_service(
            "--il-no-inotify", "--il-poll-interval", "300", "--il-rescan-interval", "300"
        )
        jobid = cream_jobid(706)
        user = "/DC=cz/DC=cesnet-ca/O=CESNET/CN=Ji\u0159\u00ed Nov\u00e1k"
        records = [step_record(s, user=user) for s in cream_direct_trace(jobid, T0)]
        result = run_java(prefix, records, sock, jni_length=True)
        self.assertEqual(result, {"written": len(records), "gaveup": 0, "pokefail": 0})
        self.assertTrue(wait_until(lambda: stored_count(svc) == len(records), WAIT))
        self.assertEqual(self.status_json(svc, jobid)[jobid]["owner"], user)
        self.assertNotIn("not in the file", svc.log_text())


class JavaConcurrentTests(JavaSpoolTestCase):
    SHARED = 3
    SOLO = 2
    EVENTS = 300

    @with_service_logs
    def test_concurrent_writers(self) -> None:
        """
        JVMs append while the scanner reads: three share one job's file, two
        have a file each. The scanner never holds a lock, so the writers alone
        on their file never give up (those sharing one may, on each other's
        locks: ContextIL's five immediate attempts, counted); every line
        written is stored exactly once.
        """
        svc, prefix, _ = self.spool_service("--il-poll-interval", "1")
        shared = cream_jobid(704)
        solos = [cream_jobid(705 + k) for k in range(self.SOLO)]
        jobs = [shared] * self.SHARED + solos
        procs = []
        for k, jobid in enumerate(jobs):
            step = cream_direct_trace(jobid, T0)[7]  # a CREAMStatus to Running
            record = step_record(step).split("\t")
            record[3] = f"no_seqcodes_with_cream_java{k}"
            procs.append(start_java(prefix, ["\t".join(record)], repeat=self.EVENTS))
        results = [java_result(p) for p in procs]
        for r in results:
            self.assertEqual(r["written"] + r["gaveup"], self.EVENTS, results)
        self.assertEqual([r["gaveup"] for r in results[self.SHARED :]], [0] * self.SOLO, results)
        expected = {shared: sum(r["written"] for r in results[: self.SHARED])}
        expected.update({j: self.EVENTS for j in solos})
        for jobid, count in expected.items():
            with open(f"{prefix}.{jobid.rsplit('/', 1)[1]}", "rb") as f:
                self.assertEqual(f.read().count(b"\n"), count)
        total = sum(expected.values())
        self.assertTrue(wait_until(lambda: stored_count(svc) >= total, WAIT))
        for jobid, count in expected.items():
            rows = query(
                svc.db_path,
                "SELECT COUNT(*), COUNT(DISTINCT seqcode) FROM events WHERE jobid = ?",
                jobid,
            )
            self.assertEqual(rows, [(count, count)], jobid)
        self.assertEqual(stored_count(svc), total)
        self.assertNotIn("already stored (duplicates", svc.log_text())
        gaveup = sum(r["gaveup"] for r in results)
        print(f"java writers: {total} lines stored once; {gaveup} give-ups among shared writers")
