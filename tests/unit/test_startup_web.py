# -*- test-case-name: tests.unit.test_startup_web -*-
"""
The query service's answer for a job with events but no registration yet: 404 "not
registered yet" to whoever logged the events, 403 to others; the job list's count and
limited-result warning.
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


class JobsListTests(SynchronousTestCase):
    """
    C{lbtwist jobs}: "Found 1 job", and L&B's warning when C{--limit} left jobs out.
    """

    def run_jobs(self, page: dict[str, object], *argv: str) -> tuple[int, str, str]:
        import json

        from lbtwist.cli.query import query_jobs
        from tests.unit.test_client import CommandTests

        case = CommandTests("test_jobs_paging")
        url = "https://lb:9000/" + ("?limit=1" if "--limit" in argv else "")
        status, out, err, _ = case.run_query(
            query_jobs,
            ["jobs", *argv],
            {url: (200, {}, json.dumps(page).encode())},
            GLITE_WMS_QUERY_SERVER="lb:9000",
        )
        return status, out, err

    def test_limited(self) -> None:
        page = {"jobs": [{"jobId": "https://lb:9000/a", "state": "Running"}], "cursor": "more"}
        status, out, err = self.run_jobs(page, "--limit", "1")
        self.assertEqual(status, 0, err)
        self.assertEqual(err, "Warning: only limited result returned!\n")
        self.assertTrue(out.endswith("\nFound 1 job\n"), out)

    def test_all_returned(self) -> None:
        page = {"jobs": [{"jobId": "https://lb:9000/a", "state": "Running"}], "cursor": None}
        status, out, err = self.run_jobs(page, "--limit", "1")
        self.assertEqual((status, err), (0, ""))
        status, out, err = self.run_jobs({"jobs": [], "cursor": None})
        self.assertTrue(out.endswith("\nFound 0 jobs\n"), out)
