# -*- test-case-name: tests.unit.test_relay_lease -*-
"""
The relay's side of the relay leases of a shared store (L{RelayQueue.restart},
the store's C{add_lease_listener}), on the memory store; the leases themselves
are tested against PostgreSQL in L{tests.integration.test_relay_lease}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import PROXY, load_settings
from lbtwist.core.errors import InvalidValue
from lbtwist.store.interface import OutboxEntry
from tests.unit.test_relay import DEST1, JOB_A, Harness, reconnect_delay, wms_lines


class LeasedStore:
    """
    A memory store that says which destinations it lost, and can hold reads.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost: list[Any] = []
        self.held: list[tuple[Deferred[list[OutboxEntry]], Deferred[list[OutboxEntry]]]] = []
        self.hold_reads = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_lease_listener(self, listener: Any) -> None:
        self.lost.append(listener)

    def outbox_after(self, destination: str, after_id: int, limit: int) -> Any:
        d = self.inner.outbox_after(destination, after_id, limit)
        if not self.hold_reads:
            return d
        later: Deferred[list[OutboxEntry]] = Deferred()
        self.held.append((d, later))
        return later

    def lose(self, *destinations: str) -> None:
        for listener in self.lost:
            listener(set(destinations))


class RestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(window=4)
        self.store = LeasedStore(self.h.store)
        self.h.store = self.store
        self.h.service.store = self.store
        self.h.service.startService()
        self.addCleanup(self.h.service.stopService)

    def queue(self) -> Any:
        return self.h.service.queues[DEST1]

    def test_lost_lease_stops_and_rereads_from_first_unacknowledged(self) -> None:
        """
        A lost lease drops the connection and forgets the rows read; the queue
        then reads from the first row still in the outbox.
        """
        lines = wms_lines(JOB_A)
        self.h.store_lines(lines)
        endpoint = self.h.endpoints[DEST1]
        first = endpoint.current
        self.assertEqual(first.take_lines(), lines[:4])
        first.answer(n=1)
        self.assertEqual(first.take_lines(), lines[4:5])
        self.store.lose("elsewhere.example.org:9001")
        self.assertFalse(first.closed)
        self.store.lose(DEST1)
        self.assertTrue(first.closed)
        queue = self.queue()
        self.assertEqual((queue.buffered, queue.in_flight), (0, 0))
        self.assertEqual(queue.counters.resent, 4)
        # Acknowledged before the loss: left the outbox.
        self.assertEqual(len(self.h.outbox()), len(lines) - 1)
        self.h.clock.advance(reconnect_delay(self.h.settings))
        # The lease is back (woken): from the first row not acknowledged.
        queue.wake()
        self.assertEqual(endpoint.current.take_lines(), lines[1:5])

    def test_read_before_restart_ignored(self) -> None:
        """
        Rows of a read issued before the restart are not sent after it.
        """
        self.store.hold_reads = True
        lines = wms_lines(JOB_A)
        self.h.store_lines(lines)
        [(inner, later)] = self.store.held
        self.store.lose(DEST1)
        rows: list[OutboxEntry] = []
        inner.addCallback(rows.extend)
        later.callback(rows)
        self.assertEqual(self.queue().buffered, 0)
        self.assertEqual(self.h.endpoints[DEST1].current.take_lines(), [])


class OptionTests(SynchronousTestCase):
    def settings(self, value: str) -> Any:
        return load_settings(
            PROXY, {"relay-lease": value}, env={}, exists=lambda p: False, fqdn=lambda: "h"
        )

    def test_relay_lease(self) -> None:
        self.assertEqual(self.settings("15s").relay_lease, 15.0)
        self.assertEqual(self.settings("2.5").relay_lease, 2.5)
        self.assertRaises(InvalidValue, self.settings, "0")
        self.assertRaises(InvalidValue, self.settings, "soon")

    def test_default(self) -> None:
        settings = load_settings(PROXY, {}, env={}, exists=lambda p: False, fqdn=lambda: "h")
        self.assertEqual(settings.relay_lease, 15.0)
