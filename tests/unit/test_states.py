# -*- test-case-name: tests.unit.test_states -*-
"""
Tests for L{lbtwist.core.states}: JobStatus, the CREAM and gLite machines, folding.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.states import advance, compute_status
from lbtwist.core.states.status import (
    DONE_CANCELLED,
    DONE_FAILED,
    DONE_OK,
    STATES,
    JobStatus,
    cream_state_name,
    done_code_value,
    format_iso,
    format_text,
    parse_iso,
    public_dict,
)
from tests import fixtures, traces
from tests.traces import glite_seqcode, parse_lines, ulm_line

Pairs = list[tuple[Any, int]]


def pairs_of(lines: list[str]) -> Pairs:
    return [(ev, i) for i, ev in enumerate(parse_lines(lines))]


def status_of(lines: list[str], **kw: Any) -> JobStatus:
    return compute_status(pairs_of(lines), **kw)


def fixture_lines(name: str, jobid: str | None = None) -> list[str]:
    """
    Non-empty lines of a fixture; C{jobid} is injected into template lines.
    """
    lines = []
    for line in fixtures.stream_text(name).splitlines():
        if not line.strip():
            continue
        if jobid is not None and "DG.JOBID=" not in line:
            line = line.rstrip() + f' DG.JOBID="{jobid}"'
        if jobid is not None and "DG.USER=" not in line:
            line = line.rstrip() + ' DG.USER="/O=template/CN=user"'
        lines.append(line)
    return lines


def by_job(lines: list[str]) -> dict[str, Pairs]:
    jobs: dict[str, Pairs] = {}
    for i, ev in enumerate(parse_lines(lines)):
        jobs.setdefault(ev.jobid, []).append((ev, i))
    return jobs


def without_key(status: JobStatus) -> dict[str, Any]:
    d = status.to_json_dict()
    d.pop("last_key")
    return d


J = "https://lb01.example.org:9000/unitTestJob0000000000aa"


def glite(event: str, source: str, seq: dict[str, int], sec: int = 0, **fields: str) -> str:
    return ulm_line(
        event,
        date=traces.date_text(sec),
        host="wms01.example.org",
        source=source,
        jobid=J,
        seqcode=glite_seqcode(**seq),
        **fields,
    )


REG = glite("RegJob", "NetworkServer", {"NS": 1}, ns="https://wms01:7443/x", jobtype="SIMPLE")


class StatusValueTests(SynchronousTestCase):
    """
    L{JobStatus}: defaults, copies, JSON and text forms.
    """

    def test_default_unknown(self) -> None:
        self.assertEqual(JobStatus().state, "Unknown")
        self.assertEqual(compute_status([]).state, "Unknown")
        self.assertIsNone(compute_status([]).machine)

    def test_copy_is_deep(self) -> None:
        st1 = status_of(traces.cream_done_ok_unpurged())
        st2 = st1.copy()
        st2.user_tags["x"] = "y"
        st2.stateEnterTimes["Aborted"] = 1
        self.assertNotIn("x", st1.user_tags)
        self.assertNotIn("Aborted", st1.stateEnterTimes)

    def test_copy_equal_and_independent_containers(self) -> None:
        """
        A copy equals its original for every trace and shares no mutable container.
        """
        for name, lines in traces.iter_all():
            st1 = status_of(lines)
            st1.acl.append({"user_id": "u", "permission": "READ"})
            st1.failure_reasons.append("f")
            st1.user_fqans.append("/vo")
            st2 = st1.copy()
            self.assertEqual(st2, st1, name)
            self.assertIsInstance(st2, JobStatus)
            for field in ("user_tags", "stateEnterTimes", "acl", "failure_reasons", "user_fqans"):
                self.assertIsNot(getattr(st2, field), getattr(st1, field), field)
            self.assertIsNot(st2.acl[-1], st1.acl[-1])
            self.assertIsNot(st2.last_key, st1.last_key)
            st2.acl[-1]["permission"] = "WRITE"
            st2.failure_reasons.append("g")
            assert st2.last_key is not None
            st2.last_key.append(1)
            self.assertEqual(st1.acl[-1]["permission"], "READ")
            self.assertEqual(st1.failure_reasons[-1], "f")
            self.assertNotEqual(st1.last_key, st2.last_key)

    def test_copy_of_default(self) -> None:
        self.assertEqual(JobStatus().copy(), JobStatus())
        self.assertIsNone(JobStatus().copy().last_key)

    def test_json_dict_shares_nothing(self) -> None:
        """
        Changing the dict L{JobStatus.to_json_dict} gives leaves the status alone.
        """
        status = status_of(traces.cream_done_ok_unpurged())
        status.acl.append({"user_id": "u"})
        status.user_tags["a"] = "b"
        before = status.copy()
        data = status.to_json_dict()
        data["acl"][0]["user_id"] = "v"
        data["user_tags"]["c"] = "d"
        data["failure_reasons"].append("x")
        data["last_key"].append(7)
        self.assertEqual(status, before)
        self.assertEqual(list(data), [f.name for f in attrs.fields(JobStatus)])

    def test_format_iso_cache_bounded(self) -> None:
        """
        Formatted seconds are remembered, within a bound; results do not change.
        """
        from lbtwist.core.states import status as module

        self.patch(module, "_ISO_CACHE_SIZE", 4)
        self.patch(module, "_ISO_SECONDS", {})
        base = 1_710_408_413_000_000
        for i in range(10):
            self.assertEqual(parse_iso(format_iso(base + i * 1_000_001)), base + i * 1_000_001)
            self.assertLessEqual(len(module._ISO_SECONDS), 4)
        self.assertEqual(format_iso(base), "2024-03-14T09:26:53.000000Z")
        self.assertEqual(format_iso(base + 5), "2024-03-14T09:26:53.000005Z")

    def test_json_round_trip_all_traces(self) -> None:
        for name, lines in traces.iter_all():
            status = status_of(lines)
            data = json.loads(json.dumps(status.to_json_dict()))
            self.assertEqual(JobStatus.from_json_dict(data), status, name)

    def test_json_times_iso(self) -> None:
        status = status_of(traces.cream_done_ok())
        data = status.to_json_dict()
        self.assertEqual(data["stateEnterTimes"]["Submitted"], "2024-03-14T09:26:53.001000Z")
        self.assertTrue(data["lastUpdateTime"].endswith("Z"))
        self.assertEqual(data["state"], "Cleared")
        self.assertEqual(data["cream_state"], "Purged")
        self.assertIsInstance(data["last_key"], list)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 4_102_444_800_000_000))
    def test_iso_round_trip(self, us: int) -> None:
        self.assertEqual(parse_iso(format_iso(us)), us)

    @settings(max_examples=100, deadline=None)
    @given(
        st.sampled_from(STATES),
        st.dictionaries(st.text(min_size=1), st.text(), max_size=3),
        st.lists(st.text(), max_size=3),
        st.one_of(st.none(), st.integers(0, 4_102_444_800_000_000)),
        st.one_of(st.none(), st.lists(st.integers(0, 2**40), max_size=12)),
        st.booleans(),
    )
    def test_json_round_trip_random(
        self,
        state: str,
        tags: dict[str, str],
        reasons: list[str],
        when: int | None,
        key: list[int] | None,
        flag: bool,
    ) -> None:
        status = JobStatus(
            state=state,
            user_tags=tags,
            failure_reasons=reasons,
            lastUpdateTime=when,
            stateEnterTimes={state: when} if when is not None else {},
            last_key=key,
            suspended=flag,
            exit_code=-3 if flag else None,
        )
        data = json.loads(json.dumps(status.to_json_dict()))
        self.assertEqual(JobStatus.from_json_dict(data), status)

    def test_to_json_all_traces(self) -> None:
        """
        L{JobStatus.to_json} is the sorted compact JSON of L{JobStatus.to_json_dict}.
        """
        for name, lines in traces.iter_all():
            status = status_of(lines)
            status.acl.append({"z": "1", "a": "\u00e9"})
            expected = json.dumps(status.to_json_dict(), separators=(",", ":"), sort_keys=True)
            self.assertEqual(status.to_json(), expected, name)

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(st.text(), st.text(), max_size=3),
        st.text(),
        st.one_of(st.none(), st.integers(-(2**70), 2**70)),
        st.one_of(st.none(), st.integers(0, 4_102_444_800_000_000)),
        st.booleans(),
        st.lists(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3)),
    )
    def test_to_json_random(
        self,
        tags: dict[str, str],
        text: str,
        number: int | None,
        when: int | None,
        flag: bool,
        acl: list[dict[str, str]],
    ) -> None:
        status = JobStatus(
            user_tags=tags,
            reason=text,
            exit_code=number,
            lastUpdateTime=when,
            stateEnterTimes={text: when} if when is not None else {},
            suspended=flag,
            acl=acl,
            failure_reasons=[text],
        )
        expected = json.dumps(status.to_json_dict(), separators=(",", ":"), sort_keys=True)
        self.assertEqual(status.to_json(), expected)

    def test_to_json_odd_types(self) -> None:
        """
        Values of unexpected types still give the reference JSON.
        """
        for status in (
            JobStatus(exit_code=True),  # type: ignore[arg-type]
            JobStatus(reason=3),  # type: ignore[arg-type]
            JobStatus(suspended=1),  # type: ignore[arg-type]
            JobStatus(jobId=None, children_num=2.5),  # type: ignore[arg-type]
        ):
            expected = json.dumps(status.to_json_dict(), separators=(",", ":"), sort_keys=True)
            self.assertEqual(status.to_json(), expected)

    def test_format_text(self) -> None:
        text = format_text(status_of(traces.cream_done_ok_unpurged()))
        lines = text.splitlines()
        self.assertEqual(lines[0], "state : Done")
        self.assertEqual(lines[1], f"jobId : https://{traces.CE_HOST}:9000/CREAM812461376")
        self.assertIn("cream_state : Done-ok", lines)
        self.assertIn("done_code : OK", lines)
        self.assertIn("cream_done_code : OK", lines)
        self.assertIn("lastUpdateTime : 2024-03-14 09:28:52 UTC", lines)
        self.assertIn("user_tags : phase=two", lines)
        self.assertNotIn("None", text)
        self.assertNotIn("parent_job", text)
        self.assertLess(lines.index("owner : " + traces.CREAM_USER), lines.index("jobtype : CREAM"))
        self.assertLess(text.index("\njdl : "), text.index("\ncream_state : "))

    def test_format_text_failed(self) -> None:
        text = format_text(status_of(traces.cream_done_failed()))
        self.assertIn("done_code : FAILED\n", text)
        self.assertIn("exit_code : 3\n", text)

    def test_cream_state_names(self) -> None:
        self.assertEqual(cream_state_name("DONE-OK"), "Done-ok")
        self.assertEqual(cream_state_name("really-running"), "Really-running")
        self.assertEqual(cream_state_name("REALLY_RUNNING"), "Really-running")
        self.assertEqual(cream_state_name("IDLE"), "Idle")
        self.assertIsNone(cream_state_name("SLEEPING"))


def prefix_states(lines: list[str]) -> list[tuple[str, str | None]]:
    """
    (state, cream_state) after each prefix, consecutive repeats dropped.
    """
    seen: list[tuple[str, str | None]] = []
    pairs = pairs_of(lines)
    for n in range(1, len(pairs) + 1):
        s = compute_status(pairs[:n])
        item = (s.state, s.cream_state)
        if not seen or seen[-1] != item:
            seen.append(item)
    return seen


class CreamMachineTests(SynchronousTestCase):
    """
    The CREAM machine over hand-written direct CREAM traces.
    """

    def test_done_ok_purged(self) -> None:
        lines = traces.cream_done_ok()
        status = status_of(lines)
        self.assertEqual(status.machine, "cream")
        self.assertEqual((status.state, status.cream_state), ("Cleared", "Purged"))
        self.assertEqual(
            prefix_states(lines),
            [
                ("Submitted", "Registered"),
                ("Waiting", "Pending"),
                ("Scheduled", "Idle"),
                ("Running", "Running"),
                ("Running", "Really-running"),
                ("Done", "Done-ok"),
                ("Cleared", "Purged"),
            ],
        )
        self.assertEqual(status.done_code, DONE_OK)
        self.assertEqual(status.exit_code, 0)
        self.assertEqual(status.cream_exit_code, 0)
        self.assertEqual(status.ce_node, traces.WORKER)
        self.assertEqual(status.cream_node, traces.WORKER)
        self.assertEqual(status.localId, "4711.batch01.example.org")
        self.assertEqual(status.cream_lrms_id, "4711.batch01.example.org")
        self.assertEqual(status.cream_id, traces.DIRECT_CREAM_ID)
        self.assertEqual(status.globusId, traces.DIRECT_CREAM_ID)
        self.assertEqual(status.owner, traces.CREAM_USER)
        self.assertEqual(status.cream_owner, traces.CREAM_USER)
        self.assertEqual(status.cream_endpoint, traces.CREAM_ENDPOINT)
        self.assertEqual(status.network_server, traces.CREAM_ENDPOINT)
        self.assertEqual(status.jdl, traces.DIRECT_JDL)
        self.assertEqual(status.cream_jdl, traces.DIRECT_JDL)
        self.assertTrue(status.payload_running)
        self.assertEqual(
            list(status.stateEnterTimes),
            ["Submitted", "Waiting", "Scheduled", "Running", "Done", "Cleared"],
        )
        events = parse_lines(lines)
        self.assertEqual(status.lastUpdateTime, events[-1].date)
        self.assertEqual(status.stateEnterTime, status.stateEnterTimes["Cleared"])
        self.assertEqual(status.event_count, len(lines))

    def test_jw_status(self) -> None:
        pairs = pairs_of(traces.cream_done_ok())
        states = [compute_status(pairs[:n]) for n in range(1, len(pairs) + 1)]
        running = [s for s in states if s.cream_state == "Running"]
        really = [s for s in states if s.cream_state == "Really-running"]
        self.assertEqual(running[-1].jw_status, "WRAPPER_RUNNING")
        self.assertFalse(running[-1].payload_running)
        self.assertEqual(really[-1].jw_status, "PAYLOAD_RUNNING")
        self.assertTrue(really[-1].payload_running)

    def test_arrived_ignored(self) -> None:
        pairs = pairs_of(traces.cream_done_ok())
        for n, (ev, _) in enumerate(pairs):
            if ev.type == "CREAMStatus" and ev.get("result") == "ARRIVED":
                before = compute_status(pairs[:n])
                after = compute_status(pairs[: n + 1])
                self.assertEqual(after.state, before.state)
                self.assertEqual(after.cream_state, before.cream_state)

    def test_done_ok_user_tags(self) -> None:
        status = status_of(traces.cream_done_ok_unpurged())
        self.assertEqual((status.state, status.cream_state), ("Done", "Done-ok"))
        self.assertEqual(status.user_tags, {"phase": "two"})

    def test_done_failed(self) -> None:
        status = status_of(traces.cream_done_failed())
        self.assertEqual((status.state, status.cream_state), ("Done", "Done-failed"))
        self.assertEqual(status.done_code, DONE_FAILED)
        self.assertEqual(status.cream_done_code, DONE_FAILED)
        self.assertEqual(status.exit_code, 3)
        self.assertEqual(status.failure_reasons, ["Job terminated with non-zero exit code"])
        self.assertEqual(status.cream_failure_reason, "Job terminated with non-zero exit code")

    def test_cancelled(self) -> None:
        lines = traces.cream_cancelled()
        status = status_of(lines)
        self.assertEqual((status.state, status.cream_state), ("Cancelled", "Cancelled"))
        self.assertTrue(status.cancelling)
        self.assertTrue(status.cream_cancelling)
        self.assertEqual(status.reason, "Cancelled by user")
        self.assertEqual(status.cream_reason, "Cancelled by user")
        self.assertEqual(status.done_code, DONE_CANCELLED)
        self.assertIsNone(status.exit_code)  # N/A
        self.assertEqual(prefix_states(lines)[-1], ("Cancelled", "Cancelled"))

    def test_aborted(self) -> None:
        status = status_of(traces.cream_aborted())
        self.assertEqual((status.state, status.cream_state), ("Aborted", "Aborted"))
        self.assertEqual(status.reason, "submission to BLAH failed: qsub: Unknown queue")
        self.assertEqual(status.failure_reasons, ["submission to BLAH failed"])

    def test_held_resumed(self) -> None:
        pairs = pairs_of(traces.cream_held())
        held = [
            compute_status(pairs[: n + 1])
            for n, (ev, _) in enumerate(pairs)
            if ev.type == "CREAMStatus" and ev.get("new_state") == "HELD"
        ]
        self.assertEqual(len(held), 2)
        self.assertTrue(all(s.suspended and s.state == "Running" for s in held))
        self.assertEqual(held[-1].cream_state, "Held")
        final = compute_status(pairs)
        self.assertFalse(final.suspended)
        self.assertEqual((final.state, final.cream_state), ("Done", "Done-ok"))

    def test_terminal_not_left(self) -> None:
        lines = traces.cream_cancelled()
        late = ulm_line(
            "CREAMStatus",
            date=traces.date_text(3600),
            host=traces.CE_HOST,
            source="CREAMExecutor",
            jobid=traces.DIRECT_JOBID.replace("375", "378"),
            seqcode="no_seqcodes_late",
            old_state="CANCELLED",
            new_state="RUNNING",
            result="DONE",
            worker_node="wn099.example.org",
        )
        status = status_of([*lines, late])
        self.assertEqual((status.state, status.cream_state), ("Cancelled", "Cancelled"))
        self.assertEqual(status.ce_node, "wn099.example.org")

    def test_call_not_to_lrms_ignored(self) -> None:
        job = traces._Direct()
        job.register()
        job.store("CMDSTART", "OK")
        job.add("CREAMCall", "CREAMInterface", callee="LRMS", command="CMDSTART", result="OK")
        job.add("CREAMCall", "CREAMExecutor", callee="LogMonitor", command="CMDSTART", result="OK")
        job.add("CREAMCall", "CREAMExecutor", callee="LRMS", command="CMDSTART", result="START")
        self.assertEqual(status_of(job.lines).state, "Waiting")

    def test_generated_skipped(self) -> None:
        lines = traces.cream_done_ok_unpurged()
        abort = ulm_line(
            "Abort",
            date=traces.date_text(9999),
            host="proxy.example.org",
            source="LogMonitor",
            jobid=f"https://{traces.CE_HOST}:9000/CREAM812461376",
            seqcode="no_seqcodes_generated",
            reason="x",
        )
        abort += ' DG.GENERATED_BY="lbtwist-proxy"'
        status = status_of([*lines, abort])
        self.assertEqual(status.state, "Done")
        self.assertEqual(status.event_count, len(lines) + 1)

    def test_no_regjob_unknown(self) -> None:
        lines = traces.cream_done_ok()[1:]
        status = status_of(lines)
        self.assertEqual(status.state, "Unknown")
        self.assertIsNone(status.machine)
        self.assertEqual(status.event_count, len(lines))
        self.assertIsNotNone(status.last_key)
        self.assertIsNone(status.cream_state)


class AdvanceTests(SynchronousTestCase):
    """
    L{advance}: incremental folding and its refusals.
    """

    def test_in_order_equals_compute(self) -> None:
        for name, lines in traces.iter_all():
            pairs = pairs_of(lines)
            status = JobStatus()
            for ev, arrival in pairs:
                new = advance(status, ev, arrival)
                assert new is not None, name
                status = new
            self.assertEqual(status, compute_status(pairs), name)

    def test_out_of_order_refused_and_not_mutated(self) -> None:
        pairs = pairs_of(traces.cream_done_ok())
        status = compute_status(pairs[5:])
        before = status.to_json_dict()
        self.assertIsNone(advance(status, *pairs[6]))
        self.assertEqual(status.to_json_dict(), before)

    def test_does_not_mutate(self) -> None:
        pairs = pairs_of(traces.cream_done_ok())
        status = compute_status(pairs[:3])
        before = status.to_json_dict()
        new = advance(status, *pairs[3])
        assert new is not None
        self.assertEqual(status.to_json_dict(), before)
        self.assertEqual(new.event_count, 4)

    def test_unknown_then_regjob(self) -> None:
        pairs = pairs_of(traces.cream_done_ok())
        reg, rest = pairs[0], pairs[1:]
        status = JobStatus()
        new = advance(status, *rest[0])
        assert new is not None
        self.assertEqual(new.state, "Unknown")
        self.assertEqual(new.event_count, 1)
        # A RegJob after other events of a machine-less job: recompute.
        self.assertIsNone(advance(new, reg[0], 99))
        first = advance(JobStatus(), *reg)
        assert first is not None
        self.assertEqual((first.machine, first.state), ("cream", "Submitted"))

    def test_later_regjob_never_moves_owner(self) -> None:
        """
        A second RegJob naming another owner (the store refuses one; an older
        store may hold one) leaves the owner as the first RegJob set it, on
        both machines, folded incrementally or recomputed.
        """
        stranger = "/DC=org/DC=example/O=People/CN=Somebody Else"
        for lines in (traces.cream_done_ok(), traces.wms_prelude()):
            pairs = pairs_of(lines)
            reg, owner = pairs[0][0], pairs[0][0].user
            takeover = reg.evolve(user=stranger, date=reg.date + 10_000_000)
            status = compute_status(pairs[:3])
            # advance() may refuse a RegJob late in the job (then it is recomputed).
            new = advance(status, takeover, 4) or status
            self.assertEqual(new.owner, owner)
            if new.machine == "cream":
                self.assertEqual(new.cream_owner, owner)
            recomputed = compute_status([*pairs[:3], (takeover, 4)])
            self.assertEqual(
                (recomputed.owner, recomputed.cream_owner), (new.owner, new.cream_owner)
            )

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(sorted(traces.DIRECT_TRACES)), st.randoms(use_true_random=False))
    def test_random_arrival_incremental(self, name: str, rnd: random.Random) -> None:
        pairs = pairs_of(traces.DIRECT_TRACES[name]())
        rnd.shuffle(pairs)
        status = JobStatus()
        seen: Pairs = []
        for ev, arrival in pairs:
            seen.append((ev, arrival))
            new = advance(status, ev, arrival)
            status = new if new is not None else compute_status(seen)
        self.assertEqual(status, compute_status(pairs))


class PermutationTests(SynchronousTestCase):
    """
    Any permutation of a job's events (distinct keys) gives the same status.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([n for n, _ in traces.iter_all()]), st.randoms(use_true_random=False))
    def test_traces(self, name: str, rnd: random.Random) -> None:
        lines = dict(traces.iter_all())[name]
        pairs = pairs_of(lines)
        shuffled = list(pairs)
        rnd.shuffle(shuffled)
        self.assertEqual(compute_status(shuffled), compute_status(pairs))
        # Fresh arrival numbers: only last_key may differ.
        renumbered = [(ev, i) for i, (ev, _) in enumerate(shuffled)]
        self.assertEqual(
            without_key(compute_status(renumbered)), without_key(compute_status(pairs))
        )

    @settings(max_examples=50, deadline=None)
    @given(st.randoms(use_true_random=False))
    def test_glite_fixture(self, rnd: random.Random) -> None:
        pairs = pairs_of(fixture_lines("perf_simple_avg_events.log"))
        shuffled = list(pairs)
        rnd.shuffle(shuffled)
        self.assertEqual(compute_status(shuffled), compute_status(pairs))


