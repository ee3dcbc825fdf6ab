# -*- test-case-name: tests.e2e.test_proxy -*-
"""
End-to-end harness: a real C{twistd lbproxy} subprocess on a temporary state
directory, the C{lbtwist} command line, and builders for CREAM event traces.

Blocking code on purpose (subprocesses, sockets, real time with bounded waits):
it is only used by the tests under C{tests/e2e/}, never by unit tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import attrs
from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core import ilproto
from lbtwist.security.devcerts import DevPKI
from lbtwist.security.identity import slash_dn

BIN_DIR = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN_DIR, "twistd")
#: How to run the command line: the console script next to the interpreter.
#: (C{python -m lbtwist.cli.main} is not used: that module has no C{__main__} guard.)
LBTWIST = [os.path.join(BIN_DIR, "lbtwist")]

#: Seconds to wait for the service to listen / to stop.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

USER_DN = "/DC=org/DC=example/OU=People/CN=Test User"
CE_HOST = "localhost"
WMS_LB = "https://lb.example.org:9000"
CREAM_NS = "https://localhost:8443/ce-cream/services/CREAM2"

#: 2026-01-01T00:00:00Z in microseconds; traces count from here.
T0 = 1767225600 * 1_000_000


def format_date(us: int) -> str:
    """
    L&B's DATE form of a time in microseconds since the epoch, UTC.
    """
    seconds, micro = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%d%H%M%S") + f".{micro:06d}"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def ulm_line(
    event: str,
    *,
    jobid: str,
    date: int,
    source: str,
    seqcode: str,
    user: str = USER_DN,
    host: str = CE_HOST,
    src_instance: str = "",
    **fields: str,
) -> str:
    """
    One event as a ULM line (no LF), common fields in L&B's order.

    @param fields: catalogue field name -> value (written as C{DG.<EVENT>.<FIELD>}).
    """
    parts = [
        f"DATE={format_date(date)}",
        f"HOST={_quote(host)}",
        "PROG=edg-wms",
        "LVL=SYSTEM",
        "DG.PRIORITY=0",
        f"DG.SOURCE={_quote(source)}",
        f"DG.SRC_INSTANCE={_quote(src_instance)}",
        f"DG.EVNT={_quote(event)}",
        f"DG.JOBID={_quote(jobid)}",
        f"DG.SEQCODE={_quote(seqcode)}",
        f"DG.USER={_quote(user)}",
    ]
    for name, value in fields.items():
        parts.append(f"DG.{event.upper()}.{name.upper()}={_quote(value)}")
    return " ".join(parts)


def field_map(line: str) -> dict[str, str]:
    """
    The fields of a ULM line, upper-cased keys (a small reader for checks; the
    lines it reads come from the harness or the service).
    """
    result: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        eq = line.index("=", i)
        key = line[i:eq].upper()
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    out.append("\n" if line[i] == "n" else line[i])
                else:
                    out.append(line[i])
                i += 1
            i += 1
            result[key] = "".join(out)
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            result[key] = line[i:end]
            i = end
    return result


def event_key(line: str) -> tuple[str, str, str, str]:
    """
    What identifies an event of the harness's traces: job, type, DATE, seqcode.
    """
    f = field_map(line)
    return (f["DG.JOBID"], f["DG.EVNT"].lower(), f["DATE"], f["DG.SEQCODE"])


@attrs.frozen
class TraceStep:
    """
    One event of a trace and the (state, cream_state) expected once it is applied.
    """

    jobid: str
    event: str
    source: str
    seqcode: str
    date: int
    fields: tuple[tuple[str, str], ...]
    state: str
    cream_state: str

    @property
    def line(self) -> str:
        return ulm_line(
            self.event,
            jobid=self.jobid,
            date=self.date,
            source=self.source,
            seqcode=self.seqcode,
            **dict(self.fields),
        )

    def logevent_args(self) -> list[str]:
        """
        C{lbtwist logevent} arguments for this event (DATE is the CLI's clock).
        """
        args = ["-j", self.jobid, "-s", self.source, "-e", self.event, "-c", self.seqcode]
        args += ["-U", USER_DN, "-H", CE_HOST]
        return args + [f"--{name}={value}" for name, value in self.fields]


def cream_jobid(n: int) -> str:
    """
    The L&B id of a job submitted directly to CREAM (local to the proxy).
    """
    return f"https://{CE_HOST}:9000/CREAM{n:09d}"


#: What CREAM logs for a direct job: (event, source, fields, state, cream_state after it).
_CREAM_COMMON: list[tuple[str, str, dict[str, str], str, str]] = [
    (
        "RegJob",
        "CREAMInterface",
        {"jobtype": "CREAM", "ns": CREAM_NS, "jdl": '[ Executable = "/bin/true"; ]'},
        "Submitted",
        "Registered",
    ),
    ("CREAMAccepted", "CREAMInterface", {"local_jobid": "@"}, "Submitted", "Registered"),
    (
        "CREAMStore",
        "CREAMInterface",
        {"command": "CMDSTART", "result": "START"},
        "Submitted",
        "Registered",
    ),
    ("CREAMStore", "CREAMInterface", {"command": "CMDSTART", "result": "OK"}, "Waiting", "Pending"),
    (
        "CREAMCall",
        "CREAMExecutor",
        {"callee": "LRMS", "command": "CMDSTART", "result": "START"},
        "Waiting",
        "Pending",
    ),
    (
        "CREAMCall",
        "CREAMExecutor",
        {"callee": "LRMS", "command": "CMDSTART", "result": "OK"},
        "Scheduled",
        "Idle",
    ),
    (
        "CREAMStatus",
        "CREAMExecutor",
        {"result": "DONE", "old_state": "PENDING", "new_state": "IDLE", "LRMS_jobid": "@.pbs"},
        "Scheduled",
        "Idle",
    ),
    (
        "CREAMStatus",
        "CREAMExecutor",
        {
            "result": "DONE",
            "old_state": "IDLE",
            "new_state": "RUNNING",
            "worker_node": "wn1.example.org",
        },
        "Running",
        "Running",
    ),
    (
        "CREAMStatus",
        "CREAMExecutor",
        {"result": "DONE", "old_state": "RUNNING", "new_state": "REALLY-RUNNING"},
        "Running",
        "Really-running",
    ),
]

_CREAM_ENDINGS: dict[str, list[tuple[str, str, dict[str, str], str, str]]] = {
    "ok": [
        (
            "CREAMStatus",
            "CREAMExecutor",
            {
                "result": "DONE",
                "old_state": "REALLY-RUNNING",
                "new_state": "DONE-OK",
                "exit_code": "0",
            },
            "Done",
            "Done-ok",
        ),
    ],
    "failed": [
        (
            "CREAMStatus",
            "CREAMExecutor",
            {
                "result": "DONE",
                "old_state": "REALLY-RUNNING",
                "new_state": "DONE-FAILED",
                "exit_code": "3",
                "failure_reason": "payload failed",
            },
            "Done",
            "Done-failed",
        ),
    ],
    "cancelled": [
        (
            "CREAMStore",
            "CREAMInterface",
            {"command": "CMDCANCEL", "result": "OK"},
            "Running",
            "Really-running",
        ),
        (
            "CREAMStatus",
            "CREAMExecutor",
            {
                "result": "DONE",
                "old_state": "REALLY-RUNNING",
                "new_state": "CANCELLED",
                "failure_reason": "cancelled by user",
            },
            "Cancelled",
            "Cancelled",
        ),
    ],
}

ENDINGS = tuple(_CREAM_ENDINGS)


def cream_direct_trace(jobid: str, start: int, ending: str = "ok") -> list[TraceStep]:
    """
    What CREAM logs for a job submitted directly to it, in order, one
    millisecond apart from C{start}.

    @param ending: C{"ok"} (Done-ok), C{"failed"} (Done-failed) or
        C{"cancelled"} (cancelled while running).
    """
    creamid = jobid.rsplit("/", 1)[1]
    steps = []
    for i, (event, source, fields, state, cream_state) in enumerate(
        _CREAM_COMMON + _CREAM_ENDINGS[ending]
    ):
        steps.append(
            TraceStep(
                jobid=jobid,
                event=event,
                source=source,
                seqcode=f"no_seqcodes_with_cream_{creamid}_{i + 1}",
                date=start + 1000 * i,
                fields=tuple((k, v.replace("@", creamid)) for k, v in fields.items()),
                state=state,
                cream_state=cream_state,
            )
        )
    return steps


def glite_seqcode(**counters: int) -> str:
    """
    A gLite seqcode with the given counters (others zero).
    """
    names = ("UI", "NS", "WM", "BH", "JSS", "LM", "LRMS", "APP", "LBS")
    widths = {"NS": 10, "BH": 10}
    return ":".join(f"{name}={counters.get(name, 0):0{widths.get(name, 6)}d}" for name in names)


def wms_job_trace(jobid: str, creamid: str, start: int) -> tuple[list[str], list[str]]:
    """
    A WMS job sent to CREAM: the WMS's own events, then CREAM's (seqcodes with
    the LRMS counter raised by 1000 per event).

    @return: (WMS lines, CREAM lines).
    """
    date = iter(range(start, start + 1_000_000_000, 1000))
    wms = [
        ulm_line(
            "RegJob",
            jobid=jobid,
            date=next(date),
            source="NetworkServer",
            seqcode=glite_seqcode(NS=1),
            host="wms.example.org",
            jobtype="SIMPLE",
            ns="https://wms.example.org:7443/glite_wms_wmproxy_server",
        ),
        ulm_line(
            "Accepted",
            jobid=jobid,
            date=next(date),
            source="NetworkServer",
            seqcode=glite_seqcode(NS=2),
            host="wms.example.org",
            **{"from": "UserInterface"},
            from_host="ui.example.org",
        ),
        ulm_line(
            "EnQueued",
            jobid=jobid,
            date=next(date),
            source="NetworkServer",
            seqcode=glite_seqcode(NS=3),
            host="wms.example.org",
            queue="/var/wm.input",
            result="OK",
        ),
        ulm_line(
            "DeQueued",
            jobid=jobid,
            date=next(date),
            source="WorkloadManager",
            seqcode=glite_seqcode(NS=3, WM=1),
            host="wms.example.org",
            queue="/var/wm.input",
        ),
        ulm_line(
            "Match",
            jobid=jobid,
            date=next(date),
            source="WorkloadManager",
            seqcode=glite_seqcode(NS=3, WM=2),
            host="wms.example.org",
            dest_id="localhost:8443/cream-pbs-long",
        ),
        ulm_line(
            "EnQueued",
            jobid=jobid,
            date=next(date),
            source="WorkloadManager",
            seqcode=glite_seqcode(NS=3, WM=3),
            host="wms.example.org",
            queue="/var/jc.input",
            result="OK",
        ),
        ulm_line(
            "DeQueued",
            jobid=jobid,
            date=next(date),
            source="JobController",
            seqcode=glite_seqcode(NS=3, WM=3, JSS=1),
            host="wms.example.org",
            queue="/var/jc.input",
        ),
        ulm_line(
            "Transfer",
            jobid=jobid,
            date=next(date),
            source="JobController",
            seqcode=glite_seqcode(NS=3, WM=3, JSS=2),
            host="wms.example.org",
            destination="LRMS",
            dest_host="localhost",
            job="[]",
            result="OK",
            dest_jobid=creamid,
        ),
    ]
    base = dict(NS=3, WM=3, JSS=2)
    k = iter(range(1, 100))
    ci, ce = "CREAMInterface", "CREAMExecutor"

    def ev(event: str, source: str, **fields: str) -> str:
        return ulm_line(
            event,
            jobid=jobid,
            date=next(date),
            source=source,
            seqcode=glite_seqcode(LRMS=1000 * next(k), **base),
            **fields,
        )

    cream = [
        ev("CREAMAccepted", ci, local_jobid=creamid),
        ev("CREAMStore", ci, command="CMDSTART", result="OK"),
        ev("CREAMCall", ce, callee="LRMS", command="CMDSTART", result="OK"),
        ev(
            "CREAMStatus",
            ce,
            result="DONE",
            old_state="PENDING",
            new_state="IDLE",
            LRMS_jobid="4242.pbs",
        ),
        ev(
            "CREAMStatus",
            ce,
            result="DONE",
            old_state="IDLE",
            new_state="RUNNING",
            worker_node="wn7.example.org",
        ),
        ev("CREAMStatus", ce, result="DONE", old_state="RUNNING", new_state="REALLY-RUNNING"),
        ev(
            "CREAMStatus",
            ce,
            result="DONE",
            old_state="REALLY-RUNNING",
            new_state="DONE-OK",
            exit_code="0",
        ),
    ]
    return wms, cream


def free_port() -> int:
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback(port: int) -> str:
    """
    The listener description of C{port} on loopback: C{tcp:PORT:interface=127.0.0.1}.
    """
    return f"tcp:{port}:interface=127.0.0.1"


def port_accepts(port: int) -> bool:
    """
    @return: whether a TCP connection to C{port} on loopback is accepted now.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """
    Call C{check} every 0.1 s until it is true.

    @param timeout: seconds; the default is long enough for a relay to finish.
    @raise AssertionError: it was not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_port(port: int, service: LBService, timeout: float = 20.0) -> None:
    """
    Wait until C{service} accepts TCP connections on C{port} (its query port).

    @raise AssertionError: it did not within C{timeout} seconds; carries the
        end of the service's log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"query port {port} not listening\n{service.log_text()[-5000:]}")


def host_credentials(pki: DevPKI) -> tuple[str, list[str]]:
    """
    The host certificate of a development PKI for a service's command line.

    @return: its subject (slash form) and C{["--cert", ..., "--key", ..., "--ca-dir", ...]}.
    """
    cert = x509.load_pem_x509_certificate(pki.host_cert.read_bytes())
    creds = ["--cert", str(pki.host_cert), "--key", str(pki.host_key)]
    return slash_dn(cert.subject), [*creds, "--ca-dir", str(pki.ca_dir)]


def write_policy(path: str, subject: str, actions: Sequence[str]) -> str:
    """
    Write an authorization policy permitting C{actions} to C{subject} alone.

    @return: C{path}.
    """
    body = "".join(
        f'  action "{a}" {{ rule permit {{ subject = "{subject}" }} }}\n' for a in actions
    )
    with open(path, "w") as f:
        f.write(f'resource "LB" {{\n{body}}}\n')
    return path


def server_args(
    creds: Sequence[str],
    hostname: str,
    store_port: int,
    policy: str,
    *extra: str,
    query_port: int | None = None,
) -> list[str]:
    """
    The options of an C{lbserver}: C{creds}, its name, the store port, a query
    port (a free one unless given), the policy, then C{extra}.
    """
    return [
        *creds,
        *("--hostname", hostname),
        *("--store", loopback(store_port)),
        *("--query", loopback(free_port() if query_port is None else query_port)),
        *("--policy", policy),
        *extra,
    ]


def proxy_args(
    creds: Sequence[str],
    relays: Mapping[str, int],
    *extra: str,
    query_port: int | None = None,
) -> list[str]:
    """
    The options of an C{lbproxy} named C{localhost} relaying to servers on loopback.

    @param relays: a destination (C{HOST:PORT}) -> the loopback port it is mapped to.
    @param query_port: the query port; a free one unless given.
    """
    args = [
        *creds,
        *("--hostname", "localhost"),
        *("--query", loopback(free_port() if query_port is None else query_port)),
    ]
    for destination, port in relays.items():
        args += ["--relay-map", f"{destination}=tcp:host=127.0.0.1:port={port}"]
    return [*args, *extra]


def foreign_tag(jobid: str) -> str:
    """
    A UserTag of a job of L{wms_job_trace} (after its events) logged by
    somebody else than the job's owner: a server whose policy does not grant
    C{LOG_GENERAL_EVENTS} refuses it.
    """
    return ulm_line(
        "UserTag",
        jobid=jobid,
        date=T0 + 99_000_000,
        source="Application",
        seqcode=glite_seqcode(NS=3, WM=3, JSS=2, LRMS=100000, APP=1),
        user="/DC=org/DC=example/CN=Somebody Else",
        name="colour",
        value="blue",
    )


class TestHung(BaseException):
    """
    Raised in the main thread by L{E2ECase}'s watchdog: the test ran past its
    time. A C{BaseException}, so a test's own C{except Exception} retry loop
    cannot swallow it.
    """


class E2ECase(SynchronousTestCase):
    """
    The base of the end-to-end tests: a watchdog (C{SIGALRM}) turns a test that
    hangs (a peer that never answers, a blocking read without a bound) into that
    test's error with its traceback, instead of a test run that never ends.

    @cvar hang_timeout: seconds one test (set-up, test and clean-ups) may take;
        C{$LBTWIST_E2E_TEST_TIMEOUT} overrides it for every test (the kill loops
        run longer when asked for more rounds).
    """

    hang_timeout = 900.0

    #: Seconds the clean-ups get after the watchdog fired once.
    CLEANUP_GRACE = 60

    def run(self, result):  # type: ignore[no-untyped-def]
        limit = float(os.environ.get("LBTWIST_E2E_TEST_TIMEOUT") or self.hang_timeout)
        fired = []

        def expired(signum: int, frame: object) -> None:
            fired.append(True)
            signal.alarm(self.CLEANUP_GRACE)
            where = "in its clean-ups" if len(fired) > 1 else f"after {limit:g} s"
            raise TestHung(f"{self.id()} still running {where}")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            return super().run(result)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class ServiceFailed(Exception):
    """
    The service did not start or stopped unexpectedly; carries its log.
    """


#: The query listener of a service whose test did not choose one: any free
#: loopback port, so services never clash on 9000 with each other or with a
#: developer's proxy.
DEFAULT_QUERY = "tcp:0:interface=127.0.0.1"


def default_query(args: Sequence[str]) -> list[str]:
    """
    @return: C{["--query", DEFAULT_QUERY]} unless C{args} set C{--query} already.
    """
    if any(a == "--query" or a.startswith("--query=") for a in args):
        return []
    return ["--query", DEFAULT_QUERY]


class LBService:
    """
    One C{twistd -n lbproxy} subprocess on a state directory inside C{base}.
    """

    def __init__(
        self, base: str, args: Sequence[str] = (), twistd_args: Sequence[str] = ()
    ) -> None:
        """
        @param args: options of C{lbproxy}; C{twistd_args}: options of C{twistd}
            itself (e.g. C{--profile}).
        """
        self.base = os.path.abspath(base)
        os.makedirs(self.base, exist_ok=True)
        self.state_dir = os.path.join(self.base, "state")
        # AF_UNIX paths are limited to ~107 bytes, trial's temp paths are longer.
        self.socket_dir = tempfile.mkdtemp(prefix="lbtwist-e2e-")
        self.socket_path = os.path.join(self.socket_dir, "events.sock")
        self.serve_path = os.path.join(self.socket_dir, "serve.sock")
        self.logfile = os.path.join(self.base, "twistd.log")
        self.args = list(args)
        self.twistd_args = list(twistd_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def serve_args(self) -> list[str]:
        """
        C{["--serve", ...]} on L{serve_path} unless the test's options set C{--serve}.
        """
        if any(a == "--serve" or a.startswith("--serve=") for a in self.args):
            return []
        return ["--serve", f"unix:{self.serve_path}:mode=660"]

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "lbtwist.sqlite")

    def log_text(self) -> str:
        """
        Everything the service logged so far (all runs).
        """
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return "(no log file)"

    def start(self) -> None:
        """
        Start the service and wait until its socket accepts connections.

        @raise ServiceFailed: it exited or did not listen in time.
        """
        assert self.process is None, "already running"
        self.starts += 1
        cmd = [
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.logfile}",
            *self.twistd_args,
            "lbproxy",
            "--state-dir",
            self.state_dir,
            "--hostname",
            CE_HOST,
            "--events",
            f"unix:{self.socket_path}:mode=660",
            # The serve socket next to the events socket (AF_UNIX paths are short).
            *self.serve_args(),
            *default_query(self.args),
            *self.args,
        ]
        out = open(os.path.join(self.base, f"twistd.out.{self.starts}"), "wb")
        try:
            self.process = subprocess.Popen(
                cmd, cwd=self.base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ServiceFailed(f"twistd exited with {code}\n{self.output()}{self.log_text()}")
            if self._accepts():
                return
            time.sleep(0.02)
        self.kill()
        raise ServiceFailed(f"twistd did not listen within {START_TIMEOUT}s\n{self.log_text()}")

    def output(self) -> str:
        """
        Standard output and error of the last run.
        """
        try:
            with open(os.path.join(self.base, f"twistd.out.{self.starts}"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _accepts(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(self.socket_path)
        except OSError:
            return False
        finally:
            s.close()
        return True

    def cleanup(self) -> None:
        """
        Stop the service and remove the socket directory.
        """
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def stop(self) -> int | None:
        """
        SIGTERM, wait, then SIGKILL. Idempotent.

        @return: the exit status, or None if it was not running.
        """
        if self.process is None:
            return None
        proc, self.process = self.process, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return proc.returncode

    def kill(self) -> None:
        """
        C{kill -9} the service, at once, and reap it.
        """
        if self.process is None:
            return
        proc, self.process = self.process, None
        proc.kill()
        proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """
        Stop (gracefully) and start again on the same state directory.
        """
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def run_lbtwist(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """
    Run C{lbtwist ARGS...} and return its result (not checked).
    """
    full_env = dict(os.environ)
    for name in (
        "GLITE_WMS_JOBID",
        "EDG_WL_JOBID",
        "GLITE_WMS_SEQUENCE_CODE",
        "EDG_WL_SEQUENCE_CODE",
        "GLITE_WMS_LBPROXY_STORE_SOCK",
    ):
        full_env.pop(name, None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*LBTWIST, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=None if input is None else input.decode(),
    )


def parse_status_text(text: str) -> dict[str, str]:
    """
    C{key : value} lines of C{lbtwist status} as a mapping (first block only).
    """
    result: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.partition(" : ")
        if sep and key.strip() and key.strip() not in result:
            result[key.strip()] = value.strip()
    return result


def parse_json_objects(text: str) -> list[dict[str, object]]:
    """
    JSON output of the CLI: one object, a list of objects, or one object a line.
    """
    text = text.strip()
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(value, list):
        return value
    return [value]


def dump_lines(state_dir: str) -> list[str]:
    """
    The event lines of C{lbtwist dump --state-dir} (the C{DG.ARRIVED=} prefix removed).

    @raise AssertionError: the dump failed.
    """
    result = run_lbtwist(["dump", "--state-dir", state_dir])
    if result.returncode != 0:
        raise AssertionError(f"lbtwist dump failed: {result.returncode}\n{result.stderr}")
    lines = []
    for raw in result.stdout.splitlines():
        if not raw.strip():
            continue
        if raw.startswith("DG.ARRIVED="):
            raw = raw.split(" ", 1)[1]
        lines.append(raw)
    return lines


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """
    A blocking client socket on the intake.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_line(sock: socket.socket, limit: int = 65536) -> bytes:
    """
    One LF-terminated answer (without LF); b"" if the peer closed first.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            raise AssertionError("answer too long")
    return data[:-1]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """
    Exactly C{n} bytes, or fewer if the peer closed.
    """
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# L&B's two binary framings, built with the package's codec.


def il_frame(line: str | bytes) -> bytes:
    """
    An IL message carrying one event line.
    """
    data = line.encode() if isinstance(line, str) else line
    return ilproto.encode_il_msg(data.rstrip(b"\n") + b"\n")


def il_read_reply(sock: socket.socket) -> ilproto.ILReply | None:
    """
    One IL reply, or None if the peer closed.
    """
    header = recv_exact(sock, ilproto.HEADER_LENGTH)
    if len(header) < ilproto.HEADER_LENGTH:
        return None
    return ilproto.decode_il_reply(recv_exact(sock, int(header.strip())))


def logd_frame(line: str | bytes) -> bytes:
    """
    A logd message carrying one event line.
    """
    data = line.encode() if isinstance(line, str) else line
    return ilproto.encode_logd(data.rstrip(b"\n"))


def logd_read_reply(sock: socket.socket) -> int | None:
    """
    One logd answer code, or None if the peer closed.
    """
    data = recv_exact(sock, 4)
    if len(data) < 4:
        return None
    return ilproto.decode_logd_answer(data)


def unique_count(items: Iterable[object]) -> dict[object, int]:
    """
    Occurrences of each item.
    """
    counts: dict[object, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
