# -*- test-case-name: tests.unit.test_states -*-
"""
The gLite state machine: WMS jobs (SIMPLE, DAG, COLLECTION...), design section 5.

Each gLite event type has one handler in L{GLITE_HANDLERS}. With
C{cream_aware=True} (the default) the machine also reads the CREAM events of a
WMS job executed by CREAM: the effects shared with the CREAM machine
(L{lbtwist.core.states.cream.CREAM_EFFECTS}) fill the C{cream_*} fields and
C{suspended}, and a change of C{cream_state} moves the job as the gLite event
that L{lbtwist.core.translate} generates for that change would (L{cream_effect});
so it skips those generated events. With
C{cream_aware=False} it ignores CREAM events and applies generated events like
any other: that is the machine of an L&B server that knows no CREAM events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lbtwist.core.seqcode import parse_seqcode
from lbtwist.core.states.cream import CREAM_EFFECTS, enter_cream_state
from lbtwist.core.states.status import (
    ABORTED,
    CANCELLED,
    CLEARED,
    DONE,
    DONE_CANCELLED,
    DONE_FAILED,
    DONE_OK,
    READY,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    TERMINAL_STATES,
    WAITING,
    JobStatus,
    apply_common,
    parse_int,
)

if TYPE_CHECKING:
    from lbtwist.core.events import Event

JSS = "JobController"
LM = "LogMonitor"
LRMS = "LRMS"
NS = "NetworkServer"
UI = "UserInterface"
WM = "WorkloadManager"

# Sources whose events belong to one WM branch (late if the branch is older).
_BRANCHED_SOURCES = frozenset({JSS, LM, LRMS, "CREAMExecutor", "CREAMInterface"})

_TRANSFER = {
    ("OK", UI): WAITING,
    ("OK", JSS): READY,
    ("OK", LM): SCHEDULED,
    ("FAIL", UI): SUBMITTED,
    ("FAIL", JSS): READY,
    ("FAIL", LM): READY,
}
_ACCEPTED = {NS: WAITING, LM: READY, LRMS: SCHEDULED}
_REFUSED = {NS: SUBMITTED, LM: READY, LRMS: READY}
_ENQUEUED = {NS: WAITING, WM: READY, LM: WAITING}
_DEQUEUED = {WM: WAITING, JSS: READY}
_DONE_CODES = {
    "OK": (DONE, DONE_OK),
    "FAILED": (DONE, DONE_FAILED),
    "KILLED": (DONE, DONE_FAILED),
    "CANCELLED": (CANCELLED, DONE_CANCELLED),
}


def is_cream_event(event: Event) -> bool:
    """
    Whether C{event} belongs to the CREAM group of the catalogue.
    """
    return event.type.startswith("CREAM")


def _is_late(status: JobStatus, event: Event) -> bool:
    if status.branch_wm is None or event.source not in _BRANCHED_SOURCES:
        return False
    code = parse_seqcode(event.seqcode)
    return code is not None and code.get("WM") < status.branch_wm


class _Mover:
    """
    State moves for one event: none if the event is late or the job terminal.
    """

    def __init__(self, status: JobStatus, date: int, late: bool) -> None:
        self.status = status
        self.date = date
        self.frozen = late or status.state in TERMINAL_STATES

    def move(self, state: str | None) -> bool:
        if state is None or self.frozen:
            return False
        self.status.set_state(state, self.date)
        return True

    # The effects of the gLite events translate.py generates, shared by the
    # CREAM-aware path so both machines agree (design section 6 property).
    def accepted(self, source: str, local_jobid: str | None) -> None:
        if local_jobid:
            if source == LRMS:
                self.status.localId = local_jobid
            elif source == LM:
                self.status.condorId = local_jobid
        self.move(_ACCEPTED.get(source))

    def running(self, node: str | None) -> None:
        if node:
            self.status.ce_node = node
        if self.move(RUNNING):
            self.status.suspended = False

    def really_running(self) -> None:
        self.status.payload_running = True
        if self.move(RUNNING):
            self.status.suspended = False

    def done(self, status_code: str | None, exit_code: int | None, reason: str | None) -> None:
        state, done_code = _DONE_CODES.get(status_code or "", (DONE, None))
        st = self.status
        if exit_code is not None and exit_code != -1:
            st.exit_code = exit_code
        if reason:
            st.reason = reason
            if done_code == DONE_FAILED:
                st.failure_reasons.append(reason)
        if not self.frozen:
            st.done_code = done_code
        self.move(state)

    def abort(self, reason: str | None) -> None:
        if reason:
            self.status.reason = reason
        self.move(ABORTED)

    def suspend(self, reason: str | None) -> None:
        if self.frozen:
            return
        self.status.suspended = True
        if reason:
            self.status.suspend_reason = reason


# Per-event handlers of the gLite machine: (status, event, mover) -> None.
GliteHandler = Callable[[JobStatus, "Event", _Mover], None]


def _regjob(status: JobStatus, event: Event, mover: _Mover) -> None:
    status.jobId = status.jobId or event.jobid
    status.jobtype = event.get("jobtype")
    status.parent_job = event.get("parent")
    status.seed = event.get("seed")
    status.children_num = parse_int(event.get("nsubjobs"))
    status.jdl = event.get("jdl") or status.jdl
    status.network_server = event.get("ns")
    # A later RegJob never moves the owner (the store refuses one for another).
    status.owner = status.owner or event.user
    mover.move(SUBMITTED)


def _transfer(status: JobStatus, event: Event, mover: _Mover) -> None:
    result = event.get("result")
    if result == "FAIL" and event.get("reason"):
        status.reason = event.get("reason")
    mover.move(_TRANSFER.get((result or "", event.source)))


def _accepted(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.accepted(event.source, event.get("local_jobid"))


def _refused(status: JobStatus, event: Event, mover: _Mover) -> None:
    if event.get("reason"):
        status.reason = event.get("reason")
    mover.move(_REFUSED.get(event.source))


def _enqueued(status: JobStatus, event: Event, mover: _Mover) -> None:
    source = event.source
    if event.get("result") == "OK" and mover.move(_ENQUEUED.get(source)) and source == LM:
        status.resubmitted = True


def _dequeued(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.move(_DEQUEUED.get(event.source))


def _waiting(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.move(WAITING)


def _match(status: JobStatus, event: Event, mover: _Mover) -> None:
    if event.get("dest_id"):
        status.destination = event.get("dest_id")
    mover.move(WAITING)


def _pending(status: JobStatus, event: Event, mover: _Mover) -> None:
    if event.get("reason"):
        status.reason = event.get("reason")
    mover.move(WAITING)


def _running(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.running(event.get("node"))


def _really_running(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.really_running()


def _done(status: JobStatus, event: Event, mover: _Mover) -> None:
    if event.source == LRMS:
        status.jw_status = "DONE"
        return
    mover.done(event.get("status_code"), parse_int(event.get("exit_code")), event.get("reason"))


def _cancel(status: JobStatus, event: Event, mover: _Mover) -> None:
    code = event.get("status_code")
    if code == "REQ":
        status.cancelling = True
    elif code == "DONE":
        status.cancelReason = event.get("reason") or status.cancelReason
        if not mover.frozen:
            status.done_code = DONE_CANCELLED
        mover.move(CANCELLED)
    elif code in ("REFUSE", "ABORT"):
        status.cancelling = False


def _abort(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.abort(event.get("reason"))


def _clear(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.move(CLEARED)


def _suspend(status: JobStatus, event: Event, mover: _Mover) -> None:
    mover.suspend(event.get("reason"))


def _resume(status: JobStatus, event: Event, mover: _Mover) -> None:
    status.suspended = False


def _resubmission(status: JobStatus, event: Event, mover: _Mover) -> None:
    if event.get("result") == "WILLRESUB":
        branch = parse_seqcode(event.seqcode)
        if branch is not None:
            status.branch_wm = branch.get("WM")
    if event.get("reason"):
        status.reason = event.get("reason")


#: The gLite events and their effects; other types (Purge, Sandbox, Listener...)
#: change nothing but C{lastUpdateTime}.
GLITE_HANDLERS: dict[str, GliteHandler] = {
    "RegJob": _regjob,
    "Transfer": _transfer,
    "Accepted": _accepted,
    "Refused": _refused,
    "EnQueued": _enqueued,
    "DeQueued": _dequeued,
    "HelperCall": _waiting,
    "HelperReturn": _waiting,
    "Match": _match,
    "Pending": _pending,
    "Running": _running,
    "ReallyRunning": _really_running,
    "Done": _done,
    "Cancel": _cancel,
    "Abort": _abort,
    "Clear": _clear,
    "Suspend": _suspend,
    "Resume": _resume,
    "Resubmission": _resubmission,
}


def apply(status: JobStatus, event: Event, *, cream_aware: bool = True) -> None:
    """
    Fold C{event} into C{status} in place (gLite machine).
    """
    if is_cream_event(event):
        if cream_aware and not event.generated:
            status.lastUpdateTime = event.date
            _apply_cream(status, event)
        return
    if cream_aware and event.generated:
        return
    status.lastUpdateTime = event.date
    if apply_common(status, event):
        return
    handler = GLITE_HANDLERS.get(event.type)
    if handler is not None:
        handler(status, event, _Mover(status, event.date, _is_late(status, event)))


# How the gLite event standing for a CREAM state change (cream_effect) moves the
# job: the same _Mover steps as the handlers of those events above.
_GLITE_EFFECTS: dict[str, Callable[[_Mover, str, dict[str, str]], None]] = {
    "Accepted": lambda mover, source, fields: mover.accepted(source, fields.get("local_jobid")),
    "Running": lambda mover, source, fields: mover.running(fields.get("node")),
    "ReallyRunning": lambda mover, source, fields: mover.really_running(),
    "Done": lambda mover, source, fields: mover.done(
        fields["status_code"], parse_int(fields.get("exit_code")), fields.get("reason")
    ),
    "Abort": lambda mover, source, fields: mover.abort(fields.get("reason")),
    "Suspend": lambda mover, source, fields: mover.suspend(fields.get("reason")),
}


def _apply_cream(status: JobStatus, event: Event) -> None:
    """
    A CREAM event of a WMS job: the shared CREAM effects on the C{cream_*}
    fields, then, on a change of C{cream_state}, the move of the generated event.
    """
    effect = CREAM_EFFECTS.get(event.type)
    if effect is None:
        return
    new_cream = effect(status, event, False)
    if new_cream is None or new_cream == status.cream_state:
        return
    enter_cream_state(status, new_cream)
    mover = _Mover(status, event.date, _is_late(status, event))
    glite = cream_effect(status)
    if glite is not None:
        kind, source, fields = glite
        _GLITE_EFFECTS[kind](mover, source, fields)
    if not mover.frozen and status.state != RUNNING and new_cream != "Held":
        # As in L&B's gLite machine, a job that is not running is not suspended
        # (CREAM's CmdSuspend, ended by a move back to Idle, L&B bug #45971).
        status.suspended = False
        status.suspend_reason = None


def cream_effect(status: JobStatus, cream_host: str = "") -> tuple[str, str, dict[str, str]] | None:
    """
    The gLite event that stands for C{status.cream_state} (design section 6 table).

    @param status: the job's status just after its CREAM state changed.
    @param cream_host: the CE host, for C{Accepted.from_host}.
    @return: C{(event type, DG.SOURCE, fields)} with string field values, or
        C{None} when the change generates nothing (Registered, Pending, Purged).
    """
    cream = status.cream_state
    reason = status.cream_reason
    exit_code = str(status.cream_exit_code) if status.cream_exit_code is not None else "-1"
    fields: dict[str, str]
    if cream == "Idle":
        fields = {"from": "CREAMExecutor", "from_host": cream_host or "unknown"}
        if status.cream_lrms_id:
            fields["local_jobid"] = status.cream_lrms_id
        return ("Accepted", LRMS, fields)
    if cream == "Running":
        return ("Running", LM, {"node": status.cream_node or "unknown"})
    if cream == "Really-running":
        return ("ReallyRunning", LM, {})
    if cream == "Done-ok":
        return ("Done", LM, {"status_code": "OK", "exit_code": exit_code})
    if cream == "Done-failed":
        fields = {"status_code": "FAILED", "exit_code": exit_code}
        if status.cream_failure_reason:
            fields["reason"] = status.cream_failure_reason
        return ("Done", LM, fields)
    if cream == "Cancelled":
        fields = {"status_code": "CANCELLED", "exit_code": exit_code}
        if reason:
            fields["reason"] = reason
        return ("Done", LM, fields)
    if cream == "Aborted":
        return (
            "Abort",
            LM,
            {"reason": reason or status.cream_failure_reason or "aborted by CREAM"},
        )
    if cream == "Held":
        return ("Suspend", LM, {"reason": reason} if reason else {})
    return None
