# -*- test-case-name: tests.unit.test_dump_web -*-
"""
Tests for C{GET /dump} (L{lbtwist.service.web.dump}): admins only, the window,
pages written as the connection takes them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.core.unparse import dump_line
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.web.dump import BadDumpRequest, parse_window
from lbtwist.service.web.resources import QueryResource
from lbtwist.testing import MemoryStore
from tests import traces
from tests.unit.test_web import ADMIN, OWNER, _result, as_json, store_with


class DumpRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store: MemoryStore = store_with(traces.cream_done_ok(), traces.cream_aborted())
        self.all = _result(self.store.dump())
        self.producers: list[Any] = []
        self.pause = False

    def get(self, target: str, who: str = ADMIN, page_events: int = 5) -> DummyRequest:
        resource = QueryResource(
            self.store,
            clock=Clock(),
            policy=parse_policy(""),
            super_users=(ADMIN,),
            identify=lambda request: Identity(who),
            page_events=page_events,
        )
        path, _, _ = target.partition("?")
        req = DummyRequest([seg.encode() for seg in path[1:].split("/")])
        req.uri = target.encode()

        def register(producer: Any, streaming: bool) -> None:
            self.assertTrue(streaming)
            self.producers.append(producer)
            if self.pause:
                producer.pauseProducing()

        req.registerProducer = register  # type: ignore[method-assign]
        req.unregisterProducer = lambda: None  # type: ignore[method-assign]
        resource.render(req)  # type: ignore[arg-type]
        return req

    def test_admin_dumps_everything(self) -> None:
        req = self.get("/dump")
        self.assertTrue(req.finished)
        self.assertEqual(req.responseCode, 200)
        expected = "".join(dump_line(s.event, s.arrived) for s in self.all)
        self.assertEqual(b"".join(req.written).decode(), expected)
        # One write per page of page_events.
        self.assertEqual(len(req.written), -(-len(self.all) // 5))

    def test_window(self) -> None:
        # MemoryStore's clock stands at 0: every event arrived at 0.
        self.assertEqual(b"".join(self.get("/dump?from=0").written), b"")
        req = self.get("/dump?to=1970-01-01T00:00:00Z")
        self.assertEqual(len(b"".join(req.written).decode().split("\n\n")) - 1, len(self.all))
        self.assertEqual(
            parse_window([("from", "20240314092653"), ("to", "1710408414.5")]),
            (1710408413000000, 1710408414500000),
        )

    def test_paused_connection_gets_no_more(self) -> None:
        self.pause = True
        req = self.get("/dump", page_events=4)
        self.assertEqual(len(req.written), 1)
        self.assertFalse(req.finished)
        (producer,) = self.producers
        producer.resumeProducing()
        self.assertEqual(len(req.written), -(-len(self.all) // 4))
        self.assertTrue(req.finished)

    def test_stopped_connection(self) -> None:
        self.pause = True
        req = self.get("/dump", page_events=4)
        self.producers[0].stopProducing()
        self.assertEqual(len(req.written), 1)
        self.assertFalse(req.finished)

    def test_owner_refused_and_bad_parameters(self) -> None:
        req = self.get("/dump", who=OWNER)
        self.assertEqual(req.responseCode, 403)
        self.assertIn("ADMIN_ACCESS", as_json(req)["message"])
        for query in ["from=yesterday", "since=1", "from=10&to=5"]:
            req = self.get(f"/dump?{query}")
            self.assertEqual(req.responseCode, 400, query)
        self.assertRaises(BadDumpRequest, parse_window, [("to", "x")])
