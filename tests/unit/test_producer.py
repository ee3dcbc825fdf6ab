# -*- test-case-name: tests.unit.test_producer -*-
"""
Tests for L{lbtwist.client.producer}.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import socket
import threading
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.client.producer import (
    LBProducer,
    ProducerProtocol,
    ProtocolError,
    connect_producer,
    encode_line,
    error_for_code,
    parse_answer,
)
from lbtwist.core import errors


def answer_ok(line: bytes) -> bytes:
    """
    Answer C{OK} to everything, C{OK duplicate} to lines containing C{DUP} and
    the error in C{ERR=<code>} for lines that carry one.
    """
    if b"ERR=" in line:
        code = line.split(b"ERR=")[1].split()[0]
        return b"ERR " + code + b" refused by test"
    if b"DUP" in line:
        return b"OK duplicate"
    return b"OK"


class LineServer:
    """
    A real UNIX-socket line server on a thread: reads LF-terminated lines from
    each connection and answers with C{answer(line)}; records what it got.
    """

    def __init__(self, path: str, answer: Callable[[bytes], bytes | None] = answer_ok) -> None:
        self.path = path
        self.answer = answer
        self.lines: list[bytes] = []
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(5)
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(10)
                    buf = b""
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                        while b"\n" in buf:
                            line, _, buf = buf.partition(b"\n")
                            self.lines.append(line)
                            reply = self.answer(line)
                            if reply is None:
                                conn.shutdown(socket.SHUT_RDWR)
                                raise ConnectionAbortedError
                            conn.sendall(reply + b"\n")
        except OSError:
            return

    def stop(self) -> None:
        """
        Close the listener and wait for the thread.
        """
        self.stopping = True
        try:
            # Wake a blocked accept().
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(self.path)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(10)


def start_server(
    case: SynchronousTestCase, answer: Callable[[bytes], bytes | None] = answer_ok
) -> LineServer:
    """
    Start a L{LineServer} in a fresh temporary directory, stopped on cleanup.
    """
    d = case.mktemp()
    os.makedirs(d)
    server = LineServer(os.path.join(d, "s.sock"), answer)
    case.addCleanup(server.stop)
    return server


class AnswerTests(SynchronousTestCase):
    """
    L{parse_answer} and L{error_for_code}.
    """

    def test_ok(self) -> None:
        self.assertIs(parse_answer(b"OK"), False)
        self.assertIs(parse_answer("OK\r\n"), False)

    def test_duplicate(self) -> None:
        self.assertIs(parse_answer(b"OK duplicate\n"), True)

    def test_known_codes_are_typed(self) -> None:
        for code, cls in [
            (1401, errors.BrokenULM),
            (1402, errors.EventUndefined),
            (1403, errors.MessageIncomplete),
            (1404, errors.KeyDuplicity),
            (1405, errors.KeyMisuse),
            (1409, errors.JobIdFormat),
            (errno.EPERM, errors.PermissionDenied),
            (errno.EINVAL, errors.InvalidValue),
            (errno.E2BIG, errors.TooBig),
            (errno.EAGAIN, errors.TryAgain),
            (errno.ENOSPC, errors.NoSpace),
            (errno.ENOENT, errors.UnknownJob),
        ]:
            e = self.assertRaises(cls, parse_answer, f"ERR {code} the text here")
            self.assertEqual((e.code, e.message), (code, "the text here"))

    def test_unknown_code(self) -> None:
        e = self.assertRaises(errors.LBError, parse_answer, b"ERR 1499 strange")
        self.assertIs(type(e), errors.LBError)
        self.assertEqual((e.code, e.message), (1499, "strange"))

    def test_garbage(self) -> None:
        for bad in [b"", b"HELLO", b"ERR x y", b"OK dup"]:
            self.assertRaises(ProtocolError, parse_answer, bad)

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(min_value=0, max_value=99999),
        st.text(alphabet=st.characters(blacklist_characters="\r\n")),
    )
    def test_error_roundtrip(self, code: int, text: str) -> None:
        e = self.assertRaises(errors.LBError, parse_answer, f"ERR {code} {text}")
        self.assertEqual(e.code, code)
        self.assertEqual(e.message, text)
        self.assertIsInstance(e, type(error_for_code(code, "")))


class EncodeTests(SynchronousTestCase):
    """
    L{encode_line}.
    """

    def test_adds_lf_once(self) -> None:
        self.assertEqual(encode_line("A=1"), b"A=1\n")
        self.assertEqual(encode_line(b"A=1\n"), b"A=1\n")
        self.assertEqual(encode_line('A="\u00e9"'), 'A="\u00e9"\n'.encode())

    def test_inner_newline_refused(self) -> None:
        self.assertRaises(errors.InvalidValue, encode_line, "A=1\nB=2")

    def test_blank_refused(self) -> None:
        for blank in ["", "\n", b" \t\r\n"]:
            self.assertRaises(errors.InvalidValue, encode_line, blank)


class LBProducerTests(SynchronousTestCase):
    """
    L{LBProducer} against a real UNIX socket.
    """

    def test_log(self) -> None:
        server = start_server(self)
        with LBProducer(server.path, timeout=10) as p:
            self.assertIs(p.log("DG.EVNT=x"), False)
            self.assertIs(p.log(b"DG.EVNT=x DUP"), True)
            e = self.assertRaises(errors.MessageIncomplete, p.log, "ERR=1403")
            self.assertEqual(e.code, 1403)
            # The connection is still usable after an error answer.
            self.assertIs(p.log("DG.EVNT=y"), False)
        self.assertEqual(server.lines, [b"DG.EVNT=x", b"DG.EVNT=x DUP", b"ERR=1403", b"DG.EVNT=y"])

    def test_log_many(self) -> None:
        server = start_server(self)
        lines = [f"N={i}" for i in range(2000)] + ["DUP", "ERR=11", "ERR=1599", "last"]
        with LBProducer(server.path, timeout=10) as p:
            results = p.log_many(lines)
        self.assertEqual(len(results), len(lines))
        self.assertEqual(results[:2000], [False] * 2000)
        self.assertIs(results[2000], True)
        self.assertIsInstance(results[2001], errors.TryAgain)
        unknown = results[2002]
        assert isinstance(unknown, errors.LBError)
        self.assertEqual(unknown.code, 1599)
        self.assertIs(results[2003], False)
        self.assertEqual(server.lines, [line.encode() for line in lines])

    def test_log_many_empty(self) -> None:
        server = start_server(self)
        with LBProducer(server.path, timeout=10) as p:
            self.assertEqual(p.log_many([]), [])

    def test_server_closes(self) -> None:
        server = start_server(self, lambda line: None)
        p = LBProducer(server.path, timeout=10)
        self.addCleanup(p.close)
        self.assertRaises(OSError, p.log, "A=1")

    def test_no_server(self) -> None:
        path = os.path.abspath(self.mktemp())
        self.assertRaises(OSError, LBProducer, path, 1)

    def test_closed(self) -> None:
        server = start_server(self)
        p = LBProducer(server.path, timeout=10)
        p.close()
        p.close()
        self.assertRaises(ConnectionError, p.log, "A=1")


class ProducerProtocolTests(SynchronousTestCase):
    """
    L{ProducerProtocol} over a L{StringTransport}.
    """

    def connected(self) -> tuple[ProducerProtocol, StringTransport]:
        proto = ProducerProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_answers_in_order(self) -> None:
        proto, transport = self.connected()
        d1 = proto.log("A=1")
        d2 = proto.log(b"A=2\n")
        d3 = proto.log("A=3")
        self.assertEqual(transport.value(), b"A=1\nA=2\nA=3\n")
        self.assertEqual(proto.outstanding, 3)
        self.assertNoResult(d1)
        proto.dataReceived(b"OK\nOK dup")
        self.assertIs(self.successResultOf(d1), False)
        self.assertNoResult(d2)
        proto.dataReceived(b"licate\r\nERR 1409 bad job id\n")
        self.assertIs(self.successResultOf(d2), True)
        f = self.failureResultOf(d3, errors.JobIdFormat)
        self.assertEqual(f.value.message, "bad job id")
        self.assertEqual(proto.outstanding, 0)

    def test_connection_lost_fails_pending(self) -> None:
        proto, transport = self.connected()
        d1 = proto.log("A=1")
        d2 = proto.log("A=2")
        proto.dataReceived(b"OK\n")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.successResultOf(d1), False)
        self.failureResultOf(d2, ConnectionDone)
        self.failureResultOf(proto.log("A=3"), ConnectionDone)

    def test_bad_line_fails_locally(self) -> None:
        proto, transport = self.connected()
        self.failureResultOf(proto.log("A=1\nB=2"), errors.InvalidValue)
        self.assertEqual(transport.value(), b"")

    def test_unsolicited_answer_disconnects(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(b"OK\n")
        self.assertTrue(transport.disconnecting)

    def test_connect_producer_string(self) -> None:
        reactor = MemoryReactor()
        d = connect_producer(reactor, "unix:path=/nonexistent/events.sock")
        self.assertNoResult(d)
        [(address, factory, timeout, checkPID)] = reactor.unixClients
        self.assertEqual(address, "/nonexistent/events.sock")
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertIsInstance(self.successResultOf(d), ProducerProtocol)


class ProducerAgainstIntakeTests(SynchronousTestCase):
    """
    L{ProducerProtocol} talking to the real intake and a memory store, over
    an in-memory connection.
    """

    def test_log_through_intake(self) -> None:
        from twisted.internet.task import Clock
        from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

        from lbtwist.service.intake import IntakeFactory
        from lbtwist.testing import MemoryStore

        lines = [
            line
            for line in (
                importlib.resources.files("lbtwist.core")
                .joinpath("data/example-cream.ulm")
                .read_text("utf-8")
                .splitlines()
            )
            if line.strip()
        ]
        clock = Clock()
        store = MemoryStore(clock)
        factory = IntakeFactory(
            store, clock=clock, allowed_uids={1000}, peer_credentials=lambda t: (1, 1000, 1000)
        )
        server = factory.buildProtocol(None)
        client = ProducerProtocol()
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client))
        results = [client.log(line) for line in lines[:3]]
        results.append(client.log(lines[0]))
        results.append(client.log(lines[1].replace("DG.SEQCODE=", "DG.NOSEQCODE=")))
        pump.flush()
        for d in results[:3]:
            self.assertIs(self.successResultOf(d), False)
        self.assertIs(self.successResultOf(results[3]), True)
        self.failureResultOf(results[4], errors.MessageIncomplete)
        jobid = lines[0].split('DG.JOBID="')[1].split('"')[0]
        stored = self.successResultOf(store.events(jobid))
        self.assertEqual(len(stored), sum(1 for line in lines[:3] if jobid in line))
