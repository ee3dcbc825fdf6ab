# -*- test-case-name: tests.unit.test_relay -*-
"""
Tests for L{lbtwist.service.relay} and the relay side of the stores (outbox reads,
grouped acknowledgements, the rejected table, commit notifications).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbtwist.core import ilproto
from lbtwist.core.errors import TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.translate import proxy_policy
from lbtwist.service.relay import (
    RelayProtocol,
    RelayQueue,
    RelayService,
    RelaySettings,
    count_ok_replies,
    split_destination,
    tcp_no_delay,
)
from lbtwist.store.batch import BatchPlan, OutboxRow, id_runs, run_now
from lbtwist.store.sqlite import SCHEMA_VERSION, SQLiteStore, connect, schema_version
from lbtwist.testing import MemoryStore
from tests import traces

JOB_A = "https://lb01.example.org:9000/JobAaaaaaaaaaaaaaaaaaaa"
JOB_B = "https://lb01.example.org:9000/JobBbbbbbbbbbbbbbbbbbbb"
JOB_C = "https://lb02.example.org:9000/JobCcccccccccccccccccccc"
DEST1 = "lb01.example.org:9001"
DEST2 = "lb02.example.org:9001"
T0 = 1_700_000_000.0


class FakeTransport(StringTransport):
    """
    A client transport whose close reaches the protocol at once.
    """

    def __init__(self, proto: Any) -> None:
        super().__init__()
        self.proto = proto
        self.closed = False
        self._sent = 0
        self._decoder = ilproto.ILMessageDecoder()
        self.unanswered: list[str] = []

    def loseConnection(self) -> None:
        if not self.closed:
            self.closed = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    abortConnection = loseConnection

    def take_lines(self) -> list[str]:
        """
        The event lines written since the last call.
        """
        data = self.value()[self._sent :]
        self._sent += len(data)
        return [m.decode("utf-8").rstrip("\n") for m in self._decoder.feed(data)]

    def answer(self, major: int = 0, minor: int = 0, text: str = "OK", n: int = 1) -> None:
        self.proto.dataReceived(ilproto.encode_il_reply(major, minor, text) * n)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects to L{FakeTransport}s; refuses while C{refuse} is set.
    """

    def __init__(self) -> None:
        self.connections: list[FakeTransport] = []
        self.refuse = False
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        assert proto is not None
        transport = FakeTransport(proto)
        self.connections.append(transport)
        proto.makeConnection(transport)
        return succeed(proto)

    @property
    def current(self) -> FakeTransport:
        return self.connections[-1]


def reconnect_delay(settings: RelaySettings, attempt: int = 1) -> float:
    """
    The wait before reconnection attempt C{attempt} (ClientService counts the lost
    connection as the first failure).
    """
    return min(settings.reconnect_initial * 1.5**attempt, settings.reconnect_max)


def wms_lines(jobid: str) -> list[str]:
    return traces.wms_prelude(jobid)


def make_memory(clock: Clock) -> MemoryStore:
    return MemoryStore(clock, relay=True, proxy_host="ce.example.org")


class Harness:
    """
    A memory store, a relay service on a clock, one fake endpoint per destination.
    """

    def __init__(self, store: Any = None, clock: Clock | None = None, **settings: Any) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(T0)
        self.store = store if store is not None else make_memory(self.clock)
        self.endpoints: dict[str, FakeEndpoint] = {}
        # Delivered rows leave the outbox at once unless a test asks otherwise.
        settings.setdefault("ack_delay", 0.0)
        self.settings = RelaySettings(**settings)
        self.service = RelayService(
            self.store,
            self.clock,
            self.endpoint,
            self.settings,
            sweep_interval=60.0,
            jitter=lambda: 0,
        )

    def endpoint(self, destination: str) -> FakeEndpoint:
        return self.endpoints.setdefault(destination, FakeEndpoint())

    def store_lines(self, lines: list[str]) -> None:
        d = self.store.store([(line, parse_event(line)) for line in lines])
        results: list[Any] = []
        d.addCallback(results.extend)
        assert results, "store did not fire"

    def outbox(self, destination: str | None = None) -> list[Any]:
        out: list[Any] = []
        self.store.outbox_pending(destination).addCallback(out.extend)
        return out


class RelayQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(window=4)

    def start(self) -> None:
        self.h.service.startService()
        self.addCleanup(self.h.service.stopService)

    def test_delivers_in_order_within_window(self) -> None:
        lines = wms_lines(JOB_A)
        self.h.store_lines(lines)
        self.start()
        conn = self.h.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines[:4])
        conn.answer(n=2)
        self.assertEqual(conn.take_lines(), lines[4:6])
        delivered: list[str] = []
        while True:
            conn.answer(n=len(self.h.service.queues[DEST1]._inflight))
            more = conn.take_lines()
            if not more:
                break
            delivered.extend(more)
        self.assertEqual(delivered, lines[6:])
        self.assertEqual(self.h.outbox(), [])
        self.assertEqual(self.h.service.queues[DEST1].counters.delivered, len(lines))

    def test_new_events_announced_by_commit(self) -> None:
        self.start()
        self.assertEqual(self.h.endpoints, {})
        lines = wms_lines(JOB_A)[:2]
        self.h.store_lines(lines)
        conn = self.h.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines)
        conn.answer(n=2)
        self.assertEqual(self.h.outbox(), [])

    def test_resend_from_first_unacknowledged_after_reconnect(self) -> None:
        lines = wms_lines(JOB_A)
        self.h.store_lines(lines)
        self.start()
        endpoint = self.h.endpoints[DEST1]
        first = endpoint.current
        self.assertEqual(first.take_lines(), lines[:4])
        first.answer(n=1)
        first.take_lines()
        first.loseConnection()
        queue = self.h.service.queues[DEST1]
        self.assertFalse(queue.connected)
        self.assertEqual(len(endpoint.connections), 1)
        self.h.clock.advance(reconnect_delay(self.h.settings))
        self.assertEqual(len(endpoint.connections), 2)
        self.assertEqual(endpoint.current.take_lines(), lines[1:5])
        self.assertEqual(queue.counters.resent, 4)
        self.assertEqual(len(self.h.outbox()), len(lines) - 1)

    def test_perm_rejected_for_good_queue_moves_on(self) -> None:
        lines = wms_lines(JOB_A)[:3]
        self.h.store_lines(lines)
        self.start()
        conn = self.h.endpoints[DEST1].current
        conn.take_lines()
        conn.answer(0)
        conn.answer(ilproto.LB_PERM, errno.EPERM, "not allowed")
        conn.answer(0)
        self.assertEqual(self.h.outbox(), [])
        rejected = self.successResultOf(self.h.store.rejected())
        self.assertEqual([r.line for r in rejected], [lines[1]])
        self.assertEqual((rejected[0].major, rejected[0].minor), (600, errno.EPERM))
        self.assertEqual(rejected[0].reason, "not allowed")
        self.assertEqual(rejected[0].rejected_at, int(T0 * 1_000_000))
        stats = self.successResultOf(self.h.store.outbox_stats())
        self.assertEqual(stats[DEST1].rejected, 1)
        self.assertEqual(stats[DEST1].depth, 0)
        self.assertTrue(conn.connected and not conn.closed)

    def test_proto_error_rejected(self) -> None:
        lines = wms_lines(JOB_A)[:1]
        self.h.store_lines(lines)
        self.start()
        conn = self.h.endpoints[DEST1].current
        conn.answer(ilproto.LB_PROTO, 1401, "broken")
        self.assertEqual(len(self.successResultOf(self.h.store.rejected())), 1)
        self.assertEqual(self.h.outbox(), [])

    def test_enoent_holds_queue_and_retries(self) -> None:
        lines = wms_lines(JOB_A)[:3]
        self.h.store_lines(lines)
        self.start()
        queue = self.h.service.queues[DEST1]
        conn = self.h.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines)
        conn.answer(ilproto.LB_DBERR, errno.ENOENT, "no such job", n=3)
        self.assertTrue(queue.held)
        self.h.store_lines(wms_lines(JOB_B)[:1])
        self.assertEqual(conn.take_lines(), [])
        self.h.clock.advance(self.h.settings.enoent_initial)
        self.assertFalse(queue.held)
        self.assertEqual(conn.take_lines(), lines + wms_lines(JOB_B)[:1])
        conn.answer(n=4)
        self.assertEqual(self.h.outbox(), [])
        self.assertEqual(queue.counters.enoent_retries, 3)
        self.assertEqual(self.successResultOf(self.h.store.rejected()), [])

    def test_enoent_backoff_then_rejected_after_timeout(self) -> None:
        self.h = Harness(window=4, enoent_timeout=10.0, enoent_initial=1.0)
        lines = wms_lines(JOB_A)[:1]
        self.h.store_lines(lines)
        self.start()
        conn = self.h.endpoints[DEST1].current
        queue = self.h.service.queues[DEST1]
        delays = []
        for _ in range(10):
            lines_sent = conn.take_lines()
            if not lines_sent:
                break
            conn.answer(ilproto.LB_DBERR, errno.ENOENT, "no such job")
            if not queue.held:
                break
            call = queue._hold
            assert call is not None
            delays.append(call.getTime() - self.h.clock.seconds())
            self.h.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 3.0])
        rejected = self.successResultOf(self.h.store.rejected())
        self.assertEqual(len(rejected), 1)
        self.assertIn("unknown upstream", rejected[0].reason)
        self.assertEqual(self.h.outbox(), [])

    def test_other_errors_reconnect_and_resend(self) -> None:
        lines = wms_lines(JOB_A)[:3]
        self.h.store_lines(lines)
        self.start()
        endpoint = self.h.endpoints[DEST1]
        conn = endpoint.current
        conn.take_lines()
        conn.answer(0)
        conn.answer(ilproto.LB_DBERR, errno.ENOSPC, "disk full")
        self.assertTrue(conn.closed)
        self.h.clock.advance(reconnect_delay(self.h.settings))
        self.assertEqual(endpoint.current.take_lines(), lines[1:])
        self.assertEqual(len(self.h.outbox()), 2)
        self.assertEqual(self.successResultOf(self.h.store.rejected()), [])

    def test_malformed_reply_drops_connection(self) -> None:
        self.h.store_lines(wms_lines(JOB_A)[:2])
        self.start()
        conn = self.h.endpoints[DEST1].current
        conn.proto.dataReceived(b"garbage that is no header")
        self.assertTrue(conn.closed)
        self.assertEqual(len(self.h.outbox()), 2)

    def test_reply_without_event_drops_connection(self) -> None:
        self.start()
        self.h.store_lines(wms_lines(JOB_A)[:1])
        conn = self.h.endpoints[DEST1].current
        conn.answer(n=2)
        self.assertTrue(conn.closed)
        self.assertEqual(self.h.outbox(), [])

    def test_reply_timeout_drops_connection(self) -> None:
        self.h.store_lines(wms_lines(JOB_A)[:2])
        self.start()
        endpoint = self.h.endpoints[DEST1]
        conn = endpoint.current
        self.h.clock.advance(self.h.settings.reply_timeout - 1)
        self.assertFalse(conn.closed)
        self.h.clock.advance(1)
        self.assertTrue(conn.closed)
        self.h.clock.advance(reconnect_delay(self.h.settings))
        self.assertEqual(len(endpoint.current.take_lines()), 2)

    def test_unreachable_destination_does_not_hold_others(self) -> None:
        self.h.endpoint(DEST2).refuse = True
        self.h.store_lines(wms_lines(JOB_C)[:2] + wms_lines(JOB_A)[:2])
        self.start()
        conn = self.h.endpoints[DEST1].current
        self.assertEqual(len(conn.take_lines()), 2)
        conn.answer(n=2)
        self.assertEqual(self.h.outbox(DEST1), [])
        self.assertEqual(len(self.h.outbox(DEST2)), 2)
        for _ in range(100):
            self.h.clock.advance(1)
        self.assertGreater(self.h.endpoints[DEST2].attempts, 3)
        self.h.endpoints[DEST2].refuse = False
        self.h.clock.advance(self.h.settings.reconnect_max)
        conn2 = self.h.endpoints[DEST2].current
        self.assertEqual(len(conn2.take_lines()), 2)
        conn2.answer(n=2)
        self.assertEqual(self.h.outbox(), [])

    def test_restart_resends_unacknowledged_only(self) -> None:
        lines = wms_lines(JOB_A)
        self.h.store_lines(lines)
        self.h.service.startService()
        conn = self.h.endpoints[DEST1].current
        conn.take_lines()
        conn.answer(n=3)
        self.successResultOf(self.h.service.stopService())
        again = Harness(store=self.h.store, clock=self.h.clock, window=64)
        again.service.startService()
        self.addCleanup(again.service.stopService)
        conn = again.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines[3:])

    def test_sweep_wakes_and_reports(self) -> None:
        self.h.store_lines(wms_lines(JOB_A)[:2])
        self.h.endpoint(DEST1).refuse = True
        self.start()
        self.h.clock.advance(5)
        stats = self.successResultOf(self.h.store.outbox_stats())
        self.assertEqual(stats[DEST1].depth, 2)
        self.assertLess(stats[DEST1].oldest_arrived, int((T0 + 5) * 1_000_000))
        queue = self.h.service.queues[DEST1]
        self.assertFalse(queue.connected)
        self.assertEqual(queue.buffered, 2)
        self.successResultOf(self.h.service.sweep())

    def test_stop_stops_connections(self) -> None:
        self.h.store_lines(wms_lines(JOB_A)[:2])
        self.h.service.startService()
        conn = self.h.endpoints[DEST1].current
        self.successResultOf(self.h.service.stopService())
        self.assertTrue(conn.closed)
        self.assertEqual(len(self.h.outbox()), 2)


class RelayPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        st.integers(1, 8),
        st.lists(st.sampled_from(["ok", "ok", "ok", "drop", "enoent", "error"]), max_size=80),
        st.sampled_from([0.0, 0.25]),
    )
    def test_everything_delivered_once_in_order(
        self, window: int, script: list[str], ack_delay: float
    ) -> None:
        """
        Whatever the server answers and however often the connection breaks,
        every event is delivered; in outbox order unless an ENOENT retry let
        events already in flight behind it pass (only window 1 is strict then).
        """
        h = Harness(window=window, ack_delay=ack_delay)
        lines = wms_lines(JOB_A) + wms_lines(JOB_B)
        h.store_lines(lines)
        h.service.startService()
        endpoint = h.endpoints[DEST1]
        stored: list[str] = []
        seen: set[str] = set()
        steps = iter(script)
        for _ in range(2000):
            queue = h.service.queues[DEST1]
            if not h.outbox():
                break
            if queue.held or not queue.connected:
                h.clock.advance(60)
                continue
            conn = endpoint.current
            pending = conn.take_lines()
            conn.unanswered.extend(pending)
            if not conn.unanswered:
                h.clock.advance(60)
                continue
            step = next(steps, "ok")
            line = conn.unanswered.pop(0)
            if step == "drop":
                conn.loseConnection()
            elif step == "enoent":
                conn.answer(ilproto.LB_DBERR, errno.ENOENT, "unknown")
            elif step == "error":
                conn.answer(ilproto.LB_SYS, 5, "io")
            else:
                if line not in seen:
                    seen.add(line)
                    stored.append(line)
                conn.answer(0)
        self.assertEqual(h.outbox(), [])
        if "enoent" not in script or window == 1:
            self.assertEqual(stored, lines)
        else:
            self.assertEqual(sorted(stored), sorted(lines))
        self.successResultOf(h.service.stopService())


class SQLiteTailPropertyTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(
        st.integers(1, 6),
        st.integers(1, 8),
        st.integers(1, 5),
        st.lists(st.sampled_from(["ok", "ok", "ok", "drop", "commit", "commit"]), max_size=60),
    )
    def test_delivered_once_in_order_from_tail_and_table(
        self, tail: int, window: int, fetch: int, script: list[str]
    ) -> None:
        """
        Events committed while the relay runs, the in-memory tail overflowing
        and the connection breaking: every event reaches the server in the order
        it was stored, and the outbox ends empty.
        """
        clock = Clock()
        clock.advance(T0)
        store = SQLiteStore(
            self.mktemp() + ".sqlite",
            clock=clock,
            policy=proxy_policy((), "ce.example.org"),
            runner=run_now,
            outbox_tail=tail,
        )
        self.addCleanup(store.close)
        h = Harness(store=store, clock=clock, window=window, fetch_size=fetch)
        lines = wms_lines(JOB_A) + wms_lines(JOB_B)
        chunks = [lines[i : i + 3] for i in range(0, len(lines), 3)]
        h.store_lines(chunks.pop(0))
        h.service.startService()
        endpoint = h.endpoints[DEST1]
        stored: list[str] = []
        steps = iter(script)
        for _ in range(2000):
            queue = h.service.queues[DEST1]
            if not chunks and not h.outbox():
                break
            step = next(steps, "commit" if chunks else "ok")
            if step == "commit" and chunks:
                h.store_lines(chunks.pop(0))
                continue
            if not queue.connected:
                clock.advance(60)
                continue
            conn = endpoint.current
            conn.unanswered.extend(conn.take_lines())
            if not conn.unanswered:
                if chunks:
                    h.store_lines(chunks.pop(0))
                else:
                    clock.advance(60)
                continue
            line = conn.unanswered.pop(0)
            if step == "drop":
                conn.loseConnection()
                continue
            if line not in stored:
                stored.append(line)
            conn.answer(0)
        self.assertEqual(h.outbox(), [])
        self.assertEqual(stored, lines)
        self.successResultOf(h.service.stopService())


class SQLiteOutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.path = os.path.join(self.mktemp() + ".sqlite")
        self.store = self.open()

    def open(self, **kw: Any) -> SQLiteStore:
        store = SQLiteStore(
            self.path,
            clock=self.clock,
            policy=proxy_policy((), "ce.example.org"),
            runner=run_now,
            **kw,
        )
        self.addCleanup(store.close)
        return store

    def count_queries(self, store: SQLiteStore) -> list[tuple[str, int, int]]:
        """
        Record the outbox reads that go to the database.
        """
        calls: list[tuple[str, int, int]] = []
        real = store._queries.outbox_after

        def outbox_after(destination: str, after_id: int, limit: int) -> Any:
            calls.append((destination, after_id, limit))
            return real(destination, after_id, limit)

        store._queries.outbox_after = outbox_after  # type: ignore[method-assign]
        return calls

    def test_live_rows_from_the_tail(self) -> None:
        """
        Rows committed since the store opened are read from memory, with the same
        ids, events and arrival times as the outbox table's, each destination
        forward from the last row read.
        """
        calls = self.count_queries(self.store)
        lines = wms_lines(JOB_A)[:5] + wms_lines(JOB_C)[:2]
        self.store_lines(lines[:3])
        first = self.successResultOf(self.store.outbox_after(DEST1, 0, 2))
        self.store_lines(lines[3:])
        rest = self.successResultOf(self.store.outbox_after(DEST1, first[-1].id, 100))
        other = self.successResultOf(self.store.outbox_after(DEST2, 0, 100))
        self.assertEqual(calls, [])
        table = self.store._queries.outbox_after
        self.assertEqual(first + rest, table(DEST1, 0, 100))
        self.assertEqual(other, table(DEST2, 0, 100))
        self.assertEqual([r.line for r in first + rest], lines[:5])
        self.assertEqual(self.successResultOf(self.store.outbox_after(DEST1, rest[-1].id, 9)), [])

    def test_tail_bounded(self) -> None:
        """
        At most C{outbox_tail} rows stay in memory per destination: the older
        ones are read from the database, then the relay goes on from memory.
        """
        self.store = self.open(outbox_tail=3)
        calls = self.count_queries(self.store)
        lines = wms_lines(JOB_A)[:5]
        self.store_lines(lines)
        self.assertEqual(self.store.backend.tail.depth(DEST1), 3)  # type: ignore[union-attr]
        head = self.successResultOf(self.store.outbox_after(DEST1, 0, 1))
        self.assertEqual(len(calls), 1)
        rest = self.successResultOf(self.store.outbox_after(DEST1, head[-1].id, 100))
        self.assertEqual(len(calls), 2)
        self.assertEqual([r.line for r in head + rest], lines)
        self.store_lines(wms_lines(JOB_A)[5:7])
        more = self.successResultOf(self.store.outbox_after(DEST1, rest[-1].id, 100))
        self.assertEqual(len(calls), 2)
        self.assertEqual([r.line for r in more], wms_lines(JOB_A)[5:7])
        self.assertRaises(ValueError, SQLiteStore, self.path, clock=self.clock, outbox_tail=0)

    def test_rows_before_a_restart_from_the_database(self) -> None:
        lines = wms_lines(JOB_A)[:4]
        self.store_lines(lines[:2])
        self.successResultOf(self.store.close())
        self.store = self.open()
        calls = self.count_queries(self.store)
        self.store_lines(lines[2:])
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        self.assertEqual([r.line for r in rows], lines)
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.successResultOf(self.store.outbox_after(DEST1, rows[-1].id, 9)), [])
        self.assertEqual(len(calls), 1)

    def test_undescribed_rows_read_from_the_database(self) -> None:
        """
        A commit whose outbox rows the tail cannot describe (their event is not in
        the commit) empties it: those rows come from the database.
        """
        lines = wms_lines(JOB_A)[:2]
        self.store_lines(lines[:1])
        first = self.successResultOf(self.store.outbox_after(DEST1, 0, 9))
        plan = BatchPlan()
        plan.outbox.append(OutboxRow(DEST1, first[0].event_id))
        self.store.backend.write(plan)
        self.assertEqual(self.store.backend.tail.depth(DEST1), 0)  # type: ignore[union-attr]
        calls = self.count_queries(self.store)
        again = self.successResultOf(self.store.outbox_after(DEST1, first[0].id, 9))
        self.assertEqual([(r.id, r.line) for r in again], [(first[0].id + 1, lines[0])])
        self.assertEqual(len(calls), 1)
        self.store_lines(lines[1:])
        last = self.successResultOf(self.store.outbox_after(DEST1, again[0].id, 9))
        self.assertEqual([r.line for r in last], lines[1:])
        self.assertEqual(len(calls), 1)

    def test_failed_commit_not_in_the_tail(self) -> None:
        """
        A commit that fails leaves no row in memory.
        """
        self.store.start()
        backend = self.store.backend
        real = backend.conn

        class Failing:
            in_transaction = True

            def execute(self, sql: str, *args: Any) -> Any:
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

            def executemany(self, sql: str, *args: Any) -> Any:
                return real.executemany(sql, *args)

        backend.conn = Failing()  # type: ignore[assignment]
        d = self.store.store([(ln, parse_event(ln)) for ln in wms_lines(JOB_A)[:2]])
        results = self.successResultOf(d)
        backend.conn = real
        self.assertEqual([type(r) for r in results], [TryAgain, TryAgain])
        self.assertEqual(backend.tail.depth(DEST1), 0)  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(self.store.outbox_after(DEST1, 0, 9)), [])

    def store_lines(self, lines: list[str]) -> None:
        self.successResultOf(self.store.store([(ln, parse_event(ln)) for ln in lines]))

    def test_schema_has_rejected_table(self) -> None:
        self.store.start()
        conn = connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        self.assertGreaterEqual(SCHEMA_VERSION, 3)
        conn.execute("SELECT outbox_id, major, minor, reason, rejected_at FROM rejected")

    def test_outbox_after_ack_reject_stats(self) -> None:
        notified: list[set[str]] = []
        self.store.add_commit_listener(notified.append)
        lines = wms_lines(JOB_A)[:5] + wms_lines(JOB_C)[:2]
        self.store_lines(lines)
        self.assertEqual(notified, [{DEST1, DEST2}])
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 3))
        self.assertEqual([r.line for r in rows], lines[:3])
        self.assertEqual({r.arrived for r in rows}, {int(T0 * 1_000_000)})
        rest = self.successResultOf(self.store.outbox_after(DEST1, rows[-1].id, 100))
        self.assertEqual([r.line for r in rest], lines[3:5])
        self.successResultOf(self.store.outbox_ack([r.id for r in rows[:2]]))
        self.successResultOf(self.store.reject(rows[2], 600, 1, "nope"))
        stats = self.successResultOf(self.store.outbox_stats())
        self.assertEqual((stats[DEST1].depth, stats[DEST1].rejected), (2, 1))
        self.assertEqual((stats[DEST2].depth, stats[DEST2].rejected), (2, 0))
        self.assertEqual(stats[DEST1].oldest_arrived, int(T0 * 1_000_000))
        rejected = self.successResultOf(self.store.rejected(DEST1))
        self.assertEqual([(r.line, r.reason, r.major) for r in rejected], [(lines[2], "nope", 600)])
        self.assertEqual(self.successResultOf(self.store.rejected(DEST2)), [])
        # After a restart the same rows wait.
        self.successResultOf(self.store.close())
        self.store = self.open()
        pending = self.successResultOf(self.store.outbox_pending(DEST1))
        self.assertEqual([r.line for r in pending], lines[3:5])
        self.assertEqual(len(self.successResultOf(self.store.rejected())), 1)

    def test_acks_removed_by_runs(self) -> None:
        """
        Acknowledged rows go by one range statement per run of consecutive ids;
        another destination's rows between them stay.
        """
        a, c = wms_lines(JOB_A), wms_lines(JOB_C)
        self.store_lines([a[0], c[0], a[1], a[2], c[1], a[3]])
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        deletes: list[str] = []
        conn = self.store.backend.conn
        conn.set_trace_callback(lambda sql: deletes.append(sql) if "DELETE" in sql else None)
        self.addCleanup(conn.set_trace_callback, None)
        self.successResultOf(self.store.outbox_ack([r.id for r in rows]))
        stats = self.successResultOf(self.store.outbox_stats())
        self.assertNotIn(DEST1, stats)
        self.assertEqual(stats[DEST2].depth, 2)
        self.assertEqual(len(deletes), 3)

    def test_id_runs(self) -> None:
        self.assertEqual(id_runs([]), [])
        self.assertEqual(id_runs([7, 3, 4, 5, 9, 8, 1, 4]), [(1, 1), (3, 5), (7, 9)])

    @given(st.sets(st.integers(1, 200)))
    @settings(max_examples=50, deadline=None)
    def test_id_runs_cover_the_ids(self, ids: set[int]) -> None:
        runs = id_runs(ids)
        covered = [i for first, last in runs for i in range(first, last + 1)]
        self.assertEqual(covered, sorted(ids))
        self.assertTrue(all(b[0] > a[1] + 1 for a, b in zip(runs, runs[1:], strict=False)))

    def test_duplicates_not_announced(self) -> None:
        lines = wms_lines(JOB_A)[:2]
        self.store_lines(lines)
        notified: list[set[str]] = []
        self.store.add_commit_listener(notified.append)
        self.store_lines(lines)
        self.assertEqual(notified, [])

    def test_acks_grouped(self) -> None:
        """
        Acknowledgements asked for while one runs share the next transaction.
        """
        self.store_lines(wms_lines(JOB_A)[:6])
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        work: list[Any] = []

        def runner(f: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            work.append((f, d))
            return d

        self.store._outbox._runner = runner
        before = self.store.backend.transactions
        ds = [self.store.outbox_ack([r.id]) for r in rows]
        self.assertEqual(len(work), 1)
        f, d = work.pop()
        d.callback(f())
        self.assertEqual(len(work), 1)
        f, d = work.pop()
        d.callback(f())
        for each in ds:
            self.successResultOf(each)
        self.assertEqual(self.store.backend.transactions - before, 2)
        self.assertEqual(self.successResultOf(self.store.outbox_pending()), [])

    def test_acks_not_synced_alone(self) -> None:
        """
        Acknowledgements commit without a sync of their own (the next event
        commit syncs them); event commits stay synchronous=FULL.
        """
        self.store_lines(wms_lines(JOB_A)[:3])
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        conn = self.store.backend.conn
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        self.addCleanup(conn.set_trace_callback, None)
        self.successResultOf(self.store.outbox_ack([r.id for r in rows]))
        self.assertEqual(statements[0], "PRAGMA synchronous = NORMAL")
        self.assertEqual(statements[-1], "PRAGMA synchronous = FULL")
        self.assertIn("COMMIT", statements)
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)
        self.assertEqual(self.successResultOf(self.store.outbox_pending()), [])

    def test_relay_against_sqlite(self) -> None:
        lines = wms_lines(JOB_A)
        self.store_lines(lines)
        h = Harness(store=self.store, clock=self.clock, window=64)
        h.service.startService()
        self.addCleanup(h.service.stopService)
        conn = h.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines)
        conn.answer(n=len(lines))
        self.assertEqual(self.successResultOf(self.store.outbox_pending()), [])


