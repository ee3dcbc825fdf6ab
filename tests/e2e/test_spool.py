# -*- test-case-name: tests.e2e.test_spool -*-
"""
End-to-end tests of the interlogger-compatible intake on a real C{twistd lbproxy}:
producers that do what L&B's Java C{ContextIL} does (append to per-job files
under a lock, poke the socket or not), kill -9 while they append, pokes lost, and
the same jobs through the socket and through the spool ending in the same states.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from lbtwist.core.ilspool import encode_poke
from tests.e2e import harness
from tests.e2e.contextil import ContextILWriter, java_form
from tests.e2e.harness import T0, cream_direct_trace, cream_jobid, ulm_line, wms_job_trace
from tests.e2e.test_proxy import ServiceTestCase, with_service_logs

#: Seconds to wait for events to show up in the store (a generous deadline: the
#: waits end as soon as their condition holds, however loaded the box is).
WAIT = 60.0
#: kill -9 rounds of L{CrashTests} (L{KILL_ROUNDS_ENV} sets more, or fewer).
KILL_ROUNDS_ENV = "LBTWIST_SPOOL_KILL_ROUNDS"


def stored_count(svc: harness.LBService) -> int:
    """
    Events in the service's store (read-only, cheap enough to poll).
    """
    if not os.path.exists(svc.db_path):
        return 0
    try:
        conn = sqlite3.connect(f"file:{svc.db_path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        # The schema is not made yet.
        return 0
    finally:
        conn.close()


def wait_until(condition: object, timeout: float = WAIT, step: float = 0.05) -> bool:
    """
    Poll C{condition()} until it is true or C{timeout} seconds have passed.

    @return: whether it became true.
    """
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def status_line(jobid: str, n: int, user: str = harness.USER_DN) -> str:
    """
    The C{n}th of a stream of distinct CREAMStatus events of a job.
    """
    return ulm_line(
        "CREAMStatus",
        jobid=jobid,
        date=T0 + n * 1000,
        source="CREAMExecutor",
        seqcode=f"no_seqcodes_with_cream_{n}",
        user=user,
        result="DONE",
        old_state="IDLE",
        new_state="RUNNING",
        descr=f"step {n}",
    )


class SpoolTestCase(ServiceTestCase):
    def spool_service(self, *args: str, poke: bool = True) -> tuple[harness.LBService, str, str]:
        """
        A proxy reading a spool directory (and its poke socket).

        @return: the service, the prefix, the socket path.
        """
        spool_dir = os.path.abspath(self.mktemp())
        os.makedirs(spool_dir)
        prefix = os.path.join(spool_dir, "dglogd.log")
        sock_dir = tempfile.mkdtemp(prefix="lbtwist-il-")
        self.addCleanup(lambda: [os.unlink(p) for p in _glob(sock_dir)] and None)
        sock = os.path.join(sock_dir, "il.sock")
        extra = ["--il-spool", prefix]
        if poke:
            extra += ["--il-socket", sock]
        svc = self.start_service(*extra, *args)
        if poke:
            # The service is started when its intake socket accepts; the poke
            # socket may come a little later on a loaded box.
            self.assertTrue(wait_until(lambda: _accepts(sock)), f"{sock} not listening")
        return svc, prefix, sock

    def wait_for(self, svc: harness.LBService, count: int, timeout: float = WAIT) -> list[str]:
        """
        Wait until the store has C{count} events (or C{timeout} seconds passed),
        then dump them (one C{lbtwist dump}: it is slow on a loaded box).
        """
        wait_until(lambda: stored_count(svc) >= count, timeout)
        return harness.dump_lines(svc.state_dir)

    def assert_same_statuses(
        self, svc: harness.LBService, pairs: Sequence[tuple[str, str, Mapping[str, str]]]
    ) -> dict[str, Any]:
        """
        Each pair's two jobs have the same status, the second's once each key of
        the pair's mapping is replaced by its value (its own ids).

        @return: the statuses by job id.
        """
        statuses = self.status_json(svc, *[j for a, b, _ in pairs for j in (a, b)])
        for a, b, same in pairs:
            left = json.dumps(statuses[a], sort_keys=True)
            right = json.dumps(statuses[b], sort_keys=True)
            for theirs, ours in same.items():
                right = right.replace(theirs, ours)
            self.assertEqual(json.loads(left), json.loads(right), (a, b))
        return statuses


def _accepts(path: str) -> bool:
    """
    Whether the UNIX socket C{path} takes connections.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _glob(directory: str) -> list[str]:
    try:
        return [os.path.join(directory, n) for n in os.listdir(directory)]
    except OSError:
        return []


