# -*- test-case-name: tests.unit.test_lblayout -*-
"""
Job status in C{glite-lb-job_status}'s layout: every field, always, in its fixed
order, unset text as C{(null)}, unset numbers as C{0}, times as C{sec.usec}, the entry
time of every state (C{ctime()} in local time, or C{- not available -}).

Scripts C{grep "state :"}, C{"cream_state :"}, C{"suspended :"}, C{"exit_code :"} in
this output, so its spelling matters more than its looks.
"""

from __future__ import annotations

import time
from typing import Any

from lbtwist.core.states.status import DONE_CODE_NAMES, STATES, JobStatus

#: L&B's job states in its enumeration order (the first one is "no state").
LB_STATES: tuple[str, ...] = ("Undefined", *STATES)


def _s(value: Any) -> str:
    """
    A text field as C{printf("%s")} prints it: C{(null)} when unset.
    """
    if value is None or value == "" or value == [] or value == {}:
        return "(null)"
    return str(value)


def _d(value: Any) -> str:
    """
    A number or flag as C{printf("%d")} prints it: C{0} when unset.
    """
    if value is None:
        return "0"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(int(value))


def _tv(us: int | None) -> str:
    if not us:
        return "0.000000"
    seconds, micro = divmod(us, 1_000_000)
    return f"{seconds}.{micro:06d}"


def format_lb_status(status: JobStatus, *, level: int = 0, ctime: Any = time.ctime) -> str:
    """
    C{status} as C{glite-lb-job_status} prints one job (ending in an empty line).

    @param level: indentation by tabs (children states).
    @param ctime: C{seconds -> text} as C{ctime(3)} (local time), injectable for tests.
    """
    ind = "\t" * level
    out: list[str] = []

    def line(name: str, value: str) -> None:
        out.append(f"{ind}{name} : {value}\n")

    jobtype = status.jobtype or "SIMPLE"
    line("state", status.state)
    line("jobId", _s(status.jobId))
    line("owner", _s(status.owner))
    line("payload_owner", _s(status.payload_owner))
    line("jobtype", jobtype)
    line("parent_job", _s(status.parent_job))
    if jobtype != "SIMPLE":
        line("seed", _s(status.seed))
        line("children_num", _d(status.children_num))
        out.append(f"{ind}children :\n")
        out.append(f"{ind}children_states :\n")
        out.append(f"{ind}children_hist :\n")
    for name, value in (
        ("condorId", status.condorId),
        ("globusId", status.globusId),
        ("localId", status.localId),
        ("jdl", status.jdl),
        ("matched_jdl", status.matched_jdl),
        ("destination", status.destination),
        ("network server", status.network_server),
        ("condor_jdl", None),
        ("rsl", None),
        ("reason", status.reason),
        ("location", status.location),
        ("ce_node", status.ce_node),
    ):
        line(name, _s(value))
    line("subjob_failed", "0")
    line("done_code", DONE_CODE_NAMES.get(status.done_code or 0, _d(status.done_code)))
    line("exit_code", _d(status.exit_code))
    line("resubmitted", _d(status.resubmitted))
    line("cancelling", _d(status.cancelling))
    line("cancelReason", _s(status.cancelReason))
    line("cpuTime", _d(status.cpuTime))
    out.append(f"{ind}user_tags :\n")
    for tag, value in sorted(status.user_tags.items()):
        out.append(f'{ind}{tag:>14} = "{value}"\n')
    line("stateEnterTime", _tv(status.stateEnterTime))
    out.append(f"{ind}stateEnterTimes : \n")
    for state in LB_STATES:
        entered = status.stateEnterTimes.get(state)
        when = ctime(entered // 1_000_000) + "\n" if entered else "    - not available -\n"
        out.append(f"{ind}{state:>14}  {when}")
    line("lastUpdateTime", _tv(status.lastUpdateTime))
    line("expectUpdate", "0")
    line("expectFrom", "(null)")
    acl = "; ".join(
        f"{e.get('permission_type', '')} {e.get('permission', '')} "
        f"{e.get('user_id_type', '')}:{e.get('user_id', '')}"
        for e in status.acl
    )
    line("acl", _s(acl))
    # L&B prints the access rights after a line break and no newline after them.
    out.append(f"{ind}access rights : \n(null)")
    out.append(f"{ind}payload_running: {_d(status.payload_running)}\n")
    line("suspended", _d(status.suspended))
    line("suspend_reason", _s(status.suspend_reason))
    line("failure_reasons", _s("\n".join(status.failure_reasons)))
    line("remove_from_proxy", "0")
    line("ui_host", _s(status.ui_host))
    if status.user_fqans:
        out.append(f"{ind}user_fqans : \n")
        out.extend(f"{ind}\t{fqan} \n" for fqan in status.user_fqans)
    line("sandbox_retrieved", "0")
    line("jw_status", status.jw_status or "UNKNOWN")
    line("isb_transfer", "(null)")
    line("osb_transfer", "(null)")
    if jobtype == "PBS":
        for name in ("pbs_state", "pbs_queue", "pbs_owner", "pbs_name", "pbs_reason"):
            line(name, "(null)")
        line("pbs_scheduler", "(null)")
        line("pbs_dest_host", "(null)")
        line("pbs_pid", "0")
        line("pbs_resource_usage", "(null)")
        line("pbs_exit_status", "0")
        line("pbs_error_desc", "(null)")
    if jobtype == "CREAM" or status.cream_state:
        line("cream_state", _s(status.cream_state))
        line("cream_owner", _s(status.cream_owner))
        line("cream_endpoint", _s(status.cream_endpoint))
        line("cream_jdl", _s(status.cream_jdl))
        line("cream_reason", _s(status.cream_reason))
        line("cream_lrms_id", _s(status.cream_lrms_id))
        line("cream_node", _s(status.cream_node))
        line("cream_done_code", _d(status.cream_done_code))
        line("cream_exit_code", _d(status.cream_exit_code))
        line("cream_cancelling", _d(status.cream_cancelling))
        line("cream_cpu_time", _d(status.cream_cpu_time))
        line("cream_jw_status", status.cream_jw_status or "UNKNOWN")
    line("ft_compute_job", "(null)")
    line("ft_sandbox_type", "UNKNOWN")
    line("ft_src", "(null)")
    line("ft_dest", "(null)")
    out.append("\n")
    return "".join(out)


def format_lb_log(lines: list[str]) -> str:
    """
    Events as C{glite-lb-job_log} prints them: each re-generated by L&B's unparser
    (L{lbtwist.core.unparse}), a blank line after each, then C{Found N events}.

    Lines that no longer parse are printed as stored.
    """
    from lbtwist.core.errors import LBError
    from lbtwist.core.events import parse_event
    from lbtwist.core.unparse import unparse_event

    out = []
    for raw in lines:
        try:
            text = unparse_event(parse_event(raw))
        except LBError:
            text = raw.rstrip("\n")
        out.append(text + "\n\n")
    out.append(f"\nFound {len(lines)} events\n")
    return "".join(out)
