# -*- test-case-name: tests.unit.test_trace -*-
"""
Tests for L{lbtwist.core.trace}: the trace row of a status, running intervals,
requests and their matching, the answer's text.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import InvalidValue
from lbtwist.core.states.status import JobStatus
from lbtwist.core.trace import (
    TraceRequest,
    changed_row,
    job_answer,
    matches,
    render_text,
    running_interval,
    trace_row,
)

S = 1_000_000
T0 = 1_700_000_000 * S
DN = "/DC=org/DC=example/CN=Jana Novakova"


def status(**kw: object) -> JobStatus:
    times = {"Submitted": T0, "Running": T0 + 100 * S, "Done": T0 + 400 * S}
    base: dict[str, object] = dict(
        state="Done",
        owner=DN,
        user_fqans=["/atlas/Role=production"],
        cream_lrms_id="4711.batch",
        cream_id="https://ce:8443/CREAM123",
        cream_node="wn7",
        stateEnterTimes=times,
        lastUpdateTime=T0 + 500 * S,
        event_count=5,
    )
    base.update(kw)
    return JobStatus(**base)  # type: ignore[arg-type]


def request(*params: tuple[str, str]) -> TraceRequest:
    return TraceRequest.parse(params)


class RowTests(SynchronousTestCase):
    def test_row(self) -> None:
        row = trace_row("https://lb:9000/CREAM123", status())
        self.assertEqual(
            (row.lrms_id, row.cream_id, row.worker_node), ("4711.batch", "CREAM123", "wn7")
        )
        self.assertEqual((row.running_from, row.running_to), (T0 + 100 * S, T0 + 400 * S))
        self.assertEqual((row.first, row.last), (T0, T0 + 400 * S))
        self.assertEqual(row.owner_norm, "/dc=org/dc=example/cn=jana novakova")
        self.assertEqual(row.fqan, "/atlas/Role=production")

    def test_intervals(self) -> None:
        self.assertEqual(running_interval({"Submitted": T0}), (None, None))
        self.assertEqual(running_interval({"Running": T0}), (T0, None))
        # An entry before the run (an old Done of a resubmitted job) does not end it.
        self.assertEqual(running_interval({"Running": T0, "Done": T0 - S}), (T0, None))
        self.assertEqual(
            running_interval({"Running": T0, "Aborted": T0 + 9 * S, "Cleared": T0 + 5 * S}),
            (T0, T0 + 5 * S),
        )

    def test_changed(self) -> None:
        self.assertIsNone(changed_row("j", status(), status(reason="x")))
        self.assertIsNotNone(changed_row("j", status(), status(cream_node="wn8")))
        self.assertIsNotNone(changed_row("j", JobStatus(), status()))


class RequestTests(SynchronousTestCase):
    def test_matching(self) -> None:
        row = trace_row("https://lb:9000/CREAM123", status())
        self.assertTrue(matches(request(("lrms_id", "4711.batch")), row))
        self.assertFalse(matches(request(("lrms_id", "4712.batch")), row))
        self.assertTrue(matches(request(("cream_id", "https://ce:8443/CREAM123")), row))
        self.assertTrue(matches(request(("jobid", "CREAM123")), row))
        self.assertTrue(matches(request(("node", "wn7"), ("at", str(T0 // S + 200))), row))
        self.assertTrue(matches(request(("node", "wn7"), ("at", str(T0 // S + 400))), row))
        self.assertFalse(matches(request(("node", "wn7"), ("at", str(T0 // S + 401))), row))
        self.assertFalse(matches(request(("node", "wn7"), ("at", str(T0 // S + 99))), row))
        self.assertFalse(matches(request(("node", "wn8"), ("at", str(T0 // S + 200))), row))
        # The DN compared normalized; the window overlaps the job's life.
        self.assertTrue(matches(request(("dn", DN.upper())), row))
        # The job's life: from its first state entry to its last one (Done).
        self.assertTrue(matches(request(("dn", DN), ("from", str(T0 // S + 400))), row))
        self.assertFalse(matches(request(("dn", DN), ("from", str(T0 // S + 401))), row))
        self.assertFalse(matches(request(("dn", DN), ("to", str(T0 // S - 1))), row))
        self.assertTrue(
            matches(request(("fqan", "/atlas/Role=production"), ("to", str(T0 // S))), row)
        )
        # A job started longer than max_lifetime before from is not looked for.
        window = (("dn", DN), ("from", str(T0 // S + 400)))
        self.assertTrue(matches(TraceRequest.parse(window, max_lifetime=400), row))
        self.assertFalse(matches(TraceRequest.parse(window, max_lifetime=399), row))
        still = trace_row("j", status(stateEnterTimes={"Running": T0}))
        self.assertTrue(matches(request(("node", "wn7"), ("at", str(T0 // S + 10**6))), still))

    def test_refused(self) -> None:
        for params in (
            (),
            (("lrms_id", "1"), ("node", "wn7")),
            (("node", "wn7"),),
            (("lrms_id", "1"), ("at", "1")),
            (("node", "wn7"), ("at", "1"), ("from", "1")),
            (("dn", "/CN=x"), ("from", "2"), ("to", "1")),
            (("lrms_id", " "),),
            (("colour", "red"),),
        ):
            with self.assertRaises(InvalidValue, msg=repr(params)):
                request(*params)


class AnswerTests(SynchronousTestCase):
    def test_answerAndText(self) -> None:
        job = job_answer(status().to_json_dict(), ["CREAMExecutor", "LRMS"], purged_at=T0 + 900 * S)
        self.assertEqual(job["owner"], DN)
        self.assertEqual(list(job["entered"]), ["Submitted", "Running", "Done"])
        self.assertTrue(job["purged"])
        text = render_text([job])
        self.assertIn(f"owner: {DN}", text)
        self.assertIn("lrms id: 4711.batch", text)
        self.assertIn("worker node: wn7", text)
        self.assertIn("entered Running: 2023-11-14T22:15:00.000000Z", text)
        self.assertIn("sources: CREAMExecutor LRMS", text)
        self.assertIn("(purged 2023-11-14T22:28:20.000000Z)", text)
        self.assertEqual(render_text([]), "no job found\n")
