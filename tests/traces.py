# -*- test-case-name: tests.unit.test_states -*-
"""
Hand-written CREAM event traces as ULM text, for tests and example data.

Every trace is a list of ULM lines (no trailing LF) in the order a producer
would log them. Direct CREAM jobs carry opaque seqcodes; a WMS job executed by
CREAM carries the WMS seqcode, its LRMS counter raised by 1000 per CREAM event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CE_HOST = "cream-ce01.example.org"
CREAM_ENDPOINT = f"https://{CE_HOST}:8443/ce-cream/services/CREAM2"
CREAM_USER = "/DC=org/DC=example/O=People/CN=Jana Novakova"
WMS_HOST = "wms01.example.org"
LB_HOST = "lb01.example.org"
WORKER = "wn042.example.org"

DIRECT_JOBID = f"https://{CE_HOST}:9000/CREAM812461375"
DIRECT_CREAM_ID = "CREAM812461375"
WMS_JOBID = f"https://{LB_HOST}:9000/Hq3tK8vWZ0bQy1n2m3p4rA"
WMS_CREAM_ID = "CREAM294117530"

DIRECT_JDL = (
    '[ Executable = "/bin/sleep"; Arguments = "60"; StdOutput = "out.txt"; '
    'StdError = "err.txt"; OutputSandbox = { "out.txt", "err.txt" }; '
    'OutputSandboxBaseDestUri = "gsiftp://localhost"; QueueName = "long" ]'
)
WMS_JDL = (
    '[ Type = "Job"; JobType = "Normal"; Executable = "/bin/hostname"; '
    'StdOutput = "std.out"; StdError = "std.err"; '
    'OutputSandbox = { "std.out", "std.err" }; VirtualOrganisation = "dteam" ]'
)

_UNQUOTED = ("DATE", "PROG", "LVL", "DG.PRIORITY")
BASE_DATE = (2024, 3, 14, 9, 26, 53)
_GLITE_WIDTHS = (("UI", 6), ("NS", 10), ("WM", 6), ("BH", 10), ("JSS", 6), ("LM", 6))
_TAIL_WIDTHS = (("LRMS", 6), ("APP", 6), ("LBS", 6))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def date_text(offset_s: int, micro: int = 0) -> str:
    """
    ULM DATE C{offset_s} seconds after 2024-03-14 09:26:53 UTC.
    """
    year, month, day, hour, minute, second = BASE_DATE
    total = ((hour * 60 + minute) * 60 + second) + offset_s
    day += total // 86400
    total %= 86400
    return (
        f"{year:04d}{month:02d}{day:02d}{total // 3600:02d}{total // 60 % 60:02d}"
        f"{total % 60:02d}.{micro:06d}"
    )


def ulm_line(
    event: str,
    *,
    date: str,
    host: str,
    source: str,
    jobid: str,
    seqcode: str,
    user: str = CREAM_USER,
    src_instance: str = "",
    **fields: str,
) -> str:
    """
    One ULM line with the common fields in L&B's order, then C{fields}
    (keyword names are the field names; C{from_} stands for C{from}).
    """
    pairs: list[tuple[str, str]] = [
        ("DATE", date),
        ("HOST", host),
        ("PROG", "edg-wms"),
        ("LVL", "SYSTEM"),
        ("DG.PRIORITY", "0"),
        ("DG.SOURCE", source),
        ("DG.SRC_INSTANCE", src_instance),
        ("DG.EVNT", event),
        ("DG.JOBID", jobid),
        ("DG.SEQCODE", seqcode),
        ("DG.USER", user),
    ]
    for name, value in fields.items():
        pairs.append((f"DG.{event.upper()}.{name.rstrip('_').upper()}", value))
    return " ".join(f"{k}={v if k in _UNQUOTED else _quote(v)}" for k, v in pairs)


def glite_seqcode(**counters: int) -> str:
    """
    A 9-counter gLite seqcode, unnamed counters zero.
    """
    parts = [f"{n}={counters.get(n, 0):0{w}d}" for n, w in _GLITE_WIDTHS + _TAIL_WIDTHS]
    return ":".join(parts)


class _Direct:
    """
    Builder of a direct CREAM job's lines: opaque seqcodes, one second apart.
    """

    def __init__(self, jobid: str = DIRECT_JOBID, cream_id: str = DIRECT_CREAM_ID) -> None:
        self.jobid = jobid
        self.cream_id = cream_id
        self.lines: list[str] = []
        self.cmd = 0

    def add(self, event: str, source: str, **fields: str) -> None:
        n = len(self.lines)
        self.lines.append(
            ulm_line(
                event,
                date=date_text(n * 7, 1000 + n),
                host=CE_HOST,
                source=source,
                jobid=self.jobid,
                seqcode=f"no_seqcodes_with_cream_execute_{self.cmd}_{n}",
                src_instance=CREAM_ENDPOINT if source == "CREAMInterface" else "",
                **fields,
            )
        )

    def register(self) -> None:
        self.add("RegJob", "CREAMInterface", jdl=DIRECT_JDL, ns=CREAM_ENDPOINT, jobtype="CREAM")
        self.add("CREAMAccepted", "CREAMInterface", local_jobid=self.cream_id)

    def store(self, command: str, result: str = "OK", **fields: str) -> None:
        self.cmd += 1
        self.add(
            "CREAMStore",
            "CREAMInterface",
            command=command,
            cmdid=f"{command}-{self.cmd}",
            result=result,
            **fields,
        )

    def call(self, command: str, result: str = "OK", **fields: str) -> None:
        self.add(
            "CREAMCall",
            "CREAMExecutor",
            callee="LRMS",
            command=command,
            cmdid=f"{command}-{self.cmd}",
            destid=self.cream_id,
            result=result,
            **fields,
        )

    def status(self, old: str, new: str, **fields: str) -> None:
        self.add(
            "CREAMStatus",
            "CREAMExecutor",
            old_state=old,
            new_state=new,
            result="ARRIVED",
            **fields,
        )
        self.add(
            "CREAMStatus",
            "CREAMExecutor",
            old_state=old,
            new_state=new,
            result="DONE",
            **fields,
        )

    def start(self) -> None:
        self.register()
        self.store("CMDSTART", "START")
        self.store("CMDSTART", "OK")
        self.status("REGISTERED", "PENDING")
        self.call("CMDSTART", "START")
        self.call("CMDSTART", "OK")
        self.status("PENDING", "IDLE", LRMS_jobid="4711.batch01.example.org")

    def run(self) -> None:
        self.status("IDLE", "RUNNING", worker_node=WORKER)
        self.status("RUNNING", "REALLY-RUNNING", worker_node=WORKER)


def cream_done_ok() -> list[str]:
    """
    A direct CREAM job: Registered, Pending, Idle, Running, Really-running, Done-ok, Purged.
    """
    job = _Direct()
    job.start()
    job.run()
    job.status("REALLY-RUNNING", "DONE-OK", exit_code="0", worker_node=WORKER)
    job.store("CMDPURGE", "START")
    job.store("CMDPURGE", "OK")
    job.call("CMDPURGE", "START")
    job.call("CMDPURGE", "OK")
    job.status("DONE-OK", "PURGED")
    return job.lines


def cream_done_ok_unpurged() -> list[str]:
    """
    A direct CREAM job that ends Done-ok (not purged), with user tags.
    """
    job = _Direct(f"https://{CE_HOST}:9000/CREAM812461376", "CREAM812461376")
    job.start()
    job.add("UserTag", "CREAMInterface", name="Phase", value="one")
    job.run()
    job.add("UserTag", "CREAMInterface", name="phase", value="two")
    job.status("REALLY-RUNNING", "DONE-OK", exit_code="0", worker_node=WORKER)
    return job.lines


def cream_done_failed() -> list[str]:
    """
    A direct CREAM job that fails: exit code 3 and a failure reason.
    """
    job = _Direct(f"https://{CE_HOST}:9000/CREAM812461377", "CREAM812461377")
    job.start()
    job.run()
    job.status(
        "REALLY-RUNNING",
        "DONE-FAILED",
        exit_code="3",
        failure_reason="Job terminated with non-zero exit code",
        worker_node=WORKER,
    )
    return job.lines


def cream_cancelled() -> list[str]:
    """
    A direct CREAM job cancelled by its owner while running.
    """
    job = _Direct(f"https://{CE_HOST}:9000/CREAM812461378", "CREAM812461378")
    job.start()
    job.status("IDLE", "RUNNING", worker_node=WORKER)
    job.store("CMDCANCEL", "START")
    job.store("CMDCANCEL", "OK")
    job.call("CMDCANCEL", "START")
    job.call("CMDCANCEL", "OK")
    job.add("CREAMCancel", "CREAMExecutor", status_code="DONE", reason="Cancelled by user")
    job.status("RUNNING", "CANCELLED", exit_code="N/A", reason="Cancelled by user")
    return job.lines


def cream_aborted() -> list[str]:
    """
    A direct CREAM job the batch system refused: Pending, then aborted.
    """
    job = _Direct(f"https://{CE_HOST}:9000/CREAM812461379", "CREAM812461379")
    job.register()
    job.store("CMDSTART", "START")
    job.store("CMDSTART", "OK")
    job.status("REGISTERED", "PENDING")
    job.call("CMDSTART", "START")
    job.call("CMDSTART", "FAILED", reason="qsub: Unknown queue")
    job.add("CREAMAbort", "CREAMExecutor", reason="submission to BLAH failed: qsub: Unknown queue")
    job.status("PENDING", "ABORTED", failure_reason="submission to BLAH failed")
    return job.lines


def cream_held() -> list[str]:
    """
    A direct CREAM job suspended (Held) and resumed, then Done-ok.
    """
    job = _Direct(f"https://{CE_HOST}:9000/CREAM812461380", "CREAM812461380")
    job.start()
    job.status("IDLE", "RUNNING", worker_node=WORKER)
    job.store("CMDSUSPEND", "START")
    job.store("CMDSUSPEND", "OK")
    job.status("RUNNING", "HELD", worker_node=WORKER)
    job.store("CMDRESUME", "START")
    job.store("CMDRESUME", "OK")
    job.status("HELD", "RUNNING", worker_node=WORKER)
    job.status("RUNNING", "DONE-OK", exit_code="0", worker_node=WORKER)
    return job.lines


DIRECT_TRACES = {
    "done_ok": cream_done_ok,
    "done_ok_unpurged": cream_done_ok_unpurged,
    "done_failed": cream_done_failed,
    "cancelled": cream_cancelled,
    "aborted": cream_aborted,
    "held": cream_held,
}


# WMS jobs executed by CREAM.

WMS_PRELUDE_SEQ = {"UI": 2, "NS": 4, "WM": 4, "JSS": 3}
WMS_USER = "/DC=org/DC=example/O=People/CN=Petr Svoboda"


def wms_prelude(jobid: str = WMS_JOBID) -> list[str]:
    """
    The WMS side of a job up to its transfer to CREAM (state Ready).
    """
    lines: list[str] = []

    def add(event: str, source: str, n: int, host: str = WMS_HOST, **fields: str) -> None:
        counters = dict(seq[n])
        lines.append(
            ulm_line(
                event,
                date=date_text(n * 3, 500 + n),
                host=host,
                source=source,
                jobid=jobid,
                seqcode=glite_seqcode(**counters),
                user=WMS_USER,
                src_instance=""
                if source != "NetworkServer"
                else f"https://{WMS_HOST}:7443/glite_wms_wmproxy_server",
                **fields,
            )
        )

    seq = [
        {"NS": 1},
        {"UI": 2, "NS": 2},
        {"UI": 2, "NS": 3},
        {"UI": 2, "NS": 4},
        {"UI": 2, "NS": 4, "WM": 1},
        {"UI": 2, "NS": 4, "WM": 2},
        {"UI": 2, "NS": 4, "WM": 3},
        {"UI": 2, "NS": 4, "WM": 4},
        {"UI": 2, "NS": 4, "WM": 4, "JSS": 1},
        {"UI": 2, "NS": 4, "WM": 4, "JSS": 2},
        {"UI": 2, "NS": 4, "WM": 4, "JSS": 3},
    ]
    add(
        "RegJob",
        "NetworkServer",
        0,
        jdl=WMS_JDL,
        ns=f"https://{WMS_HOST}:7443/glite_wms_wmproxy_server",
        jobtype="SIMPLE",
        nsubjobs="0",
        seed="WMPROXY",
    )
    add(
        "Accepted",
        "NetworkServer",
        1,
        from_="UserInterface",
        from_host="ui.example.org",
        from_instance="",
        local_jobid="",
    )
    add(
        "EnQueued",
        "NetworkServer",
        2,
        queue="/var/wms/workload_manager/jobdir",
        job=WMS_JDL,
        result="START",
    )
    add(
        "EnQueued",
        "NetworkServer",
        3,
        queue="/var/wms/workload_manager/jobdir",
        job=WMS_JDL,
        result="OK",
    )
    add(
        "DeQueued",
        "WorkloadManager",
        4,
        queue="/var/wms/workload_manager/jobdir",
        local_jobid=jobid,
    )
    add("Match", "WorkloadManager", 5, dest_id=f"{CE_HOST}:8443/cream-pbs-long")
    add("EnQueued", "WorkloadManager", 6, queue="/var/wms/ice/jobdir", job=WMS_JDL, result="START")
    add("EnQueued", "WorkloadManager", 7, queue="/var/wms/ice/jobdir", job=WMS_JDL, result="OK")
    add("DeQueued", "JobController", 8, queue="/var/wms/ice/jobdir", local_jobid=jobid)
    add(
        "Transfer",
        "JobController",
        9,
        destination="LRMS",
        dest_host=CE_HOST,
        dest_instance=CREAM_ENDPOINT,
        job=WMS_JDL,
        result="START",
    )
    add(
        "Transfer",
        "JobController",
        10,
        destination="LRMS",
        dest_host=CE_HOST,
        dest_instance=CREAM_ENDPOINT,
        job=WMS_JDL,
        result="OK",
        dest_jobid=f"https://{CE_HOST}:8443/{WMS_CREAM_ID}",
    )
    return lines


# Valid successions of CREAM states for a job (as CREAMStatus new_state).
CREAM_NEXT: dict[str, tuple[str, ...]] = {
    "Pending": ("Idle", "Aborted", "Cancelled"),
    "Idle": ("Running", "Held", "Aborted", "Cancelled"),
    "Running": ("Really-running", "Held", "Done-ok", "Done-failed", "Cancelled"),
    "Really-running": ("Done-ok", "Done-failed", "Held", "Cancelled"),
    "Held": ("Idle", "Running", "Cancelled"),
    "Done-ok": ("Purged",),
    "Done-failed": ("Purged",),
    "Cancelled": ("Purged",),
    "Aborted": ("Purged",),
    "Purged": (),
}


class CreamTail:
    """
    Builder of the CREAM events of a WMS job: WMS seqcode, LRMS +1000 each.
    """

    def __init__(self, jobid: str = WMS_JOBID, cream_id: str = WMS_CREAM_ID) -> None:
        self.jobid = jobid
        self.cream_id = cream_id
        self.lines: list[str] = []
        self.state = "Registered"

    def add(self, event: str, source: str, **fields: str) -> None:
        n = len(self.lines) + 1
        counters = dict(WMS_PRELUDE_SEQ, LRMS=1000 * n)
        self.lines.append(
            ulm_line(
                event,
                date=date_text(100 + n * 11, 2000 + n),
                host=CE_HOST,
                source=source,
                jobid=self.jobid,
                seqcode=glite_seqcode(**counters),
                user=WMS_USER,
                src_instance=CREAM_ENDPOINT if source == "CREAMInterface" else "",
                **fields,
            )
        )

    def accept(self) -> None:
        self.add("CREAMAccepted", "CREAMInterface", local_jobid=self.cream_id)
        self.add("CREAMStore", "CREAMInterface", command="CMDSTART", result="OK")
        self.to("Pending")
        self.add("CREAMCall", "CREAMExecutor", callee="LRMS", command="CMDSTART", result="OK")

    def to(self, new: str) -> None:
        fields: dict[str, str] = {}
        if new == "Idle":
            fields["LRMS_jobid"] = "8152.batch01.example.org"
        if new in ("Running", "Really-running", "Done-ok", "Done-failed"):
            fields["worker_node"] = WORKER
        if new == "Done-ok":
            fields["exit_code"] = "0"
        if new == "Done-failed":
            fields["exit_code"] = "1"
            fields["failure_reason"] = "reason=1"
        if new == "Cancelled":
            self.add("CREAMCancel", "CREAMExecutor", status_code="DONE", reason="Cancelled by user")
        if new == "Aborted":
            self.add("CREAMAbort", "CREAMExecutor", reason="BLAH error: submission failed")
        self.add(
            "CREAMStatus",
            "CREAMExecutor",
            old_state=self.state.upper(),
            new_state=new.upper(),
            result="DONE",
            **fields,
        )
        self.state = new


def wms_cream_lines(states: list[str], *, jobid: str = WMS_JOBID) -> tuple[list[str], list[str]]:
    """
    A WMS job run by CREAM through C{states} (after Pending).

    @return: (the WMS prelude lines, the CREAM lines).
    """
    tail = CreamTail(jobid)
    tail.accept()
    for state in states:
        tail.to(state)
    return wms_prelude(jobid), tail.lines


def wms_on_cream() -> list[str]:
    """
    A WMS job run by CREAM to Done-ok.
    """
    prelude, tail = wms_cream_lines(["Idle", "Running", "Really-running", "Done-ok"])
    return prelude + tail


def cream_paths() -> Any:
    """
    A hypothesis strategy of valid CREAM state paths (after Pending).
    """
    from hypothesis import strategies as st

    def walk(choices: list[int]) -> list[str]:
        path: list[str] = []
        state = "Pending"
        for choice in choices:
            options = CREAM_NEXT[state]
            if not options:
                break
            state = options[choice % len(options)]
            path.append(state)
        return path

    return st.lists(st.integers(0, 10), max_size=12).map(walk)


def iter_all() -> Iterator[tuple[str, list[str]]]:
    """
    Every named trace: the direct ones and the WMS-on-CREAM one.
    """
    for name, make in DIRECT_TRACES.items():
        yield name, make()
    yield "wms_on_cream", wms_on_cream()


def parse_lines(lines: list[str]) -> list[Any]:
    """
    C{lines} parsed into events, with L{lbtwist.core.events.parse_event} when it exists
    (else with a minimal stand-in built on L{lbtwist.core.ulm}, for early testing).
    """
    try:
        from lbtwist.core.events import parse_event
    except ImportError:
        return [_StandIn.parse(line) for line in lines]
    return [parse_event(line) for line in lines]


def _catalogue() -> dict[str, tuple[str, str, bool]]:
    import csv
    from pathlib import Path

    import lbtwist

    table = Path(lbtwist.__file__).parent / "core" / "data" / "events.tsv"
    result: dict[str, tuple[str, str, bool]] = {}
    with table.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["wire_key"]:
                result[row["wire_key"].upper()] = (row["event"], row["field"], bool(row["codes"]))
    return result


_SOURCES = (
    "UserInterface NetworkServer WorkloadManager BigHelper JobController LogMonitor LRMS "
    "Application LBServer CREAMInterface CREAMExecutor PBSClient PBSServer PBSMomSuperior "
    "PBSMom PBSScheduler CloudManager VMManager VMSystem"
).split()


class _StandIn:
    """
    The attributes of L{lbtwist.core.events.Event} the state machines read.
    """

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    @property
    def generated(self) -> bool:
        return any(k.upper() == "DG.GENERATED_BY" for k, _ in self.extra)

    @classmethod
    def parse(cls, line: str) -> _StandIn:
        from lbtwist.core.ulm import parse_date, parse_fields

        cat = _catalogue()
        common: dict[str, str] = {}
        fields: dict[str, str] = {}
        extra: list[tuple[str, str]] = []
        for key, value in parse_fields(line):
            upper = key.upper()
            if upper in cat and cat[upper][0] != "_common_":
                if value:
                    fields[cat[upper][1]] = value.upper() if cat[upper][2] else value
            elif upper in cat or upper in ("PROG", "LVL", "DG.EVNT"):
                common[upper] = value
            else:
                extra.append((key, value))
        sources = {s.lower(): s for s in _SOURCES}
        return cls(
            type=common["DG.EVNT"],
            jobid=common["DG.JOBID"],
            date=parse_date(common["DATE"]),
            host=common["HOST"],
            user=common["DG.USER"],
            source=sources[common["DG.SOURCE"].lower()],
            seqcode=common["DG.SEQCODE"],
            priority=int(common.get("DG.PRIORITY", "0")),
            src_instance=common.get("DG.SRC_INSTANCE", ""),
            fields=fields,
            extra=tuple(extra),
        )