class GliteFixtureTests(SynchronousTestCase):
    """
    Golden: the real L&B streams replayed.
    """

    def test_simple_avg_cleared(self) -> None:
        lines = fixture_lines("perf_simple_avg_events.log")
        status = status_of(lines)
        self.assertEqual(status.machine, "glite")
        self.assertEqual(status.state, "Cleared")
        self.assertEqual(status.jobtype, "SIMPLE")
        self.assertEqual(status.done_code, DONE_OK)
        self.assertEqual(status.ce_node, None if status.ce_node is None else status.ce_node)
        self.assertIn("Done", status.stateEnterTimes)
        self.assertIn("Running", status.stateEnterTimes)
        self.assertEqual(status.jw_status, "DONE")
        self.assertEqual(status.event_count, len(lines))

    def test_simple_max_events(self) -> None:
        # A template stream (no DG.JOBID): the job is resubmitted many times and
        # finally aborted by the helper; it carries no Clear event.
        jobid = "https://lb01.example.org:9000/maxEventsTemplate00000a"
        status = status_of(fixture_lines("perf_simple_max_events.log", jobid))
        self.assertEqual(status.machine, "glite")
        self.assertEqual(status.state, "Aborted")
        self.assertIn("Running", status.stateEnterTimes)
        self.assertIn("Done", status.stateEnterTimes)

    def test_dag_parent(self) -> None:
        jobid = "https://lb01.example.org:9000/dagTemplate000000000000"
        status = status_of(fixture_lines("perf_dag_avg_events.log", jobid))
        self.assertEqual((status.jobtype, status.children_num), ("DAG", 3))
        self.assertEqual(status.state, "Done")
        self.assertEqual(status.done_code, DONE_OK)

    def test_dag_subjob(self) -> None:
        jobid = "https://lb01.example.org:9000/dagSubjobTemplate000000"
        lines = fixture_lines("perf_dag_avg_subjobs.reg.log", jobid)
        lines += fixture_lines("perf_dag_avg_subjobs.log", jobid)
        self.assertEqual(status_of(lines).state, "Cleared")

    def test_collection(self) -> None:
        jobs = by_job(fixture_lines("perf_collection_avg_events.log"))
        self.assertEqual(len(jobs), 101)
        statuses = {jobid: compute_status(pairs) for jobid, pairs in jobs.items()}
        parents = [s for s in statuses.values() if s.jobtype == "COLLECTION"]
        self.assertEqual(len(parents), 1)
        parent = parents[0]
        self.assertEqual(parent.children_num, 100)
        self.assertIn(parent.state, STATES)
        self.assertNotIn(parent.state, ("Unknown", "Submitted"))
        for status in statuses.values():
            self.assertEqual(status.machine, "glite")
            self.assertNotEqual(status.state, "Unknown")
        children = [s for s in statuses.values() if s.jobtype == "SIMPLE"]
        self.assertEqual(len(children), 100)
        self.assertTrue(all(c.state in ("Done", "Cleared") for c in children))