class AckAndReplyTests(SynchronousTestCase):
    def test_acks_delayed_and_grouped(self) -> None:
        """
        Delivered rows leave the outbox in one call after C{ack_delay}, or at
        once when C{ack_max} of them wait.
        """
        h = Harness(window=64, ack_delay=0.25, ack_max=10)
        lines = wms_lines(JOB_A) + wms_lines(JOB_B)
        h.store_lines(lines)
        calls: list[list[int]] = []
        real = h.store.outbox_ack

        def ack(ids: list[int]) -> Deferred[None]:
            calls.append(list(ids))
            return real(ids)

        h.store.outbox_ack = ack  # type: ignore[method-assign]
        h.service.startService()
        self.addCleanup(h.service.stopService)
        conn = h.endpoints[DEST1].current
        self.assertEqual(conn.take_lines(), lines)
        conn.answer(n=3)
        conn.answer(n=2)
        self.assertEqual(calls, [])
        self.assertEqual(len(h.outbox()), len(lines))
        h.clock.advance(0.25)
        self.assertEqual([len(c) for c in calls], [5])
        conn.answer(n=12)
        self.assertEqual([len(c) for c in calls], [5, 12])
        conn.answer(n=len(lines) - 17)
        self.assertEqual([len(c) for c in calls], [5, 12])
        # Stopping removes what is still waiting.
        self.successResultOf(h.service.stopService())
        self.assertEqual(sum(len(c) for c in calls), len(lines))
        self.assertEqual(h.outbox(), [])

    def test_count_ok_replies(self) -> None:
        ok = ilproto.il_reply_for(0, "OK")
        other = ilproto.encode_il_reply(ilproto.LB_DBERR, errno.ENOENT, "unknown")
        self.assertEqual(count_ok_replies(b""), 0)
        self.assertEqual(count_ok_replies(ok * 5), 5)
        self.assertEqual(count_ok_replies(ok * 2 + other + ok), 2)
        self.assertEqual(count_ok_replies(ok * 2 + ok[:7]), 2)
        self.assertEqual(count_ok_replies(other + ok), 0)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.sampled_from(["ok", "ok", "enoent", "okx"]), min_size=1, max_size=30),
        st.lists(st.integers(1, 40), max_size=30),
    )
    def test_replies_split_anywhere(self, kinds: list[str], cuts: list[int]) -> None:
        """
        Replies arrive in any chunking: the fast OK path and the decoder together
        give the same replies, in order.
        """
        encoded = {
            "ok": ilproto.il_reply_for(0, "OK"),
            "okx": ilproto.encode_il_reply(0, 0, "stored"),
            "enoent": ilproto.encode_il_reply(ilproto.LB_DBERR, errno.ENOENT, "unknown"),
        }
        data = b"".join(encoded[k] for k in kinds)
        got: list[ilproto.ILReply] = []

        class Queue:
            def replies(self, proto: Any, replies: list[ilproto.ILReply]) -> None:
                got.extend(replies)

            def drop(self, proto: Any, reason: str) -> None:
                raise AssertionError(reason)

        proto = RelayProtocol(Queue())  # type: ignore[arg-type]
        pos = 0
        for cut in cuts:
            proto.dataReceived(data[pos : pos + cut])
            pos += cut
        proto.dataReceived(data[pos:])
        expected = ilproto.ILReplyDecoder().feed(data)
        self.assertEqual(got, expected)


