# -*- test-case-name: tests.unit.test_client_pages -*-
"""
L{lbtwist.client.query.QueryClient.job_events} follows the pages of a long history.
"""

from __future__ import annotations

import json
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.client.query import QueryClient, Reply

UNIQUE = "CREAM900000001"
JOBID = f"https://ce.example.org:9000/{UNIQUE}"


class JobEventsPagesTests(SynchronousTestCase):
    def client(self, pages: dict[str, Any]) -> tuple[QueryClient, list[str]]:
        client = QueryClient(MemoryReactorClock(), SSL.Context(SSL.TLS_METHOD))
        asked: list[str] = []

        async def get(bases: Any, path: str, *, what: str, allow: Any = ()) -> Reply:
            asked.append(path)
            return Reply("https://x" + path, 200, json.dumps(pages[path]).encode())

        client.get = get  # type: ignore[method-assign]
        return client, asked

    def events(self, client: QueryClient, **kw: Any) -> list[Any]:
        coro = client.job_events(JOBID, [("ce.example.org", 9000)], **kw)
        return self.successResultOf(Deferred.fromCoroutine(coro))  # type: ignore[no-any-return]

    def test_follows_pages(self) -> None:
        base = f"/{UNIQUE}/events"
        pages = {
            base: {"events": [{"n": 1}, {"n": 2}], "events_from": 1, "next_events_from": 3},
            f"{base}?events_from=3": {
                "events": [{"n": 3}],
                "events_from": 3,
                "next_events_from": 4,
            },
            f"{base}?events_from=4": {
                "events": [{"n": 4}],
                "events_from": 4,
                "next_events_from": None,
            },
        }
        client, asked = self.client(pages)
        self.assertEqual([e["n"] for e in self.events(client)], [1, 2, 3, 4])
        self.assertEqual(asked, list(pages))
        # A history in one page is a plain list, read once.
        client, asked = self.client({f"/{UNIQUE}/events": [{"n": 1}]})
        self.assertEqual(self.events(client), [{"n": 1}])
        self.assertEqual(len(asked), 1)

    def test_pages_bounded(self) -> None:
        base = f"/{UNIQUE}/events"
        pages = {
            base: {"events": [{"n": 1}], "next_events_from": 2},
            f"{base}?events_from=2": {"events": [{"n": 2}], "next_events_from": 2},
        }
        client, asked = self.client(pages)
        self.assertEqual(len(self.events(client, max_pages=5)), 5)
        self.assertEqual(len(asked), 5)
