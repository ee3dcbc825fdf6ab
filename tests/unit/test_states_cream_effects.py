# -*- test-case-name: tests.unit.test_states_cream_effects -*-
"""
Tests for the CREAM event effects shared by both state machines
(L{lbtwist.core.states.cream.CREAM_EFFECTS}): each effect on a direct CREAM job
and on a WMS job run by CREAM, and L&B's own check sequence of C{lb-test-cream.sh}
for a WMS job (bug #45971: CREAMStore CmdSuspend and a move back to Idle).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.states import compute_status
from lbtwist.core.states.cream import CREAM_EFFECTS
from lbtwist.core.states.status import DONE_CANCELLED, DONE_FAILED, DONE_OK, JobStatus
from tests import traces
from tests.traces import glite_seqcode, parse_lines, ulm_line

_SOURCE_COUNTER = {
    "UserInterface": "UI",
    "NetworkServer": "NS",
    "WorkloadManager": "WM",
    "JobController": "JSS",
    "LogMonitor": "LM",
}


class ScriptJob:
    """
    A WMS job logged event by event as L&B's C{lb-test-cream.sh} logs it: each
    event raises its source's seqcode counter (the LRMS one for CREAM sources).
    """

    def __init__(self) -> None:
        self.counters = {"UI": 3}
        self.lines: list[str] = []

    def add(self, event: str, source: str, **fields: str) -> None:
        counter = _SOURCE_COUNTER.get(source, "LRMS")
        self.counters[counter] = self.counters.get(counter, 0) + 1
        self.lines.append(
            ulm_line(
                event,
                date=traces.date_text(len(self.lines) * 5),
                host=traces.CE_HOST if source.startswith("CREAM") else traces.WMS_HOST,
                source=source,
                jobid=traces.WMS_JOBID,
                seqcode=glite_seqcode(**self.counters),
                user=traces.WMS_USER,
                **fields,
            )
        )

    def status(self) -> JobStatus:
        return compute_status([(ev, n) for n, ev in enumerate(parse_lines(self.lines))])

    def register(self) -> None:
        self.add("RegJob", "NetworkServer", jdl=traces.WMS_JDL, ns="ns", jobtype="SIMPLE")

    def cream_status(self, old: str, new: str, **fields: str) -> None:
        for result in ("ARRIVED", "DONE"):
            self.add(
                "CREAMStatus",
                "CREAMExecutor",
                old_state=old,
                new_state=new,
                result=result,
                **fields,
            )

    def store(self, command: str, **fields: str) -> None:
        for result in ("START", "OK"):
            self.add("CREAMStore", "CREAMInterface", command=command, result=result, **fields)


def script_job_to_waiting() -> ScriptJob:
    job = ScriptJob()
    job.register()
    job.add("Accepted", "NetworkServer", from_="UserInterface", from_host="ui", local_jobid="")
    job.add("DeQueued", "WorkloadManager", queue="q", local_jobid="x")
    job.add("HelperCall", "WorkloadManager", helper_name="h", helper_params="p", src_role="CALLING")
    job.add("Match", "WorkloadManager", dest_id="ce/queue")
    job.add("HelperReturn", "WorkloadManager", helper_name="h", retval="r", src_role="CALLING")
    job.add("CREAMAccepted", "CREAMExecutor", local_jobid="CREAM_FAKE_JOBID")
    return job


class LBTestCreamWMSTests(SynchronousTestCase):
    """
    The state and cream_state checks of L&B's C{lb-test-cream.sh} for a job
    submitted to CREAM through the WMS, step by step.
    """

    def check(self, job: ScriptJob, state: str, cream_state: str | None) -> JobStatus:
        status = job.status()
        self.assertEqual((status.state, status.cream_state), (state, cream_state))
        return status

    def test_script(self) -> None:
        job = script_job_to_waiting()
        self.check(job, "Waiting", None)
        job.store("CMDSTART")
        self.check(job, "Waiting", "Pending")
        job.cream_status("REGISTERED", "PENDING")
        self.check(job, "Waiting", "Pending")
        job.add("EnQueued", "WorkloadManager", queue="q", job="j", result="OK", reason="r")
        self.check(job, "Ready", "Pending")
        job.add("DeQueued", "JobController", queue="q", local_jobid="x")
        self.check(job, "Ready", "Pending")
        job.add(
            "Transfer", "JobController", destination="LRMS", dest_host="ce", job="j", result="OK"
        )
        self.check(job, "Ready", "Pending")
        job.cream_status("PENDING", "IDLE")
        self.check(job, "Scheduled", "Idle")
        job.cream_status("IDLE", "RUNNING")
        self.assertFalse(self.check(job, "Running", "Running").suspended)
        job.store("CMDSUSPEND")
        self.assertTrue(self.check(job, "Running", "Running").suspended)
        job.cream_status("RUNNING", "IDLE")
        self.assertFalse(self.check(job, "Scheduled", "Idle").suspended)
        job.cream_status("IDLE", "RUNNING")
        self.assertFalse(self.check(job, "Running", "Running").suspended)
        job.cream_status("RUNNING", "REALLY-RUNNING")
        self.check(job, "Running", "Really-running")
        job.cream_status("REALLY-RUNNING", "DONE-OK")
        status = self.check(job, "Done", "Done-ok")
        self.assertEqual(status.cream_done_code, DONE_OK)


def direct_job() -> traces._Direct:
    job = traces._Direct()
    job.register()
    return job


def wms_job(states: list[str]) -> traces.CreamTail:
    """
    A WMS job in state Ready with its CREAM events through C{states}; the
    prelude is kept on the builder as C{prelude}.
    """
    tail = traces.CreamTail()
    tail.add("CREAMAccepted", "CREAMInterface", local_jobid=tail.cream_id)
    for state in states:
        tail.to(state)
    return tail


def status_of(lines: list[str]) -> JobStatus:
    return compute_status([(ev, n) for n, ev in enumerate(parse_lines(lines))])


def wms_status(tail: traces.CreamTail) -> JobStatus:
    return status_of(traces.wms_prelude() + tail.lines)


class StoreEffectTests(SynchronousTestCase):
    """
    CREAMStore on both machines: CMDSTART makes the job Pending, CMDSUSPEND and
    CMDRESUME set and clear C{suspended}, the reason goes to C{cream_reason}.
    """

    def test_start_direct(self) -> None:
        job = direct_job()
        job.store("CMDSTART", "START")
        self.assertEqual(status_of(job.lines).cream_state, "Registered")
        job.store("CMDSTART", "OK")
        status = status_of(job.lines)
        self.assertEqual((status.state, status.cream_state), ("Waiting", "Pending"))

    def test_start_wms(self) -> None:
        tail = wms_job([])
        tail.add("CREAMStore", "CREAMInterface", command="CMDSTART", result="START")
        self.assertIsNone(wms_status(tail).cream_state)
        tail.add("CREAMStore", "CREAMInterface", command="CMDSTART", result="OK")
        status = wms_status(tail)
        # The gLite state is the WMS's (Ready after the transfer to CREAM).
        self.assertEqual((status.state, status.cream_state), ("Ready", "Pending"))

    def test_suspend_resume_direct(self) -> None:
        job = direct_job()
        job.start()
        job.run()
        job.store("CMDSUSPEND", "OK")
        self.assertTrue(status_of(job.lines).suspended)
        job.store("CMDRESUME", "START")
        self.assertTrue(status_of(job.lines).suspended)
        job.store("CMDRESUME", "OK")
        self.assertFalse(status_of(job.lines).suspended)

    def test_suspend_resume_wms(self) -> None:
        tail = wms_job(["Idle", "Running"])
        tail.add("CREAMStore", "CREAMInterface", command="CMDSUSPEND", result="START")
        self.assertFalse(wms_status(tail).suspended)
        tail.add("CREAMStore", "CREAMInterface", command="CMDSUSPEND", result="OK")
        status = wms_status(tail)
        self.assertEqual((status.state, status.suspended), ("Running", True))
        tail.add("CREAMStore", "CREAMInterface", command="CMDRESUME", result="OK")
        status = wms_status(tail)
        self.assertEqual((status.state, status.suspended), ("Running", False))

    def test_idle_ends_suspension_wms(self) -> None:
        tail = wms_job(["Idle", "Running"])
        tail.add("CREAMStore", "CREAMInterface", command="CMDSUSPEND", result="OK")
        self.assertTrue(wms_status(tail).suspended)
        tail.to("Idle")
        status = wms_status(tail)
        self.assertEqual((status.state, status.suspended), ("Scheduled", False))
        self.assertIsNone(status.suspend_reason)

    def test_reason(self) -> None:
        job = direct_job()
        job.store("CMDSTART", "FAILED", reason="no such queue")
        direct = status_of(job.lines)
        tail = wms_job([])
        tail.add(
            "CREAMStore",
            "CREAMInterface",
            command="CMDSTART",
            result="FAILED",
            reason="no such queue",
        )
        wms = wms_status(tail)
        self.assertEqual(direct.cream_reason, "no such queue")
        self.assertEqual(wms.cream_reason, "no such queue")
        self.assertEqual(direct.reason, "no such queue")
        # On a WMS job reason is the WMS's, as L&B's generated events leave it.
        self.assertIsNone(wms.reason)


class CallEffectTests(SynchronousTestCase):
    """
    CREAMCall from the CREAM executor to the LRMS on both machines.
    """

    def test_cancel(self) -> None:
        job = direct_job()
        job.start()
        job.call("CMDCANCEL", "OK")
        direct = status_of(job.lines)
        tail = wms_job(["Idle"])
        tail.add("CREAMCall", "CREAMExecutor", callee="LRMS", command="CMDCANCEL", result="OK")
        wms = wms_status(tail)
        self.assertTrue(direct.cream_cancelling)
        self.assertTrue(wms.cream_cancelling)
        self.assertTrue(direct.cancelling)
        self.assertFalse(wms.cancelling)

    def test_purge(self) -> None:
        job = direct_job()
        job.start()
        job.run()
        job.status("REALLY-RUNNING", "DONE-OK", exit_code="0")
        job.call("CMDPURGE", "OK")
        direct = status_of(job.lines)
        self.assertEqual((direct.state, direct.cream_state), ("Cleared", "Purged"))
        tail = wms_job(["Idle", "Running", "Done-ok"])
        tail.add("CREAMCall", "CREAMExecutor", callee="LRMS", command="CMDPURGE", result="OK")
        wms = wms_status(tail)
        self.assertEqual((wms.state, wms.cream_state), ("Done", "Purged"))

    def test_start(self) -> None:
        job = direct_job()
        job.store("CMDSTART", "OK")
        job.call("CMDSTART", "OK")
        direct = status_of(job.lines)
        self.assertEqual((direct.state, direct.cream_state), ("Scheduled", "Idle"))
        # A WMS job becomes Idle by CREAM's CREAMStatus, which names the LRMS job
        # that the generated Accepted passes on.
        tail = wms_job([])
        tail.add("CREAMStore", "CREAMInterface", command="CMDSTART", result="OK")
        tail.add("CREAMCall", "CREAMExecutor", callee="LRMS", command="CMDSTART", result="OK")
        wms = wms_status(tail)
        self.assertEqual((wms.state, wms.cream_state), ("Ready", "Pending"))


class StatusEffectTests(SynchronousTestCase):
    """
    CREAMStatus, CREAMCancel, CREAMAbort and CREAMAccepted: the same C{cream_*}
    fields on both machines.
    """

    CREAM_FIELDS = (
        "cream_state",
        "cream_id",
        "cream_jobid",
        "cream_exit_code",
        "cream_node",
        "cream_lrms_id",
        "cream_failure_reason",
        "cream_done_code",
        "cream_jw_status",
        "cream_reason",
        "cream_cancelling",
    )

    def both(self, states: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        tail = wms_job(states)
        regjob = ulm_line(
            "RegJob",
            date=traces.date_text(0),
            host=traces.CE_HOST,
            source="CREAMInterface",
            jobid=traces.DIRECT_JOBID,
            seqcode="no_seqcodes_with_cream_0",
            jdl=traces.DIRECT_JDL,
            ns=traces.CREAM_ENDPOINT,
            jobtype="CREAM",
        )
        direct_lines = [regjob] + [
            line.replace(traces.WMS_JOBID, traces.DIRECT_JOBID) for line in tail.lines
        ]
        wms = attrs.asdict(wms_status(tail))
        cream = attrs.asdict(status_of(direct_lines))
        return (
            {k: cream[k] for k in self.CREAM_FIELDS},
            {k: wms[k] for k in self.CREAM_FIELDS},
        )

    def test_paths(self) -> None:
        for states in (
            ["Idle"],
            ["Idle", "Running"],
            ["Idle", "Running", "Really-running", "Done-ok"],
            ["Idle", "Running", "Done-failed"],
            ["Idle", "Cancelled"],
            ["Aborted"],
            ["Idle", "Held"],
        ):
            cream, wms = self.both(states)
            self.assertEqual(wms, cream, states)

    def test_values(self) -> None:
        _, wms = self.both(["Idle", "Running", "Done-failed"])
        self.assertEqual(wms["cream_id"], traces.WMS_CREAM_ID)
        self.assertEqual(wms["cream_exit_code"], 1)
        self.assertEqual(wms["cream_node"], traces.WORKER)
        self.assertEqual(wms["cream_lrms_id"], "8152.batch01.example.org")
        self.assertEqual(wms["cream_failure_reason"], "reason=1")
        self.assertEqual(wms["cream_done_code"], DONE_FAILED)
        self.assertEqual(wms["cream_jw_status"], "WRAPPER_RUNNING")
        _, wms = self.both(["Idle", "Cancelled"])
        self.assertEqual(wms["cream_done_code"], DONE_CANCELLED)
        self.assertEqual(wms["cream_reason"], "Cancelled by user")


class EffectTableTests(SynchronousTestCase):
    """
    The shared table, on the gLite machine (C{direct=False}), writes only the
    CREAM view of a job: never its gLite state or gLite-named fields.
    """

    ALLOWED = frozenset({*StatusEffectTests.CREAM_FIELDS, "suspended", "glite_jobid"})

    def test_writes_only_cream_fields(self) -> None:
        lines = []
        for _, trace in traces.iter_all():
            lines.extend(trace)
        seen = set()
        for event in parse_lines(lines):
            effect = CREAM_EFFECTS.get(event.type)
            if effect is None:
                continue
            seen.add(event.type)
            status = JobStatus(state="Running", jobId=traces.WMS_JOBID, suspended=True)
            before = attrs.asdict(status)
            effect(status, event, False)
            after = attrs.asdict(status)
            changed = {k for k in before if before[k] != after[k]}
            self.assertLessEqual(changed, self.ALLOWED, event.type)
        self.assertEqual(seen, set(CREAM_EFFECTS))
