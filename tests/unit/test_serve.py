# -*- test-case-name: tests.unit.test_serve -*-
"""
Tests for the proxy's serve socket (L{lbtwist.service.serve}) and its blocking
client (L{lbtwist.client.servesock}).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.client.servesock import ServeClient
from lbtwist.core.errors import LBError
from lbtwist.core.events import make_event
from lbtwist.core.unparse import unparse_event
from lbtwist.service.intake import IntakeFactory
from lbtwist.service.serve import ServeFactory, ServeProtocol, make_requests
from lbtwist.testing import MemoryStore

JOBID = "https://lb.example.org:9000/ServeJob000000000001"
UID = 4711
SEQ = "UI=000000:NS=0000000001:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
SEQ2 = SEQ.replace("WM=000000", "WM=000002")


def events() -> list[Any]:
    common: dict[str, Any] = {
        "jobid": JOBID,
        "host": "wms.example.org",
        "user": "/CN=Jana",
    }
    reg = make_event(
        "RegJob", date=1_000_000, source="NetworkServer", seqcode=SEQ,
        ns="ns", jobtype="SIMPLE", **common,
    )  # fmt: skip
    # Logged second but earlier by its code: the later code wins, not the arrival.
    deq = make_event(
        "DeQueued", date=3_000_000, source="WorkloadManager", seqcode=SEQ2,
        queue="q", local_jobid="l", **common,
    )  # fmt: skip
    deq1 = make_event(
        "DeQueued", date=2_000_000, source="WorkloadManager",
        seqcode=SEQ.replace("WM=000000", "WM=000001"), queue="q", local_jobid="l", **common,
    )  # fmt: skip
    return [reg, deq, deq1]


def filled_store(test: SynchronousTestCase) -> MemoryStore:
    store = MemoryStore(Clock())
    for ev in events():
        test.successResultOf(store.store([(unparse_event(ev), ev)]))
    return store


def connect(factory: ServeFactory) -> tuple[ServeProtocol, StringTransport]:
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def factory_for(store: Any, uid: int = UID, **kw: Any) -> ServeFactory:
    return ServeFactory(
        make_requests(store, **kw),
        clock=Clock(),
        allowed_uids={UID},
        peer_credentials=lambda transport: (1, uid, 1),
    )


class ServeRequestTests(SynchronousTestCase):
    """
    The requests of the serve socket, one answer line each, in order.
    """

    def test_seqcode_is_the_last_by_order(self) -> None:
        proto, transport = connect(factory_for(filled_store(self)))
        proto.dataReceived(f"SEQCODE {JOBID}\n".encode())
        self.assertEqual(transport.value(), f"OK {SEQ2}\n".encode())

    def test_status_and_events(self) -> None:
        proto, transport = connect(factory_for(filled_store(self)))
        proto.dataReceived(f"STATUS {JOBID}\nEVENTS {JOBID}\n".encode())
        status_line, events_line = transport.value().decode().splitlines()
        status = json.loads(status_line.removeprefix("OK "))
        self.assertEqual((status["jobId"], status["state"]), (JOBID, "Waiting"))
        lines = json.loads(events_line.removeprefix("OK "))
        self.assertEqual(len(lines), 3)
        self.assertIn('DG.EVNT="RegJob"', lines[0])

    def test_unknown_job_and_request(self) -> None:
        proto, transport = connect(factory_for(filled_store(self)))
        proto.dataReceived(b"STATUS https://lb.example.org:9000/none\nFLY away\nSEQCODE\n")
        answers = transport.value().decode().splitlines()
        self.assertTrue(answers[0].startswith("ERR 2 no such job"), answers)
        self.assertEqual(answers[1], "ERR 22 unknown request FLY")
        self.assertTrue(answers[2].startswith("ERR 22 "), answers)

    def test_long_request_line(self) -> None:
        proto, transport = connect(factory_for(filled_store(self)))
        proto.dataReceived(b"STATUS " + b"x" * 5000 + b"\n")
        self.assertEqual(transport.value(), b"ERR 7 request line over 4096 bytes\n")
        self.assertTrue(transport.disconnecting)

    def test_answer_limit(self) -> None:
        proto, transport = connect(factory_for(filled_store(self), max_answer=100))
        proto.dataReceived(f"EVENTS {JOBID}\n".encode())
        self.assertTrue(transport.value().startswith(b"ERR 7 answer of "), transport.value())

    def test_uid_refused(self) -> None:
        proto, transport = connect(factory_for(filled_store(self), uid=99))
        self.assertEqual(transport.value(), b"ERR 1 uid 99 not allowed\n")
        self.assertTrue(transport.disconnecting)

    def test_seqcode_on_event_socket(self) -> None:
        """
        The same handler answers C{SEQCODE} on the event socket (line framing).
        """
        store = filled_store(self)
        intake = IntakeFactory(
            store,
            clock=Clock(),
            allowed_uids={UID},
            peer_credentials=lambda transport: (1, UID, 1),
            line_requests={b"SEQCODE": make_requests(store)[b"SEQCODE"]},
        )
        proto = intake.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(f"SEQCODE {JOBID}\n".encode())
        self.assertEqual(transport.value(), f"OK {SEQ2}\n".encode())


class ServeClientTests(SynchronousTestCase):
    """
    The blocking client against a one-shot server on a real UNIX socket.
    """

    def serve(self, answers: list[bytes]) -> str:
        # AF_UNIX paths are short: a directory under the system's temp dir.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        self.requests: list[bytes] = []

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                for answer in answers:
                    self.requests.append(conn.recv(4096))
                    conn.sendall(answer)
            listener.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        return path

    def test_requests(self) -> None:
        path = self.serve([b"OK " + SEQ.encode() + b"\n", b'OK {"state":"Running"}\n'])
        with ServeClient(path, timeout=5) as client:
            self.assertEqual(client.seqcode(JOBID), SEQ)
            self.assertEqual(client.status(JOBID), {"state": "Running"})
        self.assertEqual(
            self.requests, [f"SEQCODE {JOBID}\n".encode(), f"STATUS {JOBID}\n".encode()]
        )

    def test_error(self) -> None:
        path = self.serve([b"ERR 2 no such job\n"])
        with ServeClient(path, timeout=5) as client:
            e = self.assertRaises(LBError, client.events, JOBID)
        self.assertEqual((e.code, e.message), (2, "no such job"))

    def test_missing_socket_named(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        missing = os.path.join(directory, "none.sock")
        e = self.assertRaises(OSError, ServeClient, missing)
        self.assertIn(missing, str(e))
