# -*- test-case-name: tests.e2e.test_intake -*-
"""
End-to-end tests of the intake socket's limits on a real C{twistd lbproxy}:
idle connections, the idle timeout, and oversize events from an L&B-style IL
producer.
"""

from __future__ import annotations

import socket
import threading
import time

from lbtwist.client.producer import LBProducer
from tests.e2e import harness
from tests.e2e.harness import T0, cream_direct_trace, cream_jobid
from tests.e2e.test_proxy import ServiceTestCase, with_service_logs


class IdleConnectionTests(ServiceTestCase):
    """
    Connections that send nothing cannot lock producers out.
    """

    IDLE = 300
    PRODUCERS = 16
    EVENTS = 40

    @with_service_logs
    def test_idle_connections_change_nothing(self) -> None:
        svc = self.start_service()
        idle: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in idle])
        for _ in range(self.IDLE):
            idle.append(harness.connect(svc.socket_path))
        results: dict[int, list[object]] = {}
        failures: list[BaseException] = []

        def produce(n: int) -> None:
            lines = [
                step.line for step in cream_direct_trace(cream_jobid(7000 + n), T0 + n * 10**6)
            ]
            lines = (lines * (self.EVENTS // len(lines) + 1))[: self.EVENTS]
            try:
                with LBProducer(svc.socket_path, timeout=20) as p:
                    results[n] = [p.log(line) for line in lines]
            except BaseException as e:
                failures.append(e)

        started = time.monotonic()
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(self.PRODUCERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - started
        self.assertEqual(failures, [])
        self.assertEqual(len(results), self.PRODUCERS)
        for answers in results.values():
            self.assertEqual(len(answers), self.EVENTS)
            self.assertTrue(all(a in (True, False) for a in answers), answers)
        self.assertLess(elapsed, 30)
        # The idle connections were closed from the oldest to make room.
        self.assertIn("closed to make room", svc.log_text())

    @with_service_logs
    def test_idle_timeout(self) -> None:
        svc = self.start_service("--intake-idle-timeout", "1")
        silent = harness.connect(svc.socket_path, timeout=10)
        half = harness.connect(svc.socket_path, timeout=10)
        half.sendall(b"DATE=20240131154501.000123 HOST=")
        started = time.monotonic()
        self.assertEqual(silent.recv(100), b"")
        self.assertEqual(half.recv(100), b"")
        self.assertLess(time.monotonic() - started, 5)
        silent.close()
        half.close()
        with LBProducer(svc.socket_path, timeout=10) as p:
            self.assertFalse(p.log(cream_direct_trace(cream_jobid(7100), T0)[0].line))


class PipeliningTests(ServiceTestCase):
    """
    A producer far ahead of its answers is slowed down, never refused.
    """

    EVENTS = 5000

    @with_service_logs
    def test_no_eagain_past_the_inflight_bound(self) -> None:
        svc = self.start_service("--max-inflight", "64")
        lines = [
            step.line
            for n in range(self.EVENTS // 10 + 1)
            for step in cream_direct_trace(cream_jobid(8000 + n), T0 + n * 10**6)
        ][: self.EVENTS]
        data = b"".join(line.encode() + b"\n" for line in lines)
        with harness.connect(svc.socket_path, timeout=30) as s:
            writer = threading.Thread(target=s.sendall, args=(data,))
            writer.start()
            answers = [harness.read_line(s) for _ in lines]
            writer.join(30)
        self.assertEqual(sorted(set(answers)), [b"OK"])


class OversizeTests(ServiceTestCase):
    """
    L&B's own producer writes a whole IL message before it reads the reply:
    an oversize event must be read to its end and answered, not cut off.
    """

    MAX = 64 * 1024

    @with_service_logs
    def test_il_producer_reads_e2big(self) -> None:
        svc = self.start_service("--max-event-size", str(self.MAX))
        good = cream_direct_trace(cream_jobid(7200), T0)[0].line
        big = good + " DG.X=" + "x" * (16 * self.MAX)
        with harness.connect(svc.socket_path) as s:
            # As L&B's C producer: write it all (a write error would mean EAGAIN,
            # a resend forever), then read the reply.
            s.sendall(harness.il_frame(big))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (400, 7))
            s.sendall(harness.il_frame(good))
            reply = harness.il_read_reply(s)
            assert reply is not None
            self.assertEqual((reply.major, reply.minor), (0, 0))
