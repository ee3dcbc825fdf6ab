# -*- test-case-name: tests.unit.test_intake -*-
"""
Tests for L{lbtwist.service.intake}.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core import ilproto
from lbtwist.core.errors import LBError, NoSpace, TryAgain
from lbtwist.core.ilproto import ILReply, ILReplyDecoder
from lbtwist.service.intake import IntakeFactory, IntakeProtocol, detect_framing, so_peercred
from tests import fixtures

LINE = (
    'DATE=20080928052815.033466 HOST="bohr3727.tier2.hep.manchester.ac.uk" PROG=edg-wms '
    'LVL=SYSTEM DG.PRIORITY=0 DG.SOURCE="LRMS" DG.SRC_INSTANCE="" DG.EVNT="Running" '
    'DG.JOBID="https://devel15.cnaf.infn.it:9000/rReV1TpJ5oY0Z1_M4NBfHw" '
    'DG.SEQCODE="UI=000000:NS=0000000004:WM=000005:BH=0000000000:JSS=000003:LM=000000:'
    'LRMS=000001:APP=000000:LBS=000000" DG.USER="/C=IT/O=INFN/CN=Vincenzo Miccio" '
    'DG.RUNNING.NODE="bohr3727.tier2.hep.manchester.ac.uk"'
)
EV = LINE.encode() + b"\n"
NO_USER = LINE.replace(' DG.USER="/C=IT/O=INFN/CN=Vincenzo Miccio"', "").encode() + b"\n"
ANONYMOUS = LINE.replace("/C=IT/O=INFN/CN=Vincenzo Miccio", "anonymous").encode() + b"\n"

UID = 1000
GID = 1000


@attrs.frozen
class FakeResult:
    duplicate: bool = False


class FakeStore:
    """
    A store whose Deferreds the test fires by hand.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, Any]], Deferred[Any]]] = []

    def store(self, items: list[tuple[str, Any]]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((items, d))
        return d

    def fire(self, index: int = 0, results: list[object] | None = None) -> None:
        items, d = self.calls[index]
        d.callback(results if results is not None else [FakeResult() for _ in items])

    def fire_all(self) -> None:
        for i, (_, d) in enumerate(self.calls):
            if not d.called:
                self.fire(i)


def make_factory(store: Any = None, **kw: Any) -> IntakeFactory:
    kw.setdefault("clock", Clock())
    kw.setdefault("allowed_uids", {UID})
    kw.setdefault("peer_credentials", lambda transport: (42, UID, GID))
    return IntakeFactory(store if store is not None else FakeStore(), **kw)


def connect(factory: IntakeFactory) -> tuple[IntakeProtocol, StringTransport]:
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def il_replies(data: bytes) -> list[ILReply]:
    return ILReplyDecoder().feed(data)


class LineFramingTests(SynchronousTestCase):
    """
    The default line framing.
    """

    def setUp(self) -> None:
        self.store = FakeStore()
        self.factory = make_factory(self.store)
        self.proto, self.transport = connect(self.factory)

    def test_ok_only_after_store_fires(self) -> None:
        self.proto.dataReceived(EV)
        self.assertEqual(self.transport.value(), b"")
        [(items, _)] = self.store.calls
        self.assertEqual(len(items), 1)
        line, event = items[0]
        self.assertEqual(line, LINE)
        self.assertEqual(event.type, "Running")
        self.store.fire()
        self.assertEqual(self.transport.value(), b"OK\n")
        self.assertEqual(self.factory.stats.accepted, 1)

    def test_duplicate(self) -> None:
        self.proto.dataReceived(EV)
        self.store.fire(results=[FakeResult(duplicate=True)])
        self.assertEqual(self.transport.value(), b"OK duplicate\n")
        self.assertEqual(self.factory.stats.duplicates, 1)

    def test_pipelining_in_order(self) -> None:
        self.proto.dataReceived(EV * 3)
        self.proto.dataReceived(EV)
        self.assertEqual([len(items) for items, _ in self.store.calls], [3, 1])
        self.store.fire(1, [FakeResult(duplicate=True)])
        self.assertEqual(self.transport.value(), b"")
        self.store.fire(0)
        self.assertEqual(self.transport.value(), b"OK\nOK\nOK\nOK duplicate\n")

    def test_split_line(self) -> None:
        self.proto.dataReceived(EV[:10])
        self.assertEqual(self.store.calls, [])
        self.proto.dataReceived(EV[10:])
        self.store.fire()
        self.assertEqual(self.transport.value(), b"OK\n")

    def test_crlf_and_blank_lines(self) -> None:
        self.proto.dataReceived(b"\n  \r\n" + EV[:-1] + b"\r\n")
        [(items, _)] = self.store.calls
        self.assertEqual(items[0][0], LINE)
        self.store.fire()
        self.assertEqual(self.transport.value(), b"OK\n")

    def test_bad_event_answered_in_order(self) -> None:
        self.proto.dataReceived(EV + b"garbage\n" + EV)
        self.assertEqual(self.transport.value(), b"")
        self.store.fire()
        answers = self.transport.value().split(b"\n")
        self.assertEqual(answers[0], b"OK")
        self.assertTrue(answers[1].startswith(b"ERR 14"), answers[1])
        self.assertEqual(answers[2:], [b"OK", b""])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.factory.stats.errors, 1)

    def test_error_alone_is_answered_at_once(self) -> None:
        self.proto.dataReceived(b"NOTULM\n")
        self.assertTrue(self.transport.value().startswith(b"ERR 14"))
        self.assertEqual(self.store.calls, [])

    def test_user_required(self) -> None:
        self.proto.dataReceived(NO_USER + ANONYMOUS)
        self.assertEqual(self.store.calls, [])
        answers = self.transport.value().splitlines()
        self.assertEqual(len(answers), 2)
        for answer in answers:
            self.assertTrue(answer.startswith(b"ERR 1 "), answer)

    def test_binary_garbage(self) -> None:
        self.proto.dataReceived(b"\xff\xfe\x80garbage\n" + EV[:5] + b"\0" + EV[5:])
        self.assertEqual(
            self.transport.value(),
            b"ERR 1401 invalid UTF-8 at byte 0\n" * 1 + b"ERR 1401 NUL byte at position 5\n",
        )
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(EV)
        self.store.fire()
        self.assertTrue(self.transport.value().endswith(b"\nOK\n"))

    def test_answer_is_one_line(self) -> None:
        self.proto.dataReceived(EV)
        self.store.fire(results=[LBError("bad\nthing  here", 1402)])
        self.assertEqual(self.transport.value(), b"ERR 1402 bad thing here\n")

    def test_connection_lost_before_answer(self) -> None:
        self.proto.dataReceived(EV)
        self.proto.connectionLost(Exception("gone"))
        self.assertEqual(self.factory.stats.connections, 0)
        self.store.fire()
        self.assertEqual(self.transport.value(), b"")


