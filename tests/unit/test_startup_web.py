# -*- test-case-name: tests.unit.test_startup_web -*-
"""
The query service's answer for a job with events but no registration yet: 404 "not
registered yet" to whoever logged the events, 403 to others.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests import traces
from tests.unit.test_web import (
    DIRECT_UNIQUE,
    STRANGER,
    Harness,
    _result,
    as_json,
    store_with,
)


class NotRegisteredTests(SynchronousTestCase):
    def setUp(self) -> None:
        lines = [line for line in traces.cream_done_ok_unpurged() if "RegJob" not in line]
        self.store = store_with(lines)
        self.h = Harness(self.store)
        found = _result(self.store.find_status(DIRECT_UNIQUE))
        assert found is not None and not found[1].owner, "the trace must lack its RegJob"

    def test_logger_told_not_registered(self) -> None:
        req = self.h.get(f"/{DIRECT_UNIQUE}")
        self.assertEqual(req.responseCode, 404)
        self.assertIn("not registered yet", as_json(req)["message"])

    def test_stranger_still_forbidden(self) -> None:
        req = self.h.get(f"/{DIRECT_UNIQUE}", as_dn=STRANGER)
        self.assertEqual(req.responseCode, 403)
        self.assertNotIn("not registered", as_json(req)["message"])
