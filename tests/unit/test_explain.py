# -*- test-case-name: tests.unit.test_explain -*-
"""
Tests for L{lbtwist.core.states.explain}: what each event did, and the status at a time.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.states import compute_status
from lbtwist.core.states.explain import (
    BY_ARRIVAL,
    DUPLICATE,
    FILLED,
    LATE,
    MOVED,
    NO_EFFECT,
    effect_dict,
    explain,
    format_effects,
    skew_by_source,
    status_at,
)
from tests import traces
from tests.traces import parse_lines


def arrived(events: list[Any], delay: int = 2_000_000) -> list[tuple[Any, int | None]]:
    return [(ev, ev.date + delay) for ev in events]


def entering(events: list[Any], state: str) -> Any:
    """
    The event with which the fold of C{events} (in order) first reaches C{state}.
    """
    return next(
        ev
        for n, ev in enumerate(events, 1)
        if compute_status([(e, i) for i, e in enumerate(events[:n])]).state == state
    )


class ExplainTests(SynchronousTestCase):
    """
    L{explain} on hand-made traces.
    """

    def test_in_order(self) -> None:
        events = parse_lines(traces.cream_done_ok_unpurged())
        effects = explain(arrived(events))
        self.assertEqual(len(effects), len(events))
        self.assertEqual([e.number for e in effects], list(range(1, len(events) + 1)))
        first = effects[0]
        self.assertEqual(
            (first.kind, first.from_state, first.to_state), (MOVED, "Unknown", "Submitted")
        )
        self.assertIn("owner", first.fields)
        # The moves, in order, end where the status is.
        moves = [(e.from_state, e.to_state) for e in effects if e.kind == MOVED]
        self.assertEqual(
            moves[-1][1], compute_status([(ev, i) for i, ev in enumerate(events)]).state
        )
        self.assertEqual(
            [to for _, to in moves], ["Submitted", "Waiting", "Scheduled", "Running", "Done"]
        )
        tags = [e for e in effects if e.event.type == "UserTag"]
        self.assertEqual([(e.kind, e.fields) for e in tags], [(FILLED, ("user_tags",))] * 2)
        self.assertFalse([e for e in effects if e.kind in (LATE, DUPLICATE)])

    def test_late_event(self) -> None:
        """
        An event arriving after the job is Done, dated before the last one applied,
        is ignored as late, with both dates.
        """
        events = parse_lines(traces.cream_done_ok_unpurged())
        running = next(i for i, ev in enumerate(events) if ev.get("new_state") == "REALLY-RUNNING")
        late = events.pop(running)
        events.append(late)
        effects = explain(arrived(events))
        last = effects[-1]
        self.assertIs(last.event, late)
        self.assertEqual(last.kind, LATE)
        self.assertEqual((last.from_state, last.to_state), ("Done", "Done"))
        self.assertEqual(last.late_before, events[-2].date)
        self.assertLess(late.date, last.late_before)
        text = format_effects(effects)
        self.assertIn("ignored as late", text.splitlines()[-1])

    def test_late_event_that_fills(self) -> None:
        """
        A late event that still changes the fold (a user tag) is reported by what it
        did, and as late.
        """
        events = parse_lines(traces.cream_done_ok_unpurged())
        # The second tag (phase=two) replaces the first one's value.
        tag = max(i for i, ev in enumerate(events) if ev.type == "UserTag")
        moved = events.pop(tag)
        events.append(moved)
        last = explain(arrived(events))[-1]
        self.assertEqual((last.kind, last.fields), (FILLED, ("user_tags",)))
        self.assertIsNotNone(last.late_before)

    def test_duplicate(self) -> None:
        events = parse_lines(traces.cream_done_ok_unpurged())
        events.insert(3, events[2])
        effects = explain(arrived(events))
        self.assertEqual(effects[3].kind, DUPLICATE)
        self.assertEqual(effects[3].duplicate_of, 3)
        self.assertEqual(effects[3].fields, ())
        self.assertNotEqual(effects[2].kind, DUPLICATE)
        self.assertIn("duplicate of event 3", format_effects(effects).splitlines()[3])

    def test_aborted_by(self) -> None:
        """
        The event that made the job Aborted is the one shown moving it there.
        """
        events = parse_lines(traces.cream_aborted())
        effects = explain(arrived(events))
        (abort,) = [e for e in effects if e.to_state == "Aborted" and e.kind == MOVED]
        self.assertEqual(abort.event.type, "CREAMAbort")
        self.assertIn("reason", abort.fields)
        self.assertEqual(abort.from_state, "Waiting")
        after = effects[effects.index(abort) + 1 :]
        self.assertTrue(after)
        self.assertTrue(all(e.to_state == "Aborted" for e in after))
        self.assertIn(NO_EFFECT, [e.kind for e in after])

    def test_skew(self) -> None:
        events = parse_lines(traces.cream_aborted())
        effects = explain(arrived(events, delay=-3_000_000))
        self.assertEqual({e.skew for e in effects}, {3_000_000})
        found = skew_by_source(effects)
        self.assertEqual(sum(n for n, _, _ in found.values()), len(events))
        self.assertEqual({(lo, hi) for _, lo, hi in found.values()}, {(3_000_000, 3_000_000)})
        record = effect_dict(effects[0], with_skew=True)
        self.assertEqual(record["skew_s"], 3.0)
        json.dumps(record)
        self.assertNotIn("skew_s", effect_dict(effects[0]))
        self.assertIn("DATE - arrival per producer", format_effects(effects, with_skew=True))
        self.assertNotIn("arrival", format_effects(effects))


class StatusAtTests(SynchronousTestCase):
    """
    L{status_at}: the fold of the events known at a time.
    """

    def test_by_date(self) -> None:
        events = parse_lines(traces.cream_done_ok_unpurged())
        pairs = arrived(events)
        running = entering(events, "Running")
        self.assertEqual(status_at(pairs, running.date).state, "Running")
        self.assertEqual(status_at(pairs, running.date - 1).state, "Scheduled")
        self.assertEqual(status_at(pairs, events[0].date - 1).state, "Unknown")
        self.assertEqual(
            status_at(pairs, events[-1].date),
            compute_status([(ev, i) for i, ev in enumerate(events, 1)]),
        )

    def test_by_arrival(self) -> None:
        events = parse_lines(traces.cream_done_ok_unpurged())
        running = entering(events, "Running")
        # Everything arrives at once an hour later: by date it ran, by arrival nothing was known.
        late = [(ev, events[-1].date + 3_600_000_000) for ev in events]
        self.assertEqual(status_at(late, running.date).state, "Running")
        self.assertEqual(status_at(late, running.date, by=BY_ARRIVAL).state, "Unknown")
        self.assertEqual(status_at(late, late[0][1], by=BY_ARRIVAL).state, "Done")

    def test_duplicates_and_errors(self) -> None:
        events = parse_lines(traces.cream_aborted())
        doubled = arrived(events + events)
        self.assertEqual(
            status_at(doubled, events[-1].date), status_at(arrived(events), events[-1].date)
        )
        self.assertRaises(ValueError, status_at, doubled, 0, by="nonsense")
        self.assertRaises(ValueError, status_at, [(events[0], None)], 0, by=BY_ARRIVAL)