class ContextILTests(SpoolTestCase):
    @with_service_logs
    def test_writer_then_state(self) -> None:
        """
        A ContextIL-like producer (append under a lock, fsync, poke) logs a direct
        CREAM job; the job's state is read back; the lock was always free.
        """
        svc, prefix, sock = self.spool_service()
        writer = ContextILWriter(prefix, sock, fsync=True)
        jobid = cream_jobid(101)
        trace = cream_direct_trace(jobid, T0)
        for step in trace:
            writer.log(java_form(step.line))
        self.assertEqual(
            (writer.locked_out, writer.poke_errors), (0, 0), repr(writer.last_poke_error)
        )
        self.wait_for(svc, len(trace))
        self.assertState(svc, jobid, trace[-1].state, trace[-1].cream_state)

    @with_service_logs
    def test_cream_never_pokes(self) -> None:
        """
        CREAM's LBLogger never pokes: with inotify the events are stored at once
        all the same (the rescan, every 300 s here, is not what finds them).
        """
        svc, prefix, _ = self.spool_service("--il-rescan-interval", "300", poke=False)
        writer = ContextILWriter(prefix)
        # The scanner is up (its first rescan done) once a first event is stored.
        writer.log(java_form(status_line(cream_jobid(100), 1)))
        self.assertTrue(wait_until(lambda: stored_count(svc) == 1))
        jobid = cream_jobid(102)
        trace = cream_direct_trace(jobid, T0)
        started = time.monotonic()
        for step in trace:
            writer.log(java_form(step.line))
        self.assertTrue(wait_until(lambda: stored_count(svc) == 1 + len(trace)))
        # Within two seconds on an idle box; the deadline allows for a loaded one.
        self.assertLess(time.monotonic() - started, 30.0)
        self.assertState(svc, jobid, trace[-1].state, trace[-1].cream_state)

    @with_service_logs
    def test_pokes_dropped_rescan(self) -> None:
        """
        Without inotify and with every poke lost, the rescan finds every line
        within its interval.
        """
        svc, prefix, _ = self.spool_service(
            "--il-no-inotify", "--il-poll-interval", "1", poke=False
        )
        writer = ContextILWriter(prefix, os.path.join(prefix + ".nowhere"))
        jobs = [cream_jobid(200 + n) for n in range(5)]
        lines = [java_form(status_line(jobid, n)) for jobid in jobs for n in range(20)]
        for line in lines:
            writer.log(line)
        self.assertEqual(writer.poke_errors, len(lines))
        # Neither inotify nor pokes: only the rescan (every second) finds them.
        stored = self.wait_for(svc, len(lines))
        self.assertEqual(len(stored), len(lines))

    @with_service_logs
    def test_java_regjob_null_parent(self) -> None:
        """
        The Java producer's RegJob (parent "null", every field written) registers
        the job; later events carry CREAM's local user id in DG.USER.
        """
        svc, prefix, sock = self.spool_service()
        writer = ContextILWriter(prefix, sock)
        jobid = cream_jobid(103)
        writer.log(
            java_form(
                ulm_line(
                    "RegJob",
                    jobid=jobid,
                    date=T0,
                    source="CREAMExecutor",
                    seqcode="no_seqcodes_with_cream_register_cheat",
                    jdl="[]",
                    ns=harness.CREAM_NS,
                    parent="null",
                    jobtype="CREAM",
                    nsubjobs="0",
                    seed="",
                    wms_dn="",
                )
            )
        )
        writer.log(java_form(status_line(jobid, 1, user="cream001")))
        self.assertEqual(len(self.wait_for(svc, 2)), 2)
        self.assertState(svc, jobid, "Running", "Running")
        self.assertNotIn("1409", svc.log_text())

    @with_service_logs
    def test_forged_poke(self) -> None:
        """
        A poke whose text is not in the file is not stored (logged); the file's
        own line is.
        """
        svc, prefix, sock = self.spool_service("--il-poll-interval", "1")
        jobid = cream_jobid(104)
        ContextILWriter(prefix).log(java_form(status_line(jobid, 1)))
        forged = java_form(status_line(jobid, 2)).encode() + b"\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(encode_poke(0, forged))
        self.wait_for(svc, 1)
        # The poke was checked against the file (whatever the box's speed).
        self.assertTrue(wait_until(lambda: "not in the file" in svc.log_text()))
        lines = harness.dump_lines(svc.state_dir)
        self.assertEqual(
            [harness.field_map(x)["DG.SEQCODE"] for x in lines], ["no_seqcodes_with_cream_1"]
        )
        self.assertIn("not in the file", svc.log_text())


