# -*- test-case-name: tests.unit.test_admin_relay -*-
"""
Tests for L{lbtwist.service.web.admin_relay}: the query port's C{/relay} routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.security.authz import Policy
from lbtwist.security.identity import Identity
from lbtwist.service.web.admin_relay import RelayAdminResource
from tests.unit import test_relayadmin
from tests.unit.test_relay import DEST1, T0

ADMIN = "/DC=org/DC=example/CN=Admin"


def now_run(work: Callable[[], Any]) -> Deferred[Any]:
    return maybeDeferred(work)


class Queue:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Relay:
    running = True

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}

    def queue(self, dest: str) -> Queue:
        return self.queues.setdefault(dest, Queue())


class AdminRouteTests(test_relayadmin.RelayAdminTests):
    """
    The same store as L{RelayAdminTests}, through HTTP (its tests run here too).
    """

    def resource(self, dn: str | None = ADMIN) -> RelayAdminResource:
        self.relay_service = Relay()
        return RelayAdminResource(
            self.state,
            identify=lambda r: None if dn is None else Identity(dn, (), ()),
            policy=Policy(),
            super_users=[ADMIN],
            relay=self.relay_service,
            now=lambda: T0 + 100,
            run=now_run,
        )

    def call(
        self,
        method: bytes,
        path: list[bytes],
        args: dict[bytes, list[bytes]] | None = None,
        dn: str | None = ADMIN,
    ) -> tuple[int, Any]:
        request = DummyRequest([b"relay", *path])
        request.method = method
        request.args = args or {}
        body = self.resource(dn).render(request)
        if isinstance(body, bytes):
            request.write(body)
            request.finish()
        self.assertEqual(request.finished, 1)
        return request.responseCode or 200, json.loads(b"".join(request.written))

    def test_status_route(self) -> None:
        code, rows = self.call(b"GET", [])
        self.assertEqual(code, 200)
        self.assertEqual([(r["destination"], r["rejected"]) for r in rows][0], (DEST1, 2))

    def test_rejected_route(self) -> None:
        code, rows = self.call(b"GET", [b"rejected"], {b"destination": [DEST1.encode()]})
        self.assertEqual((code, [r["event"] for r in rows]), (200, self.rejected_ids))

    def test_retry_route_wakes(self) -> None:
        code, body = self.call(b"POST", [b"retry"], {b"all": [b"1"]})
        self.assertEqual((code, body["events"], body["destinations"]), (200, 2, [DEST1]))
        self.assertEqual(self.relay_service.queues[DEST1].woken, 1)
        self.assertEqual(self.successResultOf(self.store.rejected()), [])

    def test_drop_route(self) -> None:
        code, body = self.call(b"POST", [b"drop"], {b"all": [b"1"]})
        self.assertEqual((code, body["error"]), (400, "drop needs a reason"))
        code, body = self.call(
            b"POST", [b"drop"], {b"event": [str(self.rejected_ids[0]).encode()], b"reason": [b"x"]}
        )
        self.assertEqual((code, body["events"]), (200, 1))

    def test_refused(self) -> None:
        for dn in (None, "/DC=org/DC=example/CN=Somebody"):
            code, body = self.call(b"GET", [], dn=dn)
            self.assertEqual(code, 403)
        self.assertIn("ADMIN_ACCESS", body["error"])

    def test_bad_requests(self) -> None:
        self.assertEqual(self.call(b"GET", [b"nope"])[0], 404)
        self.assertEqual(self.call(b"POST", [b"retry"], {b"event": [b"x"]})[0], 400)
        code, body = self.call(b"POST", [b"retry"])
        self.assertEqual(code, 400)
        self.assertIn("--all", body["error"])


class SweepResyncTests(SynchronousTestCase):
    def test_idle_destination_with_rows(self) -> None:
        """
        A sweep that finds waiting rows no idle queue knows of has the store read its
        outbox from the database again (rows re-queued by another process), then wakes
        the queue.
        """
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        from lbtwist.service.relay import RelayService
        from lbtwist.store.interface import OutboxStats

        class Store:
            resyncs = 0
            reads: list[int] = []

            def add_commit_listener(self, listener: object) -> None:
                pass

            def outbox_stats(self) -> Deferred[dict[str, OutboxStats]]:
                return succeed({DEST1: OutboxStats(DEST1, 2, int(T0 * 1e6), 0)})

            def outbox_resync(self) -> Deferred[None]:
                Store.resyncs += 1
                return succeed(None)

            def outbox_after(self, dest: str, after: int, limit: int) -> Deferred[list[object]]:
                Store.reads.append(after)
                return Deferred()  # still reading

        class Endpoint:
            def connect(self, factory: object) -> Deferred[object]:
                return Deferred()

        clock = Clock()
        service = RelayService(Store(), clock, lambda d: Endpoint())  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(Store.resyncs, 1)
        self.assertIn(DEST1, service.queues)
        # The queue is reading now (not idle): the next sweep does not resync.
        service.sweep()
        self.assertEqual(Store.resyncs, 1)