class GliteRuleTests(SynchronousTestCase):
    """
    The gLite machine's rules, one by one.
    """

    def final(self, *lines: str, **kw: Any) -> JobStatus:
        return status_of([REG, *lines], **kw)

    def test_regjob(self) -> None:
        line = glite(
            "RegJob",
            "NetworkServer",
            {"NS": 1},
            ns="https://wms01:7443/x",
            jobtype="COLLECTION",
            nsubjobs="4",
            seed="abc",
            jdl="[]",
            parent="https://lb01.example.org:9000/parent00000000000000aa",
        )
        status = status_of([line])
        self.assertEqual(status.state, "Submitted")
        self.assertEqual(status.children_num, 4)
        self.assertEqual(status.seed, "abc")
        self.assertEqual(status.jdl, "[]")
        self.assertEqual(status.network_server, "https://wms01:7443/x")
        self.assertEqual(status.parent_job, "https://lb01.example.org:9000/parent00000000000000aa")
        self.assertEqual(status.owner, traces.CREAM_USER)

    def transfer(self, source: str, result: str) -> str:
        return glite(
            "Transfer",
            source,
            {"NS": 2, "JSS": 1},
            destination="LRMS",
            dest_host="ce",
            job="x",
            result=result,
        )

    def test_transfer(self) -> None:
        cases = {
            ("UserInterface", "OK"): "Waiting",
            ("JobController", "OK"): "Ready",
            ("LogMonitor", "OK"): "Scheduled",
            ("UserInterface", "FAIL"): "Submitted",
            ("JobController", "FAIL"): "Ready",
            ("LogMonitor", "FAIL"): "Ready",
            ("JobController", "START"): "Submitted",
        }
        for (source, result), state in cases.items():
            self.assertEqual(self.final(self.transfer(source, result)).state, state, source)

    def test_accepted_refused(self) -> None:
        for source, state in [
            ("NetworkServer", "Waiting"),
            ("LogMonitor", "Ready"),
            ("LRMS", "Scheduled"),
        ]:
            line = glite("Accepted", source, {"NS": 2}, from_="UserInterface", from_host="h")
            self.assertEqual(self.final(line).state, state)
        for source, state in [("LogMonitor", "Ready"), ("LRMS", "Ready")]:
            line = glite("Refused", source, {"NS": 2}, from_="JobController", from_host="h")
            self.assertEqual(self.final(line).state, state)
        line = glite("Refused", "NetworkServer", {"NS": 3}, from_="UserInterface", from_host="h")
        self.assertEqual(self.final(self.transfer("UserInterface", "OK"), line).state, "Submitted")

    def test_queues_and_helpers(self) -> None:
        enq = {"NetworkServer": "Waiting", "WorkloadManager": "Ready", "LogMonitor": "Waiting"}
        for source, state in enq.items():
            line = glite("EnQueued", source, {"NS": 2}, queue="q", result="OK")
            status = self.final(line)
            self.assertEqual(status.state, state)
            self.assertEqual(status.resubmitted, source == "LogMonitor")
        self.assertEqual(
            self.final(
                glite("EnQueued", "WorkloadManager", {"NS": 2}, queue="q", result="START")
            ).state,
            "Submitted",
        )
        for source, state in [("WorkloadManager", "Waiting"), ("JobController", "Ready")]:
            self.assertEqual(
                self.final(glite("DeQueued", source, {"NS": 2}, queue="q")).state, state
            )
        match = glite("Match", "WorkloadManager", {"NS": 2}, dest_id="ce:2119/jobmanager")
        status = self.final(match)
        self.assertEqual((status.state, status.destination), ("Waiting", "ce:2119/jobmanager"))
        for line in [
            glite(
                "HelperCall", "BigHelper", {"NS": 1, "BH": 1}, helper_name="h", src_role="CALLING"
            ),
            glite(
                "HelperReturn", "BigHelper", {"NS": 1, "BH": 1}, helper_name="h", src_role="CALLED"
            ),
            glite("Pending", "WorkloadManager", {"NS": 1, "WM": 1}, reason="no match"),
        ]:
            self.assertEqual(self.final(line).state, "Waiting")

    def test_running_done(self) -> None:
        run = glite("Running", "LogMonitor", {"NS": 2, "LM": 1}, node="wn1")
        really = glite("ReallyRunning", "LogMonitor", {"NS": 2, "LM": 2})
        lrms_done = glite("Done", "LRMS", {"NS": 2, "LRMS": 3}, status_code="OK", exit_code="0")
        status = self.final(run, lrms_done)
        self.assertEqual(
            (status.state, status.ce_node, status.jw_status), ("Running", "wn1", "DONE")
        )
        self.assertTrue(self.final(run, really).payload_running)
        failed = glite(
            "Done",
            "LogMonitor",
            {"NS": 2, "LM": 3},
            status_code="FAILED",
            exit_code="2",
            reason="r",
        )
        status = self.final(run, failed)
        self.assertEqual((status.state, status.done_code, status.exit_code), ("Done", 1, 2))
        self.assertEqual(status.failure_reasons, ["r"])
        cancelled = glite(
            "Done", "LogMonitor", {"NS": 2, "LM": 3}, status_code="CANCELLED", exit_code="0"
        )
        status = self.final(run, cancelled)
        self.assertEqual((status.state, status.done_code), ("Cancelled", DONE_CANCELLED))

    def test_cancel_abort_clear(self) -> None:
        req = glite("Cancel", "UserInterface", {"UI": 1, "NS": 2}, status_code="REQ")
        done = glite("Cancel", "NetworkServer", {"UI": 1, "NS": 3}, status_code="DONE", reason="u")
        self.assertTrue(self.final(req).cancelling)
        status = self.final(req, done)
        self.assertEqual((status.state, status.cancelReason), ("Cancelled", "u"))
        abort = glite("Abort", "WorkloadManager", {"NS": 2, "WM": 1}, reason="no CE")
        status = self.final(abort)
        self.assertEqual((status.state, status.reason), ("Aborted", "no CE"))
        clear = glite("Clear", "NetworkServer", {"UI": 9, "NS": 9}, reason="USER")
        self.assertEqual(self.final(clear).state, "Cleared")
        # Nothing moves a terminal state.
        run = glite("Running", "LogMonitor", {"UI": 9, "NS": 10}, node="wn")
        status = self.final(abort, run)
        self.assertEqual((status.state, status.ce_node), ("Aborted", "wn"))
        self.assertEqual(self.final(clear, run).state, "Cleared")

    def test_resubmission_branch(self) -> None:
        resub = glite("Resubmission", "WorkloadManager", {"NS": 4, "WM": 10}, result="WILLRESUB")
        match = glite("Match", "WorkloadManager", {"NS": 4, "WM": 11}, dest_id="ce2")
        # An event of the old branch (WM 5) that sorts after the resubmission.
        old = glite("Running", "LogMonitor", {"NS": 5, "WM": 5, "LM": 3}, node="oldwn")
        status = self.final(resub, match, old)
        self.assertEqual(status.branch_wm, 10)
        self.assertEqual(status.state, "Waiting")
        self.assertEqual(status.ce_node, "oldwn")
        new = glite("Running", "LogMonitor", {"NS": 5, "WM": 12, "LM": 4}, node="newwn")
        status = self.final(resub, match, old, new)
        self.assertEqual((status.state, status.ce_node), ("Running", "newwn"))
        # SHALLOW does not open a branch.
        shallow = glite("Resubmission", "WorkloadManager", {"NS": 4, "WM": 10}, result="SHALLOW")
        self.assertEqual(self.final(shallow, match, old).state, "Running")

    def test_tags_acl_payload(self) -> None:
        tag1 = glite("UserTag", "UserInterface", {"UI": 1, "NS": 1}, name="Colour", value="red")
        tag2 = glite("UserTag", "UserInterface", {"UI": 2, "NS": 1}, name="COLOUR", value="blue")
        acl = {
            "user_id": "/O=x/CN=y",
            "user_id_type": "DN",
            "permission": "READ",
            "permission_type": "ALLOW",
        }
        add = glite("ChangeACL", "UserInterface", {"UI": 3, "NS": 1}, operation="ADD", **acl)
        rem = glite("ChangeACL", "UserInterface", {"UI": 4, "NS": 1}, operation="REMOVE", **acl)
        grant = glite(
            "GrantPayloadOwnership", "UserInterface", {"UI": 5, "NS": 1}, payload_owner="/O=x/CN=p"
        )
        status = self.final(tag1, tag2, add, grant)
        self.assertEqual(status.user_tags, {"colour": "blue"})
        self.assertEqual(status.acl, [acl])
        self.assertEqual(status.payload_owner, "/O=x/CN=p")
        self.assertEqual(self.final(add, rem).acl, [])
        self.assertEqual(self.final(tag1, tag2).state, "Submitted")

    def test_cream_unaware_ignores_cream_events(self) -> None:
        lines = traces.wms_on_cream()
        self.assertEqual(status_of(lines).state, "Done")
        unaware = status_of(lines, cream_aware=False)
        self.assertEqual(unaware.state, "Ready")
        self.assertIsNone(unaware.cream_state)

    def test_wms_on_cream_fields(self) -> None:
        status = status_of(traces.wms_on_cream())
        self.assertEqual(status.machine, "glite")
        self.assertEqual((status.state, status.cream_state), ("Done", "Done-ok"))
        self.assertEqual(status.done_code, DONE_OK)
        self.assertEqual(status.exit_code, 0)
        self.assertEqual(status.cream_id, traces.WMS_CREAM_ID)
        self.assertEqual(status.cream_jobid, traces.WMS_CREAM_ID)
        self.assertEqual(status.glite_jobid, traces.WMS_JOBID)
        self.assertEqual(status.cream_node, traces.WORKER)
        self.assertEqual(status.ce_node, traces.WORKER)
        self.assertEqual(status.cream_lrms_id, "8152.batch01.example.org")
        self.assertEqual(status.localId, "8152.batch01.example.org")
        self.assertEqual(status.cream_exit_code, 0)
        self.assertTrue(status.payload_running)

    def test_wms_on_cream_failed_cancelled(self) -> None:
        prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Done-failed"])
        status = status_of(prelude + tail)
        self.assertEqual((status.state, status.done_code), ("Done", DONE_FAILED))
        self.assertEqual(status.cream_failure_reason, "reason=1")
        self.assertEqual(status.failure_reasons, ["reason=1"])
        prelude, tail = traces.wms_cream_lines(["Idle", "Cancelled"])
        status = status_of(prelude + tail)
        self.assertEqual((status.state, status.cream_state), ("Cancelled", "Cancelled"))
        prelude, tail = traces.wms_cream_lines(["Idle", "Held"])
        status = status_of(prelude + tail)
        self.assertEqual((status.state, status.suspended), ("Scheduled", True))