class BoundsTests(SynchronousTestCase):
    """
    Line size, in-flight answers and connection count are bounded.
    """

    def test_oversized_line_read_to_its_end(self) -> None:
        """
        An oversize line is read and dropped up to its LF, then answered
        E2BIG in its place; the connection goes on.
        """
        store = FakeStore()
        factory = make_factory(store, max_line=len(LINE))
        proto, transport = connect(factory)
        proto.dataReceived(EV + b"x" * (len(LINE) + 1))
        proto.dataReceived(b"y" * 3 * len(LINE))
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"zz\n" + EV)
        store.fire_all()
        self.assertEqual(
            transport.value(),
            b"OK\nERR %d event line over %d bytes\nOK\n" % (errno.E2BIG, len(LINE)),
        )
        self.assertFalse(transport.disconnecting)
        self.assertEqual(factory.stats.broken, 0)
        self.assertEqual([len(items) for items, _ in store.calls], [1, 1])

    def test_oversized_line_with_lf(self) -> None:
        store = FakeStore()
        factory = make_factory(store, max_line=10)
        proto, transport = connect(factory)
        proto.dataReceived(b"A=" + b"x" * 20 + b"\nB=" + b"y" * 20 + b"\r\n")
        self.assertEqual(transport.value(), b"ERR 7 event line over 10 bytes\n" * 2)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(store.calls, [])

    def test_max_line_exact_is_accepted(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store, max_line=len(LINE)))
        proto.dataReceived(EV)
        store.fire()
        self.assertEqual(transport.value(), b"OK\n")

    def test_inflight_bound_pauses_reading(self) -> None:
        """
        Past the in-flight bound the connection is not read (no EAGAIN
        answers); reading resumes once the answers are written.
        """
        store = FakeStore()
        factory = make_factory(store, max_inflight=2)
        proto, transport = connect(factory)
        proto.dataReceived(EV * 3)
        [(items, _)] = store.calls
        self.assertEqual(len(items), 3)
        self.assertEqual(transport.producerState, "paused")
        store.fire()
        self.assertEqual(transport.value(), b"OK\nOK\nOK\n")
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(factory.stats.errors, 0)

    def test_inflight_resumes_below_half(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store, max_inflight=4))
        for _ in range(5):
            proto.dataReceived(EV)
        self.assertEqual(len(store.calls), 5)
        self.assertEqual(transport.producerState, "paused")
        store.fire(0)
        store.fire(1)
        self.assertEqual(transport.producerState, "paused")
        store.fire(2)
        self.assertEqual(transport.producerState, "producing")
        store.fire_all()
        self.assertEqual(transport.value(), b"OK\n" * 5)

    def test_inflight_counts_answers_waiting_in_order(self) -> None:
        """
        Error answers queued behind an unanswered event count too.
        """
        store = FakeStore()
        proto, transport = connect(make_factory(store, max_inflight=2))
        proto.dataReceived(EV + b"garbage\n" * 2)
        self.assertEqual(transport.producerState, "paused")
        store.fire()
        self.assertEqual(transport.producerState, "producing")

    def test_max_fields(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store, max_fields=5))
        proto.dataReceived(EV)
        self.assertEqual(store.calls, [])
        self.assertTrue(transport.value().startswith(b"ERR "))

    def test_too_many_connections_line(self) -> None:
        store = FakeStore()
        factory = make_factory(store, max_connections=1)
        busy, _ = connect(factory)
        busy.dataReceived(EV)
        proto, transport = connect(factory)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(EV)
        self.assertEqual(transport.value(), b"ERR 11 too many connections\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(store.calls), 1)
        self.assertEqual(factory.stats.refused, 1)
        self.assertEqual(factory.stats.connections, 1)

    def test_too_many_connections_il(self) -> None:
        factory = make_factory(max_connections=1)
        busy, _ = connect(factory)
        busy.dataReceived(EV)
        proto, transport = connect(factory)
        proto.dataReceived(ilproto.encode_il_msg(EV))
        self.assertEqual(
            il_replies(transport.value()),
            [ILReply(ilproto.LB_DBERR, errno.EAGAIN, "too many connections")],
        )
        self.assertTrue(transport.disconnecting)

    def test_too_many_connections_logd(self) -> None:
        factory = make_factory(max_connections=1)
        busy, _ = connect(factory)
        busy.dataReceived(EV)
        proto, transport = connect(factory)
        proto.dataReceived(b"DG")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"LOG")
        self.assertEqual(transport.value(), ilproto.encode_logd_answer(errno.EAGAIN))
        self.assertTrue(transport.disconnecting)

    def test_refused_silent_connection_times_out(self) -> None:
        clock = Clock()
        factory = make_factory(max_connections=0, clock=clock, refusal_grace=2.0)
        proto, transport = connect(factory)
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"ERR 11 too many connections\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Exception("closed"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_slot_freed_on_close(self) -> None:
        store = FakeStore()
        factory = make_factory(store, max_connections=1)
        first, _ = connect(factory)
        first.connectionLost(Exception("bye"))
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        store.fire()
        self.assertEqual(transport.value(), b"OK\n")

    def test_refused_connection_lost_cancels_timer(self) -> None:
        clock = Clock()
        factory = make_factory(max_connections=0, clock=clock)
        proto, _ = connect(factory)
        proto.connectionLost(Exception("bye"))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(factory.stats.connections, 0)