class NoDelayTransport(StringTransport):
    """
    A TCP-like transport that records C{setTcpNoDelay}.
    """

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.no_delay: list[bool] = []
        self.fail = fail

    def setTcpNoDelay(self, enabled: bool) -> None:
        if self.fail:
            raise OSError("not a socket")
        self.no_delay.append(enabled)


class Wrapper:
    """
    What a TLS wrapper looks like to the protocol it wraps: the TCP transport
    under C{transport}.
    """

    def __init__(self, transport: object) -> None:
        self.transport = transport


class NoDelayTests(SynchronousTestCase):
    def test_through_wrappers(self) -> None:
        tcp = NoDelayTransport()
        self.assertTrue(tcp_no_delay(Wrapper(Wrapper(tcp))))
        self.assertEqual(tcp.no_delay, [True])

    def test_no_tcp(self) -> None:
        self.assertFalse(tcp_no_delay(StringTransport()))
        self.assertFalse(tcp_no_delay(None))
        self.assertFalse(tcp_no_delay(Wrapper(NoDelayTransport(fail=True))))

    def test_relay_connection(self) -> None:
        """
        The relay's connections send without Nagle's delay.
        """
        attached: list[object] = []

        class Queue:
            def attach(self, proto: object) -> None:
                attached.append(proto)

        tcp = NoDelayTransport()
        proto = RelayProtocol(Queue())  # type: ignore[arg-type]
        proto.makeConnection(Wrapper(tcp))  # type: ignore[arg-type]
        self.assertEqual((tcp.no_delay, attached), ([True], [proto]))