# The original JobStatus.from_json_dict (strptime, deep copies): the reference the
# generated one must match on every input.


def reference_parse_iso(text: str) -> int:
    main, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    micro = int(frac.ljust(6, "0")[:6]) if frac else 0
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000 + micro


def reference_from_json_dict(data: dict[str, Any]) -> JobStatus:
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(JobStatus):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name in ("stateEnterTime", "lastUpdateTime") and value is not None:
            value = reference_parse_iso(value)
        elif field.name == "stateEnterTimes":
            value = {k: reference_parse_iso(v) for k, v in (value or {}).items()}
        elif field.name == "last_key" and value is not None:
            value = [int(v) for v in value]
        elif field.name in ("done_code", "cream_done_code"):
            value = done_code_value(value)
        else:
            value = copy.deepcopy(value)
        kwargs[field.name] = value
    return JobStatus(**kwargs)


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    """
    What C{function(*args)} gives: its result, or the type of what it raised.
    """
    try:
        return "value", function(*args)
    except Exception as e:
        return "raised", type(e)


_TIMES = st.integers(0, 253_402_300_799_999_999)  # 1970 to 9999
_TEXT = st.text(max_size=8)


def _field_strategy(field: Any) -> Any:
    name, kind = field.name, str(field.type)
    if name in ("stateEnterTime", "lastUpdateTime"):
        return st.one_of(st.none(), _TIMES)
    if name == "stateEnterTimes":
        return st.dictionaries(st.sampled_from(STATES) | _TEXT, _TIMES, max_size=4)
    if name == "last_key":
        return st.one_of(st.none(), st.lists(st.integers(-(2**40), 2**40), max_size=10))
    if name in ("done_code", "cream_done_code"):
        return st.one_of(st.none(), st.sampled_from([DONE_OK, DONE_FAILED, DONE_CANCELLED, 7]))
    if name == "acl":
        return st.lists(st.dictionaries(_TEXT, _TEXT, max_size=4), max_size=3)
    if kind == "dict[str, str]":
        return st.dictionaries(_TEXT, _TEXT, max_size=3)
    if kind == "list[str]":
        return st.lists(_TEXT, max_size=3)
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        return st.integers(0, 2**31)
    if kind == "int | None":
        return st.one_of(st.none(), st.integers(-(2**63), 2**63))
    if kind == "str":
        return _TEXT
    assert kind == "str | None", kind
    return st.one_of(st.none(), st.text(max_size=40))