class IdleTests(SynchronousTestCase):
    """
    Silent or half-written connections are closed after the idle timeout and
    cannot lock active producers out.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.factory = make_factory(self.store, clock=self.clock, idle_timeout=60.0)

    def test_silent_connection_closed(self) -> None:
        proto, transport = connect(self.factory)
        self.clock.advance(59.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.factory.stats.connections, 0)
        self.assertEqual(self.factory.stats.idle_closed, 1)
        proto.connectionLost(Exception("closed"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_half_written_closed(self) -> None:
        """
        Bytes that complete no message do not count as activity.
        """
        proto, transport = connect(self.factory)
        proto.dataReceived(EV)
        self.store.fire()
        self.clock.advance(30)
        for _ in range(5):
            proto.dataReceived(EV[:10])
            self.clock.advance(5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"OK\n")

    def test_complete_messages_keep_it_open(self) -> None:
        proto, transport = connect(self.factory)
        for _ in range(5):
            self.clock.advance(50)
            proto.dataReceived(EV)
            self.store.fire_all()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"OK\n" * 5)

    def test_not_closed_while_answers_owed(self) -> None:
        proto, transport = connect(self.factory)
        proto.dataReceived(EV)
        self.clock.advance(200)
        self.assertFalse(transport.disconnecting)
        self.store.fire()
        self.assertEqual(transport.value(), b"OK\n")
        self.clock.advance(60)
        self.assertTrue(transport.disconnecting)

    def test_idle_connections_make_room(self) -> None:
        """
        When the connections are all taken, the one idle the longest is
        closed for a new one; connections owed an answer are kept.
        """
        factory = make_factory(self.store, clock=self.clock, max_connections=3)
        busy, busy_t = connect(factory)
        busy.dataReceived(EV)
        oldest, oldest_t = connect(factory)
        self.clock.advance(1)
        newer, newer_t = connect(factory)
        self.clock.advance(1)
        proto, transport = connect(factory)
        self.assertTrue(oldest_t.disconnecting)
        self.assertFalse(newer_t.disconnecting or busy_t.disconnecting)
        self.assertEqual(factory.stats.evicted, 1)
        self.assertEqual(factory.stats.connections, 3)
        oldest.connectionLost(Exception("closed"))
        self.assertEqual(factory.stats.connections, 3)
        proto.dataReceived(EV)
        self.store.fire_all()
        self.assertEqual(transport.value(), b"OK\n")
        self.assertEqual(busy_t.value(), b"OK\n")

    def test_many_idle_connections_do_not_lock_out(self) -> None:
        factory = make_factory(self.store, clock=self.clock, max_connections=8)
        idle = [connect(factory) for _ in range(20)]
        self.assertEqual(sum(not t.disconnecting for _, t in idle), 8)
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        self.store.fire_all()
        self.assertEqual(transport.value(), b"OK\n")
        self.assertEqual(factory.stats.refused, 0)


class LineRequestTests(SynchronousTestCase):
    """
    Non-event request lines of the line framing go to their handler and are
    answered in their place in the order.
    """

    def test_request_answered_in_order(self) -> None:
        store = FakeStore()
        seen: list[bytes] = []
        later: Deferred[tuple[int, str]] = Deferred()

        def handler(proto: IntakeProtocol, line: bytes) -> Deferred[tuple[int, str]]:
            seen.append(line)
            return later

        factory = make_factory(store, line_requests={b"LASTSEQ": handler})
        proto, transport = connect(factory)
        proto.dataReceived(EV + b"LASTSEQ https://x:9000/a\n" + EV)
        self.assertEqual(seen, [b"LASTSEQ https://x:9000/a"])
        self.assertEqual([len(items) for items, _ in store.calls], [2])
        store.fire_all()
        self.assertEqual(transport.value(), b"OK\n")
        later.callback((0, "OK UI=1"))
        self.assertEqual(transport.value(), b"OK\nOK UI=1\nOK\n")

    def test_failed_request(self) -> None:
        def handler(proto: IntakeProtocol, line: bytes) -> tuple[int, str]:
            raise TryAgain("busy")

        proto, transport = connect(make_factory(line_requests={b"LASTSEQ": handler}))
        proto.dataReceived(b"LASTSEQ x\n")
        self.assertEqual(transport.value(), b"ERR 11 busy\n")


class PeerCredentialTests(SynchronousTestCase):
    """
    Producers are authorized by the socket's peer credentials.
    """

    def test_uid_refused(self) -> None:
        store = FakeStore()
        factory = make_factory(store, peer_credentials=lambda t: (1, 1234, 1234))
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        self.assertEqual(transport.value(), b"ERR 1 producer uid 1234 not allowed\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(store.calls, [])
        self.assertEqual(factory.stats.refused, 1)
        self.assertEqual(factory.stats.connections, 0)

    def test_uid_refused_il(self) -> None:
        factory = make_factory(peer_credentials=lambda t: (1, 1234, 1234))
        proto, transport = connect(factory)
        proto.dataReceived(ilproto.encode_il_msg(EV))
        [reply] = il_replies(transport.value())
        self.assertEqual((reply.major, reply.minor), (ilproto.LB_PERM, errno.EPERM))

    def test_uid_refused_logd(self) -> None:
        factory = make_factory(peer_credentials=lambda t: (1, 1234, 1234))
        proto, transport = connect(factory)
        proto.dataReceived(ilproto.encode_logd(EV))
        self.assertEqual(transport.value(), ilproto.encode_logd_answer(errno.EPERM))

    def test_gid_allowed(self) -> None:
        store = FakeStore()
        factory = make_factory(store, peer_credentials=lambda t: (1, 1234, 77), allowed_gids={77})
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        store.fire()
        self.assertEqual(transport.value(), b"OK\n")

    def test_unknown_credentials_refused(self) -> None:
        factory = make_factory(peer_credentials=lambda t: None)
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        self.assertEqual(transport.value(), b"ERR 1 producer credentials unavailable\n")

    def test_default_uids(self) -> None:
        factory = IntakeFactory(FakeStore(), clock=Clock())
        self.assertEqual(factory.allowed_uids, {os.getuid(), 0})

    def test_so_peercred_socketpair(self) -> None:
        if not hasattr(socket, "SO_PEERCRED"):
            raise self.skipTest("no SO_PEERCRED here")
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class Transport:
            def getHandle(self) -> socket.socket:
                return a

        self.assertEqual(so_peercred(Transport()), (os.getpid(), os.getuid(), os.getgid()))

    def test_so_peercred_not_a_socket(self) -> None:
        self.assertIsNone(so_peercred(StringTransport()))


class ILFramingTests(SynchronousTestCase):
    """
    L&B's IL framing on the intake socket.
    """

    def setUp(self) -> None:
        self.store = FakeStore()
        self.factory = make_factory(self.store, max_line=len(LINE) + 10)
        self.proto, self.transport = connect(self.factory)

    def test_ok(self) -> None:
        self.proto.dataReceived(ilproto.encode_il_msg(EV) * 2)
        [(items, _)] = self.store.calls
        self.assertEqual([line for line, _ in items], [LINE, LINE])
        self.assertEqual(self.transport.value(), b"")
        self.store.fire()
        self.assertEqual(il_replies(self.transport.value()), [ILReply(0, 0, "OK")] * 2)

    def test_byte_by_byte(self) -> None:
        data = ilproto.encode_il_msg(EV)
        for i in range(len(data)):
            self.proto.dataReceived(data[i : i + 1])
        self.assertEqual(len(self.store.calls), 1)
        self.store.fire(results=[FakeResult(duplicate=True)])
        self.assertEqual(il_replies(self.transport.value()), [ILReply(0, 0, "OK duplicate")])

    def test_bad_event(self) -> None:
        self.proto.dataReceived(
            ilproto.encode_il_msg(b"garbage\n") + ilproto.encode_il_msg(NO_USER)
        )
        [proto_err, perm] = il_replies(self.transport.value())
        self.assertEqual(proto_err.major, ilproto.LB_PROTO)
        self.assertGreater(proto_err.minor, 1400)
        self.assertEqual((perm.major, perm.minor), (ilproto.LB_PERM, errno.EPERM))
        self.assertFalse(self.transport.disconnecting)

    def test_bad_body_keeps_framing(self) -> None:
        self.proto.dataReceived(b"%16d\n" % 5 + b"hello" + ilproto.encode_il_msg(EV))
        self.store.fire()
        [bad, ok] = il_replies(self.transport.value())
        self.assertEqual((bad.major, bad.minor), (ilproto.LB_PROTO, 1401))
        self.assertEqual(ok, ILReply(0, 0, "OK"))
        self.assertFalse(self.transport.disconnecting)

    def test_bad_header_closes(self) -> None:
        self.proto.dataReceived(ilproto.encode_il_msg(EV) + b"  garbage garbage garbage")
        self.store.fire()
        [ok, bad] = il_replies(self.transport.value())
        self.assertEqual(ok, ILReply(0, 0, "OK"))
        self.assertEqual((bad.major, bad.minor), (ilproto.LB_PROTO, 1401))
        self.assertTrue(self.transport.disconnecting)

    def test_oversized_read_to_its_end(self) -> None:
        """
        An oversize IL message is read to its announced end before E2BIG is
        answered, so a producer still writing it sees no error; the framing
        stays in sync.
        """
        size = 10 * len(EV)
        self.proto.dataReceived(b"%16d\n" % size)
        for _ in range(9):
            self.proto.dataReceived(b"x" * len(EV))
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(b"x" * len(EV) + ilproto.encode_il_msg(EV))
        self.store.fire()
        [bad, ok] = il_replies(self.transport.value())
        self.assertEqual((bad.major, bad.minor), (ilproto.LB_PROTO, errno.E2BIG))
        self.assertEqual(ok, ILReply(0, 0, "OK"))
        self.assertFalse(self.transport.disconnecting)

    def test_store_errors(self) -> None:
        self.proto.dataReceived(ilproto.encode_il_msg(EV))
        self.store.fire(results=[NoSpace("disk full")])
        [reply] = il_replies(self.transport.value())
        self.assertEqual(reply, ILReply(ilproto.LB_DBERR, errno.ENOSPC, "disk full"))


class LogdFramingTests(SynchronousTestCase):
    """
    L&B's logd framing on the intake socket.
    """

    def setUp(self) -> None:
        self.store = FakeStore()
        self.factory = make_factory(self.store, max_line=len(LINE) + 10)
        self.proto, self.transport = connect(self.factory)

    def test_ok(self) -> None:
        self.proto.dataReceived(ilproto.encode_logd(EV) + ilproto.encode_logd(LINE.encode()))
        [(items, _)] = self.store.calls
        self.assertEqual([line for line, _ in items], [LINE, LINE])
        self.assertEqual(self.transport.value(), b"")
        self.store.fire()
        self.assertEqual(self.transport.value(), b"\0\0\0\0" * 2)

    def test_split_magic(self) -> None:
        data = ilproto.encode_logd(EV)
        self.proto.dataReceived(data[:1])
        self.proto.dataReceived(data[1:3])
        self.proto.dataReceived(data[3:])
        self.store.fire()
        self.assertEqual(self.transport.value(), b"\0\0\0\0")

    def test_bad_event(self) -> None:
        self.proto.dataReceived(ilproto.encode_logd(ANONYMOUS) + ilproto.encode_logd(b"x\0y"))
        self.assertEqual(
            self.transport.value(),
            ilproto.encode_logd_answer(errno.EPERM) + ilproto.encode_logd_answer(1401),
        )
        self.assertFalse(self.transport.disconnecting)

    def test_bad_framing_closes(self) -> None:
        self.proto.dataReceived(b"DGLOG\x03\0\0\0abc")
        self.assertEqual(self.transport.value(), ilproto.encode_logd_answer(1401))
        self.assertTrue(self.transport.disconnecting)

    def test_oversized_read_to_its_end(self) -> None:
        big = b"A=" + b"x" * (2 * len(EV))
        data = ilproto.encode_logd(big) + ilproto.encode_logd(EV)
        self.proto.dataReceived(data[:100])
        self.proto.dataReceived(data[100 : len(data) - len(EV) - 11])
        self.assertEqual(self.transport.value(), b"")
        self.proto.dataReceived(data[len(data) - len(EV) - 11 :])
        self.store.fire()
        self.assertEqual(
            self.transport.value(),
            ilproto.encode_logd_answer(errno.E2BIG) + ilproto.encode_logd_answer(0),
        )
        self.assertFalse(self.transport.disconnecting)


class DetectionTests(SynchronousTestCase):
    """
    The framing comes from the first bytes.
    """

    def test_detect(self) -> None:
        self.assertEqual(detect_framing(b"DGLOG"), "logd")
        self.assertEqual(detect_framing(b"DGL"), None)
        self.assertEqual(detect_framing(b""), None)
        self.assertEqual(detect_framing(b"DATE="), "line")
        self.assertEqual(detect_framing(b"DG."), "line")
        self.assertEqual(detect_framing(b" "), None)
        self.assertEqual(detect_framing(b"%16d\n" % 12), "IL")
        self.assertEqual(detect_framing(b"0"), None)
        self.assertEqual(detect_framing(b"\xff"), "line")

    def test_line_starting_with_space(self) -> None:
        """
        A ULM line may start with whitespace: it is not taken for IL framing.
        """
        store = FakeStore()
        proto, transport = connect(make_factory(store))
        proto.dataReceived(b" ")
        proto.dataReceived(b"\t" + EV)
        [(items, _)] = store.calls
        self.assertEqual(items[0][1].type, "Running")
        store.fire()
        self.assertEqual(transport.value(), b"OK\n")

    def test_line_starting_with_d(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store))
        proto.dataReceived(b"D")
        proto.dataReceived(EV[1:])
        store.fire()
        self.assertEqual(transport.value(), b"OK\n")


class StoreFailureTests(SynchronousTestCase):
    """
    Store errors become error answers; the protocol survives.
    """

    def test_lberror_failure(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store))
        proto.dataReceived(EV * 2)
        store.calls[0][1].errback(NoSpace("disk full"))
        self.assertEqual(transport.value(), b"ERR 28 disk full\n" * 2)

    def test_unexpected_failure(self) -> None:
        store = FakeStore()
        factory = make_factory(store)
        proto, transport = connect(factory)
        proto.dataReceived(EV)
        store.calls[0][1].errback(RuntimeError("boom"))
        self.assertEqual(transport.value(), b"ERR 11 store error\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(factory.stats.errors, 1)

    def test_synchronous_raise(self) -> None:
        class Raising:
            def store(self, items: object) -> Deferred[Any]:
                raise TryAgain("busy")

        proto, transport = connect(make_factory(Raising()))
        proto.dataReceived(EV)
        self.assertEqual(transport.value(), b"ERR 11 busy\n")

    def test_already_failed(self) -> None:
        class Failing:
            def store(self, items: object) -> Deferred[Any]:
                return fail(NoSpace("full"))

        proto, transport = connect(make_factory(Failing()))
        proto.dataReceived(EV)
        self.assertEqual(transport.value(), b"ERR 28 full\n")

    def test_wrong_result_count(self) -> None:
        store = FakeStore()
        proto, transport = connect(make_factory(store))
        proto.dataReceived(EV * 2)
        store.fire(results=[FakeResult()])
        self.assertEqual(transport.value(), b"ERR 11 store error\n" * 2)


class IsolationTests(SynchronousTestCase):
    """
    One bad connection does not affect another.
    """

    def test_bad_neighbour(self) -> None:
        store = FakeStore()
        factory = make_factory(store, max_line=len(LINE) + 10)
        good, good_t = connect(factory)
        bad, bad_t = connect(factory)
        good.dataReceived(EV)
        bad.dataReceived(b"\x00\xff" * 1000 + b"\n")
        self.assertEqual(bad_t.value(), b"ERR 7 event line over %d bytes\n" % (len(LINE) + 10))
        bad.dataReceived(b"\x00\xff\n")
        self.assertTrue(bad_t.value().endswith(b"\nERR 1401 NUL byte at position 0\n"))
        bad.connectionLost(Exception("closed"))
        good.dataReceived(EV)
        store.fire_all()
        self.assertEqual(good_t.value(), b"OK\nOK\n")
        self.assertFalse(good_t.disconnecting)
        self.assertEqual(factory.stats.connections, 1)
        self.assertEqual(factory.stats.accepted, 2)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from([b"", b"DGLOG", b" ", b"1"]),
        st.lists(st.binary(max_size=80) | st.just(EV), max_size=6),
    )
    def test_fuzz(self, prefix: bytes, chunks: list[bytes]) -> None:
        store = FakeStore()
        factory = make_factory(store, max_line=len(LINE) + 10, max_inflight=3)
        proto, transport = connect(factory)
        for chunk in [prefix, *chunks]:
            proto.dataReceived(chunk)
        store.fire_all()
        out = transport.value()
        if detect_framing((prefix + b"".join(chunks))[:17]) == "line":
            for answer in out.splitlines():
                self.assertTrue(answer.startswith((b"OK", b"ERR ")), answer)
        other, other_t = connect(factory)
        other.dataReceived(EV)
        store.fire_all()
        self.assertEqual(other_t.value(), b"OK\n")


class MemoryStoreTests(SynchronousTestCase):
    """
    The intake in front of the real in-memory store, with a real L&B stream.
    """

    def _lines(self) -> list[bytes]:
        data = fixtures.stream_bytes("perf_simple_avg_events.log")
        return [line for line in data.split(b"\n") if line.strip()]

    def test_fixture_stream_each_framing(self) -> None:
        from lbtwist.testing import MemoryStore

        lines = self._lines()
        self.assertGreater(len(lines), 10)
        store = MemoryStore(Clock())
        factory = make_factory(store)
        proto, transport = connect(factory)
        proto.dataReceived(b"".join(line + b"\n" for line in lines))
        self.assertEqual(transport.value(), b"OK\n" * len(lines))
        # The same events again, over the other framings: duplicates.
        proto, transport = connect(factory)
        proto.dataReceived(b"".join(ilproto.encode_il_msg(line + b"\n") for line in lines))
        self.assertEqual(
            il_replies(transport.value()), [ILReply(0, 0, "OK duplicate")] * len(lines)
        )
        proto, transport = connect(factory)
        proto.dataReceived(b"".join(ilproto.encode_logd(line) for line in lines))
        self.assertEqual(transport.value(), b"\0\0\0\0" * len(lines))
        self.assertEqual(factory.stats.accepted, len(lines))
        self.assertEqual(factory.stats.duplicates, 2 * len(lines))
        events = self.successResultOf(
            store.events("https://devel15.cnaf.infn.it:9000/rReV1TpJ5oY0Z1_M4NBfHw")
        )
        self.assertEqual(len(events), len(lines))