class MiscTests(SynchronousTestCase):
    def test_relay_tail_option(self) -> None:
        """
        C{--relay-tail} bounds the proxy store's in-memory outbox rows.
        """
        from lbtwist import config, tap

        state = os.path.abspath(self.mktemp())
        env = {"fqdn": lambda: "ce.example.org", "exists": lambda p: False}
        proxy = config.load_settings(
            config.PROXY,
            {"state-dir": state, "relay-tail": "5"},
            env={},
            **env,  # type: ignore[arg-type]
        )
        self.assertEqual(config.load_settings(config.PROXY, {}, env={}).relay_tail, 8192)  # type: ignore[arg-type]
        store = tap.make_store(proxy, Clock())
        self.assertEqual(store._outbox_tail, 5)  # type: ignore[attr-defined]
        self.assertTrue(store.relay)

    def test_split_destination(self) -> None:
        self.assertEqual(split_destination("lb.example.org:9001"), ("lb.example.org", 9001))

    def test_queue_ignores_stale_protocol(self) -> None:
        clock = Clock()
        store = make_memory(clock)
        endpoint = FakeEndpoint()
        queue = RelayQueue(DEST1, store, clock, endpoint, RelaySettings(), jitter=lambda: 0)
        queue.startService()
        self.addCleanup(queue.stopService)
        old = endpoint.current
        self.assertTrue(queue.connected)
        old.loseConnection()
        clock.advance(1)
        self.assertTrue(queue.connected)
        # A late reply on the old connection changes nothing.
        old.answer(n=1)
        self.assertTrue(queue.connected)
