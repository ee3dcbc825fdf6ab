# -*- test-case-name: tests.unit.test_states -*-
"""
The CREAM state machine: jobs submitted directly to CREAM (design section 5).
"""

from __future__ import annotations

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


def _move(status: JobStatus, state: str, cream_state: str, date: int) -> None:
    if status.state in TERMINAL_STATES:
        return
    status.set_state(state, date)
    status.cream_state = cream_state


def _reason(status: JobStatus, reason: str | None) -> None:
    if reason:
        status.reason = reason
        status.cream_reason = reason


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
    date = event.date
    if kind == "RegJob":
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
        _move(status, SUBMITTED, "Registered", date)
    elif kind == "CREAMAccepted":
        local = event.get("local_jobid")
        if local:
            status.cream_id = status.globusId = status.cream_jobid = local
    elif kind == "CREAMStore":
        command, result = event.get("command"), event.get("result")
        _reason(status, event.get("reason"))
        if result != "OK":
            return
        if command == "CMDSTART":
            _move(status, WAITING, "Pending", date)
        elif command == "CMDSUSPEND":
            status.suspended = True
        elif command == "CMDRESUME":
            status.suspended = False
    elif kind == "CREAMCall":
        if event.source != "CREAMExecutor" or event.get("callee") != "LRMS":
            return
        if event.get("result") != "OK":
            return
        command = event.get("command")
        if command == "CMDSTART":
            _move(status, SCHEDULED, "Idle", date)
        elif command == "CMDCANCEL":
            status.cancelling = status.cream_cancelling = True
        elif command == "CMDPURGE":
            _move(status, CLEARED, "Purged", date)
    elif kind == "CREAMCancel":
        if event.get("status_code") == "DONE":
            _reason(status, event.get("reason"))
            status.cancelReason = event.get("reason") or status.cancelReason
            if status.state not in TERMINAL_STATES:
                status.done_code = status.cream_done_code = DONE_CANCELLED
            _move(status, CANCELLED, "Cancelled", date)
    elif kind == "CREAMAbort":
        _reason(status, event.get("reason"))
        _move(status, ABORTED, "Aborted", date)
    elif kind == "CREAMStatus":
        _apply_status(status, event)


def _apply_status(status: JobStatus, event: Event) -> None:
    if event.get("result") != "DONE":
        return
    exit_code = parse_int(event.get("exit_code"))
    if exit_code is not None:
        status.exit_code = status.cream_exit_code = exit_code
    node = event.get("worker_node")
    if node:
        status.ce_node = status.cream_node = node
    lrms_id = event.get("LRMS_jobid")
    if lrms_id:
        status.localId = status.cream_lrms_id = lrms_id
    failure = event.get("failure_reason")
    if failure:
        status.cream_failure_reason = failure
        status.failure_reasons.append(failure)
    cream_state = cream_state_name(event.get("new_state") or "")
    if cream_state is None or status.state in TERMINAL_STATES:
        return
    status.cream_state = cream_state
    state, done_code = CREAM_TO_STATE[cream_state]
    if done_code is not None:
        status.done_code = status.cream_done_code = done_code
    if cream_state == "Running":
        status.jw_status = status.cream_jw_status = "WRAPPER_RUNNING"
    elif cream_state == "Really-running":
        status.jw_status = status.cream_jw_status = "PAYLOAD_RUNNING"
        status.payload_running = True
    elif cream_state == "Held":
        status.suspended = True
    if state is not None:
        status.set_state(state, event.date)
