# -*- test-case-name: tests.unit.test_producer -*-
"""
Tests for L{lbtwist.client.producer}.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.internet import backoffPolicy
from twisted.internet.error import ConnectionDone
from twisted.internet.error import ConnectionRefusedError as TxRefused
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.client.producer import (
    GaveUp,
    LBProducer,
    ProducerProtocol,
    ProtocolError,
    connect_producer,
    encode_line,
    encode_seqcode_request,
    error_for_code,
    parse_answer,
    parse_seqcode_answer,
    retry_delay,
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


def short_path(case: SynchronousTestCase) -> str:
    """
    A socket path in a fresh short temporary directory (removed on cleanup):
    trial's temporary paths can pass the ~107 bytes AF_UNIX allows.
    """
    d = tempfile.mkdtemp(prefix="lbt-")
    case.addCleanup(shutil.rmtree, d, True)
    return os.path.join(d, "events.sock")


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
        lines = [f"N={i}" for i in range(2000)] + ["DUP", "ERR=28", "ERR=1599", "last"]
        with LBProducer(server.path, timeout=10) as p:
            results = p.log_many(lines)
        self.assertEqual(len(results), len(lines))
        self.assertEqual(results[:2000], [False] * 2000)
        self.assertIs(results[2000], True)
        self.assertIsInstance(results[2001], errors.NoSpace)
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
        # A server that always hangs up before answering: retried, then given up.
        server = start_server(self, lambda line: None)
        p = LBProducer(server.path, timeout=0.2, retry_initial=0.01)
        self.addCleanup(p.close)
        self.assertRaises(GaveUp, p.log, "A=1")
        self.assertEqual(server.lines, [b"A=1"])

    def test_no_server(self) -> None:
        path = short_path(self)
        time = FakeTime()
        p = LBProducer(path, 1, clock=time.clock, sleep=time.sleep, jitter=lambda: 0.0)
        e = self.assertRaises(GaveUp, p.log, "A=1")
        self.assertEqual(e.code, errno.ENOENT)
        self.assertIn(path, e.message)

    def test_closed(self) -> None:
        server = start_server(self)
        p = LBProducer(server.path, timeout=10)
        p.close()
        p.close()
        e = self.assertRaises(errors.LBError, p.log, "A=1")
        self.assertEqual(e.code, errno.EBADF)


class FakeTime:
    """
    A monotonic clock that only L{sleep} moves; records the sleeps.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedConnect:
    """
    A C{connect} for L{LBProducer} that plays a script, one step per attempt:
    an exception to raise, or the bytes the server end answers at once on a
    fresh socket pair (C{close=True} in a tuple: then hang up).
    """

    def __init__(self, case: SynchronousTestCase, *steps: object) -> None:
        self.case = case
        self.steps = list(steps)
        self.servers: list[socket.socket] = []
        self.timeouts: list[float | None] = []

    def __call__(self, path: str, timeout: float | None) -> socket.socket:
        self.timeouts.append(timeout)
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        answer, close = step if isinstance(step, tuple) else (step, False)
        client, server = socket.socketpair()
        self.case.addCleanup(client.close)
        self.case.addCleanup(server.close)
        server.sendall(answer)
        if close:
            server.shutdown(socket.SHUT_WR)
        self.servers.append(server)
        return client

    def received(self, index: int) -> list[bytes]:
        """
        The lines the producer wrote on connection C{index}.
        """
        server = self.servers[index]
        server.setblocking(False)
        data = b""
        try:
            while chunk := server.recv(65536):
                data += chunk
        except BlockingIOError:
            pass
        return data.splitlines()


def scripted(
    case: SynchronousTestCase, *steps: object, **kwargs: object
) -> tuple[LBProducer, ScriptedConnect, FakeTime]:
    connect = ScriptedConnect(case, *steps)
    time = FakeTime()
    kwargs.setdefault("timeout", 60.0)
    producer = LBProducer(
        "/run/lbtwist/events.sock",
        clock=time.clock,
        sleep=time.sleep,
        jitter=lambda: 0.0,
        connect=connect,
        **kwargs,  # type: ignore[arg-type]
    )
    case.addCleanup(producer.close)
    return producer, connect, time


