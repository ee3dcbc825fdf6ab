# -*- test-case-name: tests.unit.test_purge_web -*-
"""
Tests for L{lbtwist.service.web.admin}: C{POST /admin/purge} on the query resource,
who may purge, its parameters, and the 410 of a purged job.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.core.events import parse_event
from lbtwist.core.purge import PurgeRules
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.purge import Purger
from lbtwist.service.web.admin import AdminRequests
from lbtwist.service.web.resources import QueryResource
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from lbtwist.testing import HeldRunner
from tests import traces

OWNER = traces.CREAM_USER
ADMIN = "/DC=org/DC=example/O=People/CN=Ada Admin"
PURGER = "/DC=org/DC=example/O=People/CN=Petr Purger"
POLICY = f'resource "LB" {{ action "PURGE" {{ rule permit {{ subject = "{PURGER}" }} }} }}'
#: 2024-05-01: every fixture job is past its 31 days.
LATER = 1_714_521_600.0


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.clock = Clock()
        self.clock.advance(LATER)
        self.runner: Any = run_now
        self.make()

    def make(self) -> None:
        self.store = SQLiteStore(
            os.path.join(self.dir, "lbtwist.sqlite"), clock=self.clock, runner=self.runner
        )
        self.addCleanup(self.store.close)
        self.store.start()
        for job in (traces.cream_done_ok, traces.cream_aborted):
            self.store.store([(line, parse_event(line)) for line in job()])
        policy = parse_policy(POLICY)
        self.purger = Purger(self.store, self.clock, state_dir=self.dir)
        self.resource = QueryResource(
            self.store,
            clock=self.clock,
            policy=policy,
            super_users=(ADMIN,),
            identify=lambda request: self.who,
        )
        self.resource.admin = AdminRequests(
            self.purger, PurgeRules(), policy=policy, super_users=(ADMIN,)
        )
        self.who = Identity(ADMIN)

    def ask(self, target: str, *, method: bytes = b"POST", as_dn: str = ADMIN) -> DummyRequest:
        self.who = Identity(as_dn)
        path, _, _ = target.partition("?")
        req = DummyRequest([seg.encode() for seg in path[1:].split("/")])
        req.method = method
        req.uri = target.encode()
        self.resource.render(req)  # type: ignore[arg-type]
        return req

    def answer(self, req: DummyRequest) -> Any:
        assert req.finished
        return json.loads(b"".join(req.written))

    def test_superUserPurges(self) -> None:
        req = self.ask("/admin/purge")
        self.assertEqual(req.responseCode, 200)
        data = self.answer(req)
        self.assertEqual(data["count"], 2)
        self.assertEqual(
            sorted(data["jobs"]),
            sorted([traces.DIRECT_JOBID, "https://cream-ce01.example.org:9000/CREAM812461379"]),
        )
        self.assertFalse(data["dry_run"])

    def test_thenGone(self) -> None:
        """
        After the purge the job's page answers 410 with a clear message.
        """
        self.ask("/admin/purge")
        req = self.ask("/CREAM812461375", method=b"GET", as_dn=OWNER)
        self.assertEqual(req.responseCode, 410)
        self.assertIn("was purged", self.answer(req)["message"])

    def test_purgeActionHolder(self) -> None:
        req = self.ask("/admin/purge?dry_run=1&other=never&aborted=1d", as_dn=PURGER)
        self.assertEqual(req.responseCode, 200)
        data = self.answer(req)
        self.assertTrue(data["dry_run"])
        self.assertIn("other=never", data["rules"])
        self.assertEqual(data["count"], 2)
        self.assertEqual(
            len(
                self.purger.store.backend.conn.execute(  # type: ignore[attr-defined]
                    "SELECT jobid FROM jobs"
                ).fetchall()
            ),
            2,
        )

    def test_ownerRefused(self) -> None:
        req = self.ask("/admin/purge", as_dn=OWNER)
        self.assertEqual(req.responseCode, 403)
        self.assertIn("PURGE or ADMIN_ACCESS", self.answer(req)["message"])

    def test_getRefused(self) -> None:
        req = self.ask("/admin/purge", method=b"GET")
        self.assertEqual(req.responseCode, 405)

    def test_postElsewhereRefused(self) -> None:
        req = self.ask("/CREAM812461375")
        self.assertEqual(req.responseCode, 405)

    def test_unknownAdmin(self) -> None:
        self.assertEqual(self.ask("/admin/reboot").responseCode, 404)

    def test_badParameters(self) -> None:
        req = self.ask("/admin/purge?done=soon")
        self.assertEqual(req.responseCode, 400)
        self.assertIn("bad duration", self.answer(req)["message"])
        req = self.ask("/admin/purge?running=1d")
        self.assertEqual(req.responseCode, 400)
        self.assertIn("unknown parameter", self.answer(req)["message"])
        req = self.ask("/admin/purge?dry_run=maybe")
        self.assertEqual(req.responseCode, 400)

    def test_busy(self) -> None:
        """
        A purge asked for while one runs gets 503.
        """
        held = HeldRunner()
        self.runner = held
        self.make()
        while held.pending:
            held.release()
        first = self.ask("/admin/purge")
        self.assertFalse(first.finished)
        second = self.ask("/admin/purge")
        self.assertEqual(second.responseCode, 503)
        while held.pending:
            held.release()
        self.assertEqual(first.responseCode, 200)
