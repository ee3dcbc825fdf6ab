# -*- test-case-name: tests.unit.test_states -*-
"""
The CREAM state machine (jobs submitted directly to CREAM), and the table of
CREAM event effects that the gLite machine shares for WMS jobs run by CREAM.

Each CREAM event type has one handler in L{CREAM_EFFECTS}. A handler fills the
C{cream_*} fields (and C{suspended}) from the event and returns the CREAM state
the event announces, if any; what a new CREAM state does to the job's C{state}
is up to the machine: this one moves by L{CREAM_TO_STATE}, the gLite one as the
gLite events generated for the change would (L{lbtwist.core.states.glite}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lbtwist.core.states.status import (
    ABORTED,
    CANCELLED,
    CLEARED,
    DONE,
    DONE_CANCELLED,
    DONE_FAILED,
    DONE_OK,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    TERMINAL_STATES,
    WAITING,
    JobStatus,
    apply_common,
    cream_state_name,
    parse_int,
)

if TYPE_CHECKING:
    from lbtwist.core.events import Event

# CREAM state -> (job state or None for unchanged, done code or None).
CREAM_TO_STATE: dict[str, tuple[str | None, int | None]] = {
    "Registered": (None, None),
    "Pending": (WAITING, None),
    "Idle": (SCHEDULED, None),
    "Running": (RUNNING, None),
    "Really-running": (RUNNING, None),
    "Held": (None, None),
    "Done-ok": (DONE, DONE_OK),
    "Done-failed": (DONE, DONE_FAILED),
    "Cancelled": (CANCELLED, DONE_CANCELLED),
    "Aborted": (ABORTED, None),
    "Purged": (CLEARED, None),
}

# The job wrapper status a CREAM state stands for.
CREAM_JW_STATUS: dict[str, str] = {
    "Running": "WRAPPER_RUNNING",
    "Really-running": "PAYLOAD_RUNNING",
}

#: A CREAM event effect: C{(status, event, direct)} -> the CREAM state the event
#: announces, or C{None}. C{direct} is C{True} on the CREAM machine, which also
#: writes the gLite-named fields (C{reason}, C{exit_code}, C{ce_node}...); on the
#: gLite machine those come from the effects of the generated gLite events.
CreamEffect = Callable[[JobStatus, "Event", bool], "str | None"]

_EXECUTOR = "CREAMExecutor"
_LRMS = "LRMS"


def _reason(status: JobStatus, reason: str | None, direct: bool) -> None:
    if reason:
        status.cream_reason = reason
        if direct:
            status.reason = reason


def _accepted(status: JobStatus, event: Event, direct: bool) -> str | None:
    local = event.get("local_jobid")
    if local:
        status.cream_id = status.cream_jobid = local
        if direct:
            status.globusId = local
        else:
            status.glite_jobid = status.jobId or event.jobid
    return None


def _store(status: JobStatus, event: Event, direct: bool) -> str | None:
    _reason(status, event.get("reason"), direct)
    if event.get("result") != "OK":
        return None
    command = event.get("command")
    if command == "CMDSUSPEND":
        status.suspended = True
    elif command == "CMDRESUME":
        status.suspended = False
    elif command == "CMDSTART":
        return "Pending"
    return None


def _call(status: JobStatus, event: Event, direct: bool) -> str | None:
    if event.source != _EXECUTOR or event.get("callee") != _LRMS:
        return None
    if event.get("result") != "OK":
        return None
    command = event.get("command")
    if command == "CMDCANCEL":
        status.cream_cancelling = True
        if direct:
            status.cancelling = True
    elif command == "CMDPURGE":
        return "Purged"
    elif command == "CMDSTART" and direct:
        # A WMS job becomes Idle with CREAM's CREAMStatus, which carries the LRMS
        # job id that the generated Accepted (LRMS) passes on.
        return "Idle"
    return None


def _cancel(status: JobStatus, event: Event, direct: bool) -> str | None:
    if event.get("status_code") != "DONE":
        return None
    reason = event.get("reason")
    _reason(status, reason, direct)
    if direct:
        status.cancelReason = reason or status.cancelReason
    return "Cancelled"


def _abort(status: JobStatus, event: Event, direct: bool) -> str | None:
    _reason(status, event.get("reason"), direct)
    return "Aborted"


def _status(status: JobStatus, event: Event, direct: bool) -> str | None:
    if event.get("result") != "DONE":
        return None
    exit_code = parse_int(event.get("exit_code"))
    if exit_code is not None:
        status.cream_exit_code = exit_code
        if direct:
            status.exit_code = exit_code
    node = event.get("worker_node")
    if node:
        status.cream_node = node
        if direct:
            status.ce_node = node
    lrms_id = event.get("LRMS_jobid")
    if lrms_id:
        status.cream_lrms_id = lrms_id
        if direct:
            status.localId = lrms_id
    failure = event.get("failure_reason")
    if failure:
        status.cream_failure_reason = failure
        if direct:
            status.failure_reasons.append(failure)
    return cream_state_name(event.get("new_state") or "")


#: The effects of the CREAM events, shared by both machines. Other CREAM events
#: (CREAMStart, CREAMPurge, CREAMRunning...) are stored but change nothing.
CREAM_EFFECTS: dict[str, CreamEffect] = {
    "CREAMAccepted": _accepted,
    "CREAMStore": _store,
    "CREAMCall": _call,
    "CREAMCancel": _cancel,
    "CREAMAbort": _abort,
    "CREAMStatus": _status,
}


def enter_cream_state(status: JobStatus, cream_state: str) -> None:
    """
    Set C{cream_state} and the C{cream_*} fields that follow from it alone
    (C{cream_done_code}, C{cream_jw_status}), on either machine.
    """
    status.cream_state = cream_state
    done_code = CREAM_TO_STATE[cream_state][1]
    if done_code is not None:
        status.cream_done_code = done_code
    jw_status = CREAM_JW_STATUS.get(cream_state)
    if jw_status is not None:
        status.cream_jw_status = jw_status


def _enter(status: JobStatus, cream_state: str, date: int) -> None:
    """
    This machine's move for a CREAM state: none once the job is terminal.
    """
    if status.state in TERMINAL_STATES:
        return
    enter_cream_state(status, cream_state)
    state, done_code = CREAM_TO_STATE[cream_state]
    if done_code is not None:
        status.done_code = done_code
    jw_status = CREAM_JW_STATUS.get(cream_state)
    if jw_status is not None:
        status.jw_status = jw_status
    if cream_state == "Really-running":
        status.payload_running = True
    elif cream_state == "Held":
        status.suspended = True
    if state is not None:
        status.set_state(state, date)


def _regjob(status: JobStatus, event: Event) -> None:
    status.jobId = status.jobId or event.jobid
    status.jobtype = event.get("jobtype")
    # A later RegJob never moves the owner (the store refuses one for another).
    status.owner = status.owner or event.user
    status.cream_owner = status.cream_owner or event.user
    jdl = event.get("jdl")
    if jdl:
        status.jdl = status.cream_jdl = jdl
    ns = event.get("ns")
    if ns:
        status.cream_endpoint = status.destination = status.network_server = ns
    status.parent_job = event.get("parent")
    status.seed = event.get("seed")
    if status.state not in TERMINAL_STATES:
        status.set_state(SUBMITTED, event.date)
        status.cream_state = "Registered"


def apply(status: JobStatus, event: Event, *, cream_aware: bool = True) -> None:
    """
    Fold C{event} into C{status} in place (CREAM machine).

    Events marked generated are skipped (this machine reads the CREAM events).
    """
    if event.generated:
        return
    status.lastUpdateTime = event.date
    if apply_common(status, event):
        return
    kind = event.type
    if kind == "RegJob":
        _regjob(status, event)
        return
    effect = CREAM_EFFECTS.get(kind)
    if effect is None:
        return
    cream_state = effect(status, event, True)
    if cream_state is not None:
        _enter(status, cream_state, event.date)
