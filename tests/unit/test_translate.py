# -*- test-case-name: tests.unit.test_translate -*-
"""
Tests for L{lbtwist.core.translate}: gLite events generated for WMS jobs on CREAM.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.events import format_event, parse_event
from lbtwist.core.seqcode import parse_seqcode
from lbtwist.core.states import compute_status
from lbtwist.core.states.glite import is_cream_event
from lbtwist.core.states.status import DONE_CANCELLED, DONE_FAILED, DONE_OK, JobStatus
from lbtwist.core.translate import generate_events, proxy_policy
from tests import traces

PROXY = "proxy.cream-ce01.example.org"


def replay(prelude: list[str], tail: list[str]) -> tuple[list[tuple[Any, int]], list[list[Any]]]:
    """
    Feed the events as the proxy would: after each CREAM event, generate.

    @return: every stored (event, arrival) pair, generated ones included, and
        the list of generated events per CREAM trigger.
    """
    stored: list[tuple[Any, int]] = []
    per_trigger: list[list[Any]] = []
    for ev in traces.parse_lines(prelude + tail):
        before = compute_status(stored)
        stored.append((ev, len(stored)))
        after = compute_status(stored)
        if is_cream_event(ev):
            made = generate_events(ev, before, after, proxy_host=PROXY)
            per_trigger.append(made)
            for gen in made:
                stored.append((gen, len(stored)))
    return stored, per_trigger


def unaware(stored: list[tuple[Any, int]]) -> JobStatus:
    return compute_status(
        [(ev, n) for ev, n in stored if not is_cream_event(ev)], cream_aware=False
    )


class GenerateTests(SynchronousTestCase):
    """
    The table of design section 6, field by field.
    """

    def test_done_ok_sequence(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Really-running", "Done-ok"])
        stored, per_trigger = replay(prelude, tail)
        made = [gen for batch in per_trigger for gen in batch]
        self.assertEqual(
            [(g.type, g.source) for g in made],
            [
                ("Accepted", "LRMS"),
                ("Running", "LogMonitor"),
                ("ReallyRunning", "LogMonitor"),
                ("Done", "LogMonitor"),
            ],
        )
        accepted, running, _, done = made
        self.assertEqual(accepted.get("from"), "CREAMExecutor")
        self.assertEqual(accepted.get("from_host"), traces.CE_HOST)
        self.assertEqual(accepted.get("local_jobid"), "8152.batch01.example.org")
        self.assertEqual(running.get("node"), traces.WORKER)
        self.assertEqual(done.get("status_code"), "OK")
        self.assertEqual(done.get("exit_code"), "0")
        final = compute_status(stored)
        self.assertEqual((final.state, final.done_code), ("Done", DONE_OK))
        self.assertEqual((unaware(stored).state, unaware(stored).done_code), ("Done", DONE_OK))

    def test_common_fields(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle"])
        events = traces.parse_lines(prelude + tail)
        trigger = events[-1]
        before = compute_status([(e, i) for i, e in enumerate(events[:-1])])
        after = compute_status([(e, i) for i, e in enumerate(events)])
        [gen] = generate_events(trigger, before, after, proxy_host=PROXY)
        self.assertEqual(gen.date, trigger.date)
        self.assertEqual(gen.user, trigger.user)
        self.assertEqual(gen.host, PROXY)
        self.assertEqual(gen.jobid, traces.WMS_JOBID)
        self.assertEqual(gen.src_instance, "lbtwist-proxy")
        self.assertEqual(gen.priority, 0)
        self.assertIn(("DG.GENERATED_BY", "lbtwist-proxy"), gen.extra)
        self.assertTrue(gen.generated)
        trig_code, gen_code = parse_seqcode(trigger.seqcode), parse_seqcode(gen.seqcode)
        assert trig_code is not None and gen_code is not None
        self.assertEqual(gen_code.get("LRMS"), trig_code.get("LRMS") + 1)
        self.assertEqual(gen_code.with_counter("LRMS", 0), trig_code.with_counter("LRMS", 0))
        # A real ULM line that parses back to the same event.
        self.assertEqual(parse_event(format_event(gen)), gen)
        self.assertIn('DG.GENERATED_BY="lbtwist-proxy"', format_event(gen))

    def test_pending_purged_generate_nothing(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Aborted", "Purged"])
        _, per_trigger = replay(prelude, tail)
        # CREAMAccepted, CREAMStore, Pending, CREAMCall: nothing.
        self.assertEqual(per_trigger[:4], [[], [], [], []])
        self.assertEqual(per_trigger[-1], [])  # Purged

    def test_failed(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Done-failed"])
        stored, per_trigger = replay(prelude, tail)
        done = per_trigger[-1][0]
        self.assertEqual((done.type, done.get("status_code")), ("Done", "FAILED"))
        self.assertEqual(done.get("reason"), "reason=1")
        self.assertEqual(done.get("exit_code"), "1")
        self.assertEqual(unaware(stored).done_code, DONE_FAILED)

    def test_cancelled(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Cancelled"])
        stored, per_trigger = replay(prelude, tail)
        # The CREAMCancel changes cream_state; the CREAMStatus after it does not.
        self.assertEqual(per_trigger[-1], [])
        done = per_trigger[-2][0]
        self.assertEqual((done.type, done.get("status_code")), ("Done", "CANCELLED"))
        self.assertEqual(done.get("reason"), "Cancelled by user")
        status = unaware(stored)
        self.assertEqual((status.state, status.done_code), ("Cancelled", DONE_CANCELLED))

    def test_aborted_held(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Aborted"])
        stored, per_trigger = replay(prelude, tail)
        abort = per_trigger[-2][0]
        self.assertEqual(
            (abort.type, abort.get("reason")), ("Abort", "BLAH error: submission failed")
        )
        self.assertEqual(unaware(stored).state, "Aborted")
        prelude, tail = traces.wms_cream_lines(["Idle", "Held"])
        stored, per_trigger = replay(prelude, tail)
        self.assertEqual(per_trigger[-1][0].type, "Suspend")
        self.assertTrue(unaware(stored).suspended)

    def test_direct_cream_job_generates_nothing(self) -> None:
        events = traces.parse_lines(traces.cream_done_ok())
        for n in range(1, len(events)):
            before = compute_status([(e, i) for i, e in enumerate(events[:n])])
            after = compute_status([(e, i) for i, e in enumerate(events[: n + 1])])
            self.assertEqual(generate_events(events[n], before, after, proxy_host=PROXY), [])

    def test_unchanged_or_generated_trigger(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle"])
        events = traces.parse_lines(prelude + tail)
        status = compute_status([(e, i) for i, e in enumerate(events)])
        self.assertEqual(generate_events(events[-1], status, status, proxy_host=PROXY), [])
        stored, per_trigger = replay(prelude, tail)
        gen = per_trigger[-1][0]
        before = compute_status(stored[:-1])
        self.assertEqual(generate_events(gen, before.copy(), status, proxy_host=PROXY), [])


class CreamUnawareProperty(SynchronousTestCase):
    """
    Design section 6: after each generated event and at the end, a CREAM-unaware
    gLite machine over the non-CREAM events agrees with the CREAM-aware one.
    """

    def check(self, states: list[str]) -> None:
        prelude, tail = traces.wms_cream_lines(states)
        stored, _ = replay(prelude, tail)
        checkpoints = [n for n, (ev, _) in enumerate(stored) if ev.generated] + [len(stored) - 1]
        for n in checkpoints:
            aware = compute_status(stored[: n + 1])
            blind = unaware(stored[: n + 1])
            self.assertEqual(blind.state, aware.state, (states, n))
            if aware.done_code is not None:
                self.assertEqual(blind.done_code, aware.done_code, (states, n))

    def test_examples(self) -> None:
        for states in (
            [],
            ["Idle", "Running", "Really-running", "Done-ok", "Purged"],
            ["Idle", "Held", "Running", "Held", "Idle", "Running", "Done-failed"],
            ["Aborted"],
            ["Idle", "Cancelled", "Purged"],
            ["Idle", "Running", "Really-running", "Cancelled"],
        ):
            self.check(states)

    @settings(max_examples=200, deadline=None)
    @given(traces.cream_paths())
    def test_random_paths(self, states: list[str]) -> None:
        self.check(states)


class ProxyPolicyTests(SynchronousTestCase):
    """
    L{proxy_policy}: the relay policy a proxy's store is given.
    """

    def test_destination(self) -> None:
        policy = proxy_policy({("ce.example.org", 9000)}, PROXY)
        self.assertEqual(
            policy.destination("https://lb.example.org:9000/U1"), "lb.example.org:9001"
        )
        self.assertIsNone(policy.destination("https://ce.example.org:9000/U1"))
        self.assertIsNone(policy.destination("https://ce.example.org:8443/CREAM1"))

    def test_destination_remembered(self) -> None:
        """
        Destinations are asked for every event: the policy remembers them, bounded.
        """
        from lbtwist.core import translate

        self.patch(translate, "DESTINATIONS_CACHED", 2)
        policy = proxy_policy((), PROXY)
        for n in range(5):
            self.assertEqual(policy.destination(f"https://lb{n}:9000/U"), f"lb{n}:9001")
        self.assertEqual(policy.destination("https://lb4:9000/U"), "lb4:9001")
        info = policy.destination.cache_info()  # type: ignore[attr-defined]
        self.assertEqual((info.hits, info.currsize, info.maxsize), (1, 2, 2))

    def test_triggers(self) -> None:
        """
        Only CREAM events not themselves generated may generate events.
        """
        prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Done-ok"])
        stored, per_trigger = replay(prelude, tail)
        policy = proxy_policy((), PROXY)
        kinds = {ev.type: policy.triggers(ev) for ev, _ in stored}
        self.assertTrue(kinds["CREAMStatus"])
        self.assertFalse(kinds["RegJob"])
        made = [gen for batch in per_trigger for gen in batch]
        self.assertTrue(made)
        self.assertFalse(any(policy.triggers(gen) for gen in made))

    def test_generate(self) -> None:
        """
        The policy generates what L{generate_events} does, with its proxy host.
        """
        policy = proxy_policy((), PROXY)
        prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Really-running", "Done-ok"])
        stored: list[tuple[Any, int]] = []
        made = []
        for ev in traces.parse_lines(prelude + tail):
            before = compute_status(stored)
            stored.append((ev, len(stored)))
            after = compute_status(stored)
            got = policy.generate(ev, before, after)
            self.assertEqual(got, generate_events(ev, before, after, proxy_host=PROXY))
            made.extend(got)
        self.assertEqual(len(made), 4)
        self.assertEqual({gen.host for gen in made}, {PROXY})