#: Every field of a status, each with any value of its type.
statuses = st.fixed_dictionaries(
    {field.name: _field_strategy(field) for field in attrs.fields(JobStatus)}
).map(lambda kw: JobStatus(**kw))

_INTERNAL_DEFAULTS: dict[str, Any] = {
    "machine": None,
    "last_key": None,
    "event_count": 0,
    "branch_wm": None,
}


class FromJsonTests(SynchronousTestCase):
    """
    L{JobStatus.from_json_dict} is the exact inverse of L{JobStatus.to_json_dict},
    L{JobStatus.to_json} and L{public_dict}, and reads odd dicts as the original
    implementation (kept above as the reference) did.
    """

    def check_inverse(self, status: JobStatus) -> None:
        text = status.to_json()
        self.assertEqual(JobStatus.from_json_dict(json.loads(text)), status)
        self.assertEqual(JobStatus.from_json_dict(status.to_json_dict()), status)
        self.assertEqual(JobStatus.from_json_dict(json.loads(text)).to_json(), text)
        public = json.loads(json.dumps(public_dict(status)))
        self.assertEqual(
            JobStatus.from_json_dict(public), attrs.evolve(status, **_INTERNAL_DEFAULTS)
        )
        self.assertEqual(JobStatus.from_json_dict(public), reference_from_json_dict(public))
        self.check_compact(status)

    def check_compact(self, status: JobStatus) -> None:
        """
        L{JobStatus.to_compact_json} is the full form without the fields at their
        defaults, keys sorted, and reads back as the same status.
        """
        compact = json.loads(status.to_compact_json())
        full = json.loads(status.to_json())
        defaults = json.loads(JobStatus().to_json())
        self.assertEqual(list(compact), sorted(compact))
        self.assertEqual({k: full[k] for k in compact}, compact)
        self.assertEqual(
            {k: full[k] for k in full if k not in compact},
            {k: defaults[k] for k in full if k not in compact},
        )
        self.assertEqual(JobStatus.from_json_dict(compact), status)

    def test_compact_leaves_out_defaults(self) -> None:
        self.assertEqual(JobStatus().to_compact_json(), b"{}")
        status = JobStatus(state="Running", exit_code=0, resubmitted=True, event_count=2)
        self.assertEqual(
            status.to_compact_json(),
            b'{"event_count":2,"exit_code":0,"resubmitted":true,"state":"Running"}',
        )

    def test_compact_of_values_orjson_refuses(self) -> None:
        """
        A value orjson cannot write (an int beyond 64 bits, a lone surrogate)
        goes through the general encoder, to the same JSON.
        """
        for status in (JobStatus(cpuTime=1 << 70), JobStatus(reason="\ud800")):
            self.check_compact(status)

    @settings(max_examples=200, deadline=None)
    @given(statuses)
    def test_inverse_random(self, status: JobStatus) -> None:
        self.check_inverse(status)

    def test_inverse_all_traces(self) -> None:
        for name, lines in traces.iter_all():
            status = status_of(lines)
            with self.subTest(name):  # type: ignore[attr-defined]
                self.check_inverse(status)
            # And every status on the way.
            pairs = pairs_of(lines)
            for n in range(len(pairs)):
                self.check_inverse(compute_status(pairs[:n]))

    def test_inverse_defaults(self) -> None:
        self.check_inverse(JobStatus())
        self.assertEqual(JobStatus.from_json_dict({}), JobStatus())

    def test_result_shares_no_container(self) -> None:
        """
        The input's containers are copied: changing the status leaves the dict alone.
        """
        status = status_of(traces.cream_done_ok_unpurged())
        status.acl.append({"user_id": "u"})
        status.failure_reasons.append("f")
        status.user_fqans.append("/vo")
        data = status.to_json_dict()
        before = json.dumps(data, sort_keys=True)
        back = JobStatus.from_json_dict(data)
        back.acl[0]["user_id"] = "v"
        back.acl.append({})
        back.user_tags["new"] = "x"
        back.failure_reasons.append("g")
        back.user_fqans.append("/other")
        back.stateEnterTimes["Aborted"] = 1
        assert back.last_key is not None
        back.last_key.append(1)
        self.assertEqual(json.dumps(data, sort_keys=True), before)
        again = JobStatus.from_json_dict(data)
        self.assertEqual(again, status)

    def test_odd_inputs_as_reference(self) -> None:
        """
        Times of other forms, C{None} everywhere, missing keys, done code names,
        values of unexpected types, bad values: the same result (or error type)
        as the original implementation.
        """
        full = status_of(traces.cream_done_ok_unpurged()).to_json_dict()
        odd_times = [
            "2024-03-14T09:26:53Z",
            "2024-03-14T09:26:53",
            "2024-03-14T09:26:53.5Z",
            "2024-03-14T09:26:53.1234567Z",
            "2024-03-14T09:26:53.123456",
            "2024-03-14T09:26:53.12345ZZ",
            "2024-03-14T09:26:53.+12345Z",
            "2024-03-14T09:26:53.1_2345Z",
            "2024-03-14T09:26:53.\u0661\u0662\u0663\u0664\u0665\u0666Z",
            "2024-3-14T9:26:53.123456Z",
            "2024-02-30T09:26:53.123456Z",
            "2024-03-14T24:00:00.000000Z",
            "2024-03-14T23:59:60.000000Z",
            "2024-03-14 09:26:53.123456Z",
            "2024-03-14T09:26.53.123456Z",
            "0999-01-01T00:00:00.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "",
            "garbage",
            "Z",
            5,
            [],
            {},
        ]
        cases: list[dict[str, Any]] = [{}, {"unknown": 1}]
        cases.append({name: None for name in full})
        cases.append({name: value for i, (name, value) in enumerate(full.items()) if i % 2})
        cases.append({name: value for i, (name, value) in enumerate(full.items()) if not i % 2})
        for when in odd_times:
            cases.append({**full, "lastUpdateTime": when})
            cases.append({**full, "stateEnterTime": when, "stateEnterTimes": {"Done": when}})
        for code in ("OK", "failed", "Cancelled", "BOGUS", 3, None, True, 1.5, ["OK"]):
            cases.append({**full, "done_code": code, "cream_done_code": code})
        cases += [
            {**full, "stateEnterTimes": None},
            {**full, "stateEnterTimes": []},
            {**full, "last_key": ["1", 2, True]},
            {**full, "last_key": "12"},
            {**full, "last_key": [1.5]},
            {**full, "user_tags": None},
            {**full, "user_tags": [["a", "b"]]},
            {**full, "acl": [["user_id", "u"]]},
            {**full, "acl": [{"user_id": ["nested"]}]},
            {**full, "acl": None},
            {**full, "failure_reasons": "text"},
            {**full, "reason": ["a", {"b": 1}]},
            {**full, "exit_code": "3", "children_num": 2.5, "suspended": 1},
            {**full, "event_count": None, "state": None},
        ]
        for data in cases:
            with self.subTest(repr(data)[:200]):  # type: ignore[attr-defined]
                expected = outcome(reference_from_json_dict, json.loads(json.dumps(data)))
                got = outcome(JobStatus.from_json_dict, json.loads(json.dumps(data)))
                self.assertEqual(got, expected)
                if got[0] == "value":
                    # Same types too (1 == True == 1.0 would hide a change).
                    self.assertEqual(
                        [type(v) for v in attrs.astuple(got[1], recurse=False)],
                        [type(v) for v in attrs.astuple(expected[1], recurse=False)],
                    )

    @settings(max_examples=200, deadline=None)
    @given(
        st.tuples(
            st.integers(0, 9999),
            st.integers(0, 13),
            st.integers(0, 32),
            st.integers(0, 25),
            st.integers(0, 61),
            st.integers(0, 61),
        ),
        st.text(alphabet="0123456789+_ .Z", min_size=6, max_size=6) | st.integers(0, 999_999),
    )
    def test_parse_iso_as_reference(self, moment: tuple[int, ...], frac: str | int) -> None:
        """
        Strings of the canonical shape, in range or not, read as C{strptime} reads them.
        """
        y, mo, d, h, mi, s = moment
        tail = f"{frac:06d}" if isinstance(frac, int) else frac
        text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{tail}Z"
        self.assertEqual(outcome(parse_iso, text), outcome(reference_parse_iso, text))
        # Twice: the second answer comes from the remembered seconds.
        self.assertEqual(outcome(parse_iso, text), outcome(reference_parse_iso, text))

    def test_parse_iso_cache_bounded(self) -> None:
        from lbtwist.core.states import status as module

        self.patch(module, "_ISO_CACHE_SIZE", 3)
        self.patch(module, "_ISO_PARSED", {})
        base = 1_710_408_413_000_000
        for i in range(10):
            us = base + i * 1_000_001
            self.assertEqual(parse_iso(format_iso(us)), us)
            self.assertLessEqual(len(module._ISO_PARSED), 3)