class RetryTests(SynchronousTestCase):
    """
    L{LBProducer} retries what is transient, with backoff, within its timeout.
    """

    def test_delays(self) -> None:
        self.assertEqual(
            [retry_delay(n, 0.0, initial=0.1, factor=2.0, maximum=1.0) for n in range(6)],
            [0.05, 0.1, 0.2, 0.4, 0.5, 0.5],
        )
        # Jitter scales the delay between a half and the whole of it.
        self.assertAlmostEqual(retry_delay(0, 0.999999, initial=0.1, maximum=1.0), 0.1, 5)
        self.assertEqual(retry_delay(10**6, 0.0, maximum=2.0), 1.0)

    def test_connect_errors_retried(self) -> None:
        p, connect, time = scripted(
            self,
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
            FileNotFoundError(errno.ENOENT, "No such file or directory"),
            TimeoutError("timed out"),
            b"OK\n",
        )
        self.assertIs(p.log("A=1"), False)
        self.assertEqual(time.sleeps, [0.025, 0.05, 0.1, 0.2])
        self.assertEqual(connect.received(0), [b"A=1"])
        # Each attempt may take what is left of the timeout.
        self.assertEqual(connect.timeouts, [60.0, 59.975, 59.925, 59.825, 59.625])

    def test_try_again_resends_same_bytes(self) -> None:
        p, connect, time = scripted(
            self, (b"ERR 11 too many connections\n", True), b"OK duplicate\n"
        )
        self.assertIs(p.log("A=1"), True)
        self.assertEqual(connect.received(0), [b"A=1"])
        self.assertEqual(connect.received(1), [b"A=1"])
        self.assertEqual(len(time.sleeps), 1)

    def test_lost_connection_resends(self) -> None:
        p, connect, time = scripted(self, (b"", True), b"OK\n")
        self.assertIs(p.log("A=1"), False)
        self.assertEqual(connect.received(1), [b"A=1"])

    def test_gives_up(self) -> None:
        refused = [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")] * 100
        p, connect, time = scripted(self, *refused, timeout=5.0)
        e = self.assertRaises(GaveUp, p.log, "A=1")
        self.assertEqual(e.code, errno.ECONNREFUSED)
        self.assertEqual(
            e.message, "/run/lbtwist/events.sock: gave up after 5 s: Connection refused"
        )
        # Given up when the next try would come after the deadline.
        self.assertLessEqual(time.now, 5.0)
        self.assertGreater(time.now + max(time.sleeps), 5.0)
        self.assertEqual(max(time.sleeps), 1.0)

    def test_gives_up_on_try_again(self) -> None:
        busy = [(b"ERR 11 over 1024 unanswered events\n", True)] * 100
        p, connect, time = scripted(self, *busy, timeout=3.0)
        e = self.assertRaises(GaveUp, p.log, "A=1")
        self.assertEqual(e.code, errno.EAGAIN)
        self.assertIn("ERR 11 over 1024 unanswered events", e.message)

    def test_other_errors_not_retried(self) -> None:
        p, connect, time = scripted(self, PermissionError(errno.EACCES, "Permission denied"))
        e = self.assertRaises(PermissionError, p.log, "A=1")
        self.assertEqual(e.filename, "/run/lbtwist/events.sock")
        self.assertEqual(time.sleeps, [])
        p, connect, time = scripted(self, b"ERR 28 disk full\n")
        self.assertRaises(errors.NoSpace, p.log, "A=1")
        self.assertEqual(time.sleeps, [])

    def test_no_answer_within_timeout(self) -> None:
        # The server takes the event and never answers: give up after the timeout
        # (a real wait here, so a short one).
        p = LBProducer("/x.sock", 0.05, connect=ScriptedConnect(self, b""), jitter=lambda: 0)
        self.addCleanup(p.close)
        e = self.assertRaises(GaveUp, p.log, "A=1")
        self.assertIn("no answer from the server", e.message)

    def test_window(self) -> None:
        # The server answers nothing: exactly a window's worth is written.
        p, connect, time = scripted(self, b"", window=3, timeout=0.0)
        results = p.log_many([f"N={i}" for i in range(10)])
        self.assertEqual(connect.received(0), [b"N=0", b"N=1", b"N=2"])
        self.assertEqual(len(results), 10)
        for result in results:
            self.assertIsInstance(result, GaveUp)

    def test_window_moves_with_answers(self) -> None:
        p, connect, time = scripted(self, b"OK\n" * 10, window=3)
        self.assertEqual(p.log_many([f"N={i}" for i in range(10)]), [False] * 10)
        self.assertEqual(connect.received(0), [f"N={i}".encode() for i in range(10)])

    def test_log_many_resends_refused_and_unanswered(self) -> None:
        p, connect, time = scripted(
            self,
            (b"OK\nERR 11 busy\nERR 1403 no DG.USER\n", True),
            b"OK duplicate\nOK\nOK\n",
        )
        results = p.log_many([f"N={i}" for i in range(5)])
        self.assertEqual(connect.received(0), [f"N={i}".encode() for i in range(5)])
        # N=1 (busy) and N=3, N=4 (unanswered) again, in their order.
        self.assertEqual(connect.received(1), [b"N=1", b"N=3", b"N=4"])
        self.assertEqual(results[:2], [False, True])
        self.assertIsInstance(results[2], errors.MessageIncomplete)
        self.assertEqual(results[3:], [False, False])
        self.assertEqual(len(time.sleeps), 1)

    def test_log_many_gives_up(self) -> None:
        refused = [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")] * 100
        p, connect, time = scripted(self, *refused, timeout=4.0)
        results = p.log_many(["A=1", "A=2"])
        self.assertEqual(len(results), 2)
        for result in results:
            assert isinstance(result, GaveUp)
            self.assertEqual(result.code, errno.ECONNREFUSED)
        self.assertLessEqual(time.now, 4.0)

    def test_sequence_code(self) -> None:
        code = "UI=000000:NS=0000000003:WM=000004:BH=0000000000:JSS=000002:LM=000000:LRMS=000000:APP=000000:LBS=000000"
        p, connect, time = scripted(
            self,
            (b"ERR 11 too many connections\n", True),
            f"OK {code}\nERR 2 unknown job https://x:9000/b\n".encode(),
        )
        self.assertEqual(p.sequence_code("https://x:9000/a"), code)
        e = self.assertRaises(errors.UnknownJob, p.sequence_code, "https://x:9000/b")
        self.assertEqual(e.message, "unknown job https://x:9000/b")
        self.assertEqual(
            connect.received(1), [b"?SEQCODE https://x:9000/a", b"?SEQCODE https://x:9000/b"]
        )

    def test_seqcode_wire(self) -> None:
        self.assertEqual(encode_seqcode_request("https://x:9000/a"), b"?SEQCODE https://x:9000/a\n")
        self.assertRaises(errors.InvalidValue, encode_seqcode_request, "a b")
        self.assertRaises(errors.InvalidValue, encode_seqcode_request, "")
        self.assertEqual(
            parse_seqcode_answer(b"OK no_seqcodes_with_cream\r\n"), "no_seqcodes_with_cream"
        )
        self.assertRaises(errors.PermissionDenied, parse_seqcode_answer, "ERR 1 uid 7 not allowed")
        self.assertRaises(ProtocolError, parse_seqcode_answer, "OK")
        self.assertRaises(ProtocolError, parse_seqcode_answer, "OK ")


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
        reactor = MemoryReactorClock()
        d = connect_producer(reactor, "unix:path=/nonexistent/events.sock")
        self.assertNoResult(d)
        [(address, factory, timeout, checkPID)] = reactor.unixClients
        self.assertEqual(address, "/nonexistent/events.sock")
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertIsInstance(self.successResultOf(d), ProducerProtocol)


class ProducerProtocolRetryTests(SynchronousTestCase):
    """
    L{ProducerProtocol} resends events answered C{ERR 11} on its clock.
    """

    def connected(self, timeout: float = 10.0) -> tuple[ProducerProtocol, StringTransport, Clock]:
        clock = Clock()
        proto = ProducerProtocol(
            clock, timeout=timeout, policy=backoffPolicy(1.0, 4.0, 2.0, jitter=lambda: 0)
        )
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_try_again_resent(self) -> None:
        proto, transport, clock = self.connected()
        d1 = proto.log("A=1")
        d2 = proto.log("A=2")
        transport.clear()
        proto.dataReceived(b"ERR 11 over 1024 unanswered events\nOK\n")
        self.assertIs(self.successResultOf(d2), False)
        self.assertNoResult(d1)
        self.assertEqual(proto.outstanding, 1)
        clock.advance(0.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"A=1\n")
        proto.dataReceived(b"ERR 11 busy\n")
        clock.advance(2)
        self.assertEqual(transport.value(), b"A=1\nA=1\n")
        proto.dataReceived(b"OK duplicate\n")
        self.assertIs(self.successResultOf(d1), True)
        self.assertEqual(proto.outstanding, 0)

    def test_try_again_gives_up(self) -> None:
        proto, transport, clock = self.connected(timeout=5.0)
        d = proto.log("A=1")
        proto.dataReceived(b"ERR 11 busy\n")  # resent at 1
        clock.advance(1)
        proto.dataReceived(b"ERR 11 busy\n")  # resent at 3
        clock.advance(2)
        proto.dataReceived(b"ERR 11 busy\n")  # 3 + 4 > 5: given up
        f = self.failureResultOf(d, GaveUp)
        self.assertEqual(f.value.code, errno.EAGAIN)
        self.assertEqual(f.value.message, "intake: gave up after 5 s: ERR 11 busy")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lost_while_waiting(self) -> None:
        proto, transport, clock = self.connected()
        d = proto.log("A=1")
        proto.dataReceived(b"ERR 11 busy\n")
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_clock_no_retry(self) -> None:
        proto = ProducerProtocol()
        proto.makeConnection(StringTransport())
        d = proto.log("A=1")
        proto.dataReceived(b"ERR 11 busy\n")
        self.failureResultOf(d, errors.TryAgain)


class ConnectProducerRetryTests(SynchronousTestCase):
    """
    L{connect_producer} retries a refused or missing socket with backoff.
    """

    policy = staticmethod(backoffPolicy(1.0, 4.0, 2.0, jitter=lambda: 0))

    def refuse(self, reactor: MemoryReactorClock, index: int) -> None:
        factory = reactor.unixClients[index][1]
        factory.clientConnectionFailed(None, Failure(TxRefused()))

    def test_retried_then_connected(self) -> None:
        reactor = MemoryReactorClock()
        d = connect_producer(reactor, "unix:path=/run/events.sock", policy=self.policy)
        self.refuse(reactor, 0)
        self.assertEqual(len(reactor.unixClients), 1)
        reactor.advance(1)
        self.assertEqual(len(reactor.unixClients), 2)
        self.refuse(reactor, 1)
        reactor.advance(1.5)
        self.assertEqual(len(reactor.unixClients), 2)
        reactor.advance(0.5)
        [_, _, (address, factory, _, _)] = reactor.unixClients
        self.assertEqual(address, "/run/events.sock")
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        producer = self.successResultOf(d)
        self.assertIsInstance(producer, ProducerProtocol)
        # The protocol retries ERR 11 on the same clock.
        self.assertIs(producer.clock, reactor)

    def test_gives_up(self) -> None:
        reactor = MemoryReactorClock()
        d = connect_producer(
            reactor, "unix:path=/run/events.sock", policy=self.policy, timeout=10.0
        )
        # Tries at 0, 1, 3 and 7; the next one, at 11, would be too late.
        for i, delay in enumerate([1, 2, 4]):
            self.refuse(reactor, i)
            self.assertNoResult(d)
            reactor.advance(delay)
        self.refuse(reactor, 3)
        f = self.failureResultOf(d, GaveUp)
        self.assertEqual(f.value.code, errno.ECONNREFUSED)
        self.assertEqual(
            f.value.message,
            "unix:path=/run/events.sock: gave up after 10 s: Connection refused",
        )
        self.assertEqual(len(reactor.unixClients), 4)

    def test_permanent_error_not_retried(self) -> None:
        from twisted.internet.error import ConnectError

        reactor = MemoryReactorClock()
        d = connect_producer(reactor, "unix:path=/run/events.sock", policy=self.policy)
        reactor.unixClients[0][1].clientConnectionFailed(
            None, Failure(ConnectError(errno.EACCES, "Permission denied"))
        )
        self.failureResultOf(d, ConnectError)
        self.assertEqual(reactor.getDelayedCalls(), [])


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


GLITE_JOB = "https://lb.example.org:9000/Hq3tK8vWZ0bQy1n2m3p4rA"
CREAM_JOB = "https://ce.example.org:9000/CREAM812461375"


def seq(ns: int = 0, wm: int = 0, jss: int = 0) -> str:
    return (
        f"UI=000000:NS={ns:010d}:WM={wm:06d}:BH=0000000000:JSS={jss:06d}"
        ":LM=000000:LRMS=000000:APP=000000:LBS=000000"
    )


def event_line(jobid: str, seqcode: str, date: int, event: str = "UserTag") -> str:
    from lbtwist.core.events import format_event, make_event

    fields = (
        {"name": "a", "value": str(date)}
        if event == "UserTag"
        else {"ns": "ns", "jobtype": "SIMPLE"}
    )
    return format_event(
        make_event(
            event,
            jobid=jobid,
            date=1_710_408_413_000_000 + date,
            host="node.example.org",
            user="/CN=Jana",
            source="NetworkServer",
            seqcode=seqcode,
            **fields,
        )
    )


class LastSeqcodeTests(SynchronousTestCase):
    """
    C{last_seqcode} of the memory and SQLite stores: the code of the job's event
    that sorts last, whatever the arrival order.
    """

    def stores(self) -> list[object]:
        from twisted.internet.task import Clock

        from lbtwist.store.batch import run_now
        from lbtwist.store.sqlite import SQLiteStore
        from lbtwist.testing import MemoryStore

        sqlite = SQLiteStore(os.path.join(self.mktemp() + ".db"), clock=Clock(), runner=run_now)
        self.addCleanup(sqlite.close)
        return [MemoryStore(Clock()), sqlite]

    def fill(self, store: object) -> None:
        from lbtwist.core.events import parse_event

        lines = [
            event_line(GLITE_JOB, seq(ns=1), 0, "RegJob"),
            event_line(GLITE_JOB, seq(ns=1, wm=2, jss=1), 3),
            # Arrives last, sorts before the one above.
            event_line(GLITE_JOB, seq(ns=1, wm=1), 9),
            event_line(CREAM_JOB, "no_seqcodes_with_cream_execute_0_1", 5, "RegJob"),
            event_line(CREAM_JOB, "no_seqcodes_with_cream_execute_0_2", 7),
            event_line(CREAM_JOB, "no_seqcodes_with_cream_execute_0_0", 6),
        ]
        for line in lines:
            results = self.successResultOf(store.store([(line, parse_event(line))]))  # type: ignore[attr-defined]
            self.assertFalse(results[0].duplicate)

    def test_last_seqcode(self) -> None:
        for store in self.stores():
            self.fill(store)
            last = store.last_seqcode  # type: ignore[attr-defined]
            self.assertEqual(self.successResultOf(last(GLITE_JOB)), seq(ns=1, wm=2, jss=1))
            self.assertEqual(
                self.successResultOf(last(CREAM_JOB)), "no_seqcodes_with_cream_execute_0_2"
            )
            self.assertIsNone(self.successResultOf(last("https://lb.example.org:9000/nope")))


class SequenceCodeRequestTests(SynchronousTestCase):
    """
    The intake answers C{?SEQCODE <jobid>} with the job's last stored code.
    """

    def connect(self, uid: int = 1000) -> tuple[Any, StringTransport, Any]:
        from twisted.internet.task import Clock

        from lbtwist.service.intake import IntakeFactory
        from lbtwist.testing import MemoryStore

        clock = Clock()
        store = MemoryStore(clock)
        factory = IntakeFactory(
            store, clock=clock, allowed_uids={1000}, peer_credentials=lambda t: (1, uid, uid)
        )
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_answers_last_code(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(
            (
                event_line(GLITE_JOB, seq(ns=1), 0, "RegJob")
                + "\n"
                + event_line(GLITE_JOB, seq(ns=1, wm=1), 1)
                + "\n"
            ).encode()
        )
        self.assertEqual(transport.value(), b"OK\nOK\n")
        transport.clear()
        proto.dataReceived(f"?SEQCODE {GLITE_JOB}\n?SEQCODE {CREAM_JOB}\r\n".encode())
        self.assertEqual(
            transport.value(),
            f"OK {seq(ns=1, wm=1)}\nERR 2 unknown job {CREAM_JOB}\n".encode(),
        )
        self.assertEqual(parse_seqcode_answer(transport.value().split(b"\n")[0]), seq(ns=1, wm=1))

    def test_in_order_with_events(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(
            f"?SEQCODE {GLITE_JOB}\n{event_line(GLITE_JOB, seq(ns=1), 0, 'RegJob')}\n"
            f"?SEQCODE {GLITE_JOB}\n".encode()
        )
        # Answers in request order; each request reads what is stored when it arrives.
        lines = transport.value().split(b"\n")
        self.assertEqual(lines[0], f"ERR 2 unknown job {GLITE_JOB}".encode())
        self.assertEqual(lines[1], b"OK")
        self.assertEqual(len(lines), 4)

    def test_malformed(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(b"?SEQCODE\n?SEQCODE \n?SEQCODE a b\n?SEQCODEx y\n")
        lines = transport.value().split(b"\n")
        self.assertEqual(lines[:3], [b"ERR 22 usage: ?SEQCODE <jobid>"] * 3)
        # Another first word is no request: an event line, and a broken one.
        self.assertTrue(lines[3].startswith(b"ERR 14"), lines[3])
        self.assertFalse(transport.disconnecting)

    def test_not_a_producer(self) -> None:
        proto, transport, clock = self.connect(uid=4321)
        proto.dataReceived(f"?SEQCODE {GLITE_JOB}\n".encode())
        self.assertEqual(transport.value(), b"ERR 1 producer uid 4321 not allowed\n")
        self.assertTrue(transport.disconnecting)

    def test_not_in_other_framings(self) -> None:
        # Only the line framing has requests: a logd message carrying one is an event.
        from lbtwist.core import ilproto

        proto, transport, clock = self.connect()
        proto.dataReceived(ilproto.encode_logd(f"?SEQCODE {GLITE_JOB}\n".encode()))
        self.assertNotIn(b"OK", transport.value())
