# -*- test-case-name: tests.unit.test_explain_web -*-
"""
Tests for the job route's C{?at} and C{?explain} (L{lbtwist.service.web.timeline}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.events import parse_event
from lbtwist.core.states.status import format_iso
from tests import traces
from tests.unit.test_web import ADMIN, DIRECT_UNIQUE, STRANGER, Harness, as_json, body, store_with


class TimelineRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines = traces.cream_done_ok_unpurged()
        self.h = Harness(store_with(self.lines), super_users=(ADMIN,))
        self.dates = [parse_event(x).date for x in self.lines]

    def test_at(self) -> None:
        first = as_json(self.h.get(f"/{DIRECT_UNIQUE}?at={format_iso(self.dates[0])}"))
        self.assertEqual(first["state"], "Submitted")
        last = as_json(self.h.get(f"/{DIRECT_UNIQUE}?at={self.dates[-1] / 1e6:.6f}"))
        self.assertEqual(last, as_json(self.h.get(f"/{DIRECT_UNIQUE}")))
        # The store's clock stood at 0: by arrival, every event was known from then on.
        early = as_json(self.h.get(f"/{DIRECT_UNIQUE}?at={self.dates[-1] / 1e6:.0f}&by=arrival"))
        self.assertEqual(early["state"], "Done")
        none = as_json(self.h.get(f"/{DIRECT_UNIQUE}?at=0&by=date"))
        self.assertEqual(none["state"], "Unknown")
        text = body(self.h.get(f"/{DIRECT_UNIQUE}?at={format_iso(self.dates[0])}&format=text"))
        self.assertIn(b"Submitted", text)

    def test_explain(self) -> None:
        data = as_json(self.h.get(f"/{DIRECT_UNIQUE}?explain"))
        self.assertEqual(len(data["events"]), len(self.lines))
        self.assertEqual(data["events"][0]["effect"], "moved")
        self.assertNotIn("skew_s", data["events"][0])
        admin = as_json(self.h.get(f"/{DIRECT_UNIQUE}?explain", as_dn=ADMIN))
        self.assertIn("skew_s", admin["events"][0])
        text = body(self.h.get(f"/{DIRECT_UNIQUE}?explain&format=text"))
        self.assertIn(b"Running -> Done", text)
        html = self.h.get(f"/{DIRECT_UNIQUE}?explain&format=html")
        self.assertIn(b"<pre>", body(html))

    def test_rights_and_errors(self) -> None:
        self.assertEqual(self.h.get(f"/{DIRECT_UNIQUE}?explain", as_dn=STRANGER).responseCode, 403)
        self.assertEqual(self.h.get(f"/{DIRECT_UNIQUE}?at=0", as_dn=STRANGER).responseCode, 403)
        for query in ["at=yesterday", "at=0&explain", "by=arrival", "at=0&by=sideways"]:
            req = self.h.get(f"/{DIRECT_UNIQUE}?{query}")
            self.assertEqual(req.responseCode, 400, query)