class CrashTests(SpoolTestCase):
    ROUNDS = int(os.environ.get(KILL_ROUNDS_ENV, "10"))
    WRITERS = 8

    @with_service_logs
    def test_kill9_exactly_once(self) -> None:
        """
        kill -9 of the proxy while producers append, ten times: after the last
        restart every line of the files is stored exactly once, and no line was
        read twice (no duplicates to absorb: the offsets went with the events).
        """
        svc, prefix, sock = self.spool_service("--il-keep-files")
        stop = threading.Event()
        written: list[list[str]] = [[] for _ in range(self.WRITERS)]
        errors: list[BaseException] = []

        def produce(k: int) -> None:
            writer = ContextILWriter(prefix, sock)
            jobid = cream_jobid(5000 + k)
            n = 0
            try:
                while not stop.is_set():
                    line = java_form(status_line(jobid, n))
                    writer.log(line)
                    written[k].append(line)
                    n += 1
                    time.sleep(random.uniform(0, 0.004))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(self.WRITERS)]
        for t in threads:
            t.start()
        try:
            for _ in range(self.ROUNDS):
                time.sleep(random.uniform(0.3, 1.0))
                svc.kill()
                time.sleep(random.uniform(0.0, 0.3))
                svc.start()
        finally:
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(10)
        self.assertEqual(errors, [])
        total = sum(len(w) for w in written)
        self.assertGreater(total, 1000)
        # The writers run for a fixed time, so a loaded box leaves more to catch up
        # (every line found at the end is checked, whatever the time it took).
        stored = self.wait_for(svc, total, timeout=max(WAIT, total / 1000))
        seqcodes = Counter(
            (harness.field_map(x)["DG.JOBID"], harness.field_map(x)["DG.SEQCODE"]) for x in stored
        )
        expected = Counter(
            (harness.field_map(x)["DG.JOBID"], harness.field_map(x)["DG.SEQCODE"])
            for w in written
            for x in w
        )
        self.assertEqual(seqcodes, expected)
        self.assertEqual(max(seqcodes.values()), 1)
        self.assertEqual(svc.starts, self.ROUNDS + 1)
        self.assertNotIn("already stored (duplicates", svc.log_text())
        print(
            f"kill -9 x{self.ROUNDS}: {total} lines from {self.WRITERS} writers, each stored once"
        )


class SameStatesTests(SpoolTestCase):
    @with_service_logs
    def test_spool_and_socket_agree(self) -> None:
        """
        A direct CREAM job and a WMS job end in the same states whether CREAM's
        events came through the socket or through the spool files.
        """
        svc, prefix, sock = self.spool_service()
        writer = ContextILWriter(prefix, sock)
        direct_socket, direct_spool = cream_jobid(301), cream_jobid(302)
        wms_socket = f"{harness.WMS_LB}/wmsjobsocket0001"
        wms_spool = f"{harness.WMS_LB}/wmsjobspool00001"
        sent = 0
        from lbtwist.client.producer import LBProducer

        with LBProducer(svc.socket_path, timeout=20) as p:
            for step in cream_direct_trace(direct_socket, T0):
                p.log(step.line)
            wms, cream = wms_job_trace(wms_socket, "CREAM000000401", T0)
            for line in wms + cream:
                p.log(line)
            wms2, cream2 = wms_job_trace(wms_spool, "CREAM000000402", T0)
            for line in wms2:
                p.log(line)
        for step in cream_direct_trace(direct_spool, T0):
            writer.log(java_form(step.line))
            sent += 1
        for line in cream2:
            writer.log(java_form(line))
            sent += 1
        total = len(cream_direct_trace(direct_socket, T0)) * 2 + len(wms + cream) * 2
        self.wait_for(svc, total)
        pairs = (
            (direct_socket, direct_spool, {"CREAM000000302": "CREAM000000301"}),
            (wms_socket, wms_spool, {"CREAM000000402": "CREAM000000401", wms_spool: wms_socket}),
        )
        statuses = self.assert_same_statuses(svc, pairs)
        self.assertEqual(statuses[direct_spool]["cream_state"], "Done-ok")
        self.assertEqual(statuses[wms_spool]["state"], "Done")
